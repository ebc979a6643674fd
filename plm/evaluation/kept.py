"""A kept fine-tuned model: the ``final/`` directory ``plm finetune`` writes, and ``plm.load_finetuned``.

Layout (every file written inside one atomic directory, so a reader never sees half of it)::

    final/
      finetune.json          what it is: task kind, classes (the label vocabulary), metric, mode, layer,
                             attention (MLM/CLM), head shape, regression target scale, step, metrics
      task.yaml              the task definition it was trained on, verbatim
      backbone/              plm export (config.json + model.safetensors): the pre-trained weights
                             (frozen, LoRA) or the fine-tuned ones (full); ``source`` in finetune.json
                             names where they came from
      adapter/               LoRA only: peft's format (adapter_config.json + adapter_model.safetensors)
      head.safetensors       the head's weights

Why the backbone weights are copied rather than referenced: a reference breaks when the pre-training run
directory moves or is retrained under the same name, and a kept model must keep predicting the same.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from plm.evaluation import kinds
from plm.model.transformer import Transformer

FORMAT = "plm-finetune"
VERSION = 1
META_NAME = "finetune.json"
HEAD_NAME = "head.safetensors"
#: peft's file names, so ``PeftModel.from_pretrained`` reads the adapter directory
ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def is_finetuned(path: str | Path) -> bool:
    return (Path(path) / META_NAME).is_file()


# ---- writing -----------------------------------------------------------------------------------------
def backbone_base_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The plain ``Transformer`` weights inside a ``FineTune`` state: ``backbone.`` keys without LoRA
    adapters, peft's ``base_layer.`` wrappers unwrapped."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone.") and "lora_" not in key:
            out[key[len("backbone.") :].replace(".base_layer.", ".")] = value
    return out


def adapter_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The LoRA weights of a ``FineTune`` state under peft's saved names
    (``base_model.model.blocks.0.attn.qkv.lora_A.weight``)."""
    out = {}
    for key, value in state.items():
        if key.startswith("backbone.") and "lora_" in key:
            out[PEFT_PREFIX + key[len("backbone.") :].replace(".default.", ".")] = value
    return out


def write_kept(
    directory: str | Path,
    module: Any,
    state: Mapping[str, Tensor] | None = None,
    step: int | None = None,
    metrics: Mapping[str, float] | None = None,
) -> Path:
    """Write ``module`` (a ``FineTune`` built from a task) as a kept model; ``state`` replaces its current
    weights (e.g. the best validation checkpoint's)."""
    from plm.model.io import load_state_into, save_safetensors, write_export
    from plm.utils.atomic import atomic_directory

    if module.spec is None or module.backbone is None:
        raise ValueError(
            "a kept model needs a FineTune built from a task with a backbone (FineTune(task=…, backbone=…))"
        )
    state = {k: v.detach().cpu() for k, v in (state if state is not None else module.state_dict()).items()}
    backbone = Transformer(module.backbone.config)
    base = backbone_base_state(state)
    if backbone.config.tied_head:
        base.pop("head.weight", None)  # the embedding's storage; exports leave it out
    load_state_into(backbone, base, "the fine-tuned module")
    head = {k[len("head.") :]: v.contiguous() for k, v in state.items() if k.startswith("head.")}
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "kind": module.kind,
        "classes": module.classes,
        "task": module.spec.name,
        "metric": module.spec.metric or kinds.DEFAULT_METRIC[module.kind],
        "mode": module.mode,
        "layer": module.layer,
        "causal": module.causal,
        "head": {
            "type": module.head_type,
            "n_in": module.backbone.config.n_embd,
            "n_out": kinds.n_outputs(module.kind, len(module.classes)),
        },
        "target_stats": [float(v) for v in state.get("target_stats", torch.tensor([0.0, 1.0]))],
        "backbone": {
            "source": module.backbone_source,
            "objective": "clm" if module.causal else "mlm",
            "weights": "fine-tuned" if module.mode == "full" else "pre-trained (unchanged)",
        },
        "lora": dict(module.lora) if module.mode == "lora" else None,
        "step": step,
        "metrics": dict(metrics or {}),
    }
    with atomic_directory(directory) as tmp:
        (tmp / "backbone").mkdir()
        write_export(tmp / "backbone", backbone, "clm" if module.causal else "mlm")
        save_safetensors(head, tmp / HEAD_NAME, {"format": "pt"})
        shutil.copyfile(module.spec.source, tmp / "task.yaml")
        if module.mode == "lora":
            (tmp / "adapter").mkdir()
            cfg = module.lora_peft_config()
            cfg.base_model_name_or_path = "backbone"
            (tmp / "adapter" / ADAPTER_CONFIG).write_text(
                json.dumps(cfg.to_dict(), indent=2, sort_keys=True, default=list)
            )
            save_safetensors(
                {k: v.contiguous() for k, v in adapter_state(state).items()},
                tmp / "adapter" / ADAPTER_WEIGHTS,
                {"format": "pt"},
            )
        (tmp / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return Path(directory)


def add_metrics(directory: str | Path, metrics: Mapping[str, float], key: str = "test") -> None:
    """Record ``metrics`` (e.g. the test set's, measured after the model was written) in finetune.json."""
    from plm.utils.atomic import atomic_write_text

    path = Path(directory) / META_NAME
    meta = json.loads(path.read_text())
    meta.setdefault("metrics", {})[key] = {k: float(v) for k, v in metrics.items()}
    atomic_write_text(path, json.dumps(meta, indent=2, sort_keys=True) + "\n")


# ---- reading ---------------------------------------------------------------------------------------------
class FinetunedModel(nn.Module):
    """Sequences in, predictions out: a backbone (with its adapters), a head, and what the outputs mean.

    ``predict`` returns one array per sequence: class probabilities (C,) or a value () per sequence,
    or (L, C) per residue; per-label probabilities for multi-label tasks; regression values in the units
    of the training targets."""

    def __init__(self, backbone: Transformer, head: nn.Module, meta: dict[str, Any]) -> None:
        super().__init__()
        self.backbone, self.head, self.meta = backbone, head, meta
        self.kind: str = meta["kind"]
        self.classes: list[str] = list(meta["classes"])
        self.causal, self.layer = bool(meta["causal"]), int(meta["layer"])
        self.mean, self.std = (float(v) for v in meta["target_stats"])

    @property
    def per_residue(self) -> bool:
        return self.kind in kinds.RESIDUE_KINDS

    def forward(self, tokens: Tensor) -> Tensor:
        """Raw head outputs of ``<cls> seq <eos> <pad>…`` rows."""
        from plm.evaluation.backbone import residue_features

        feats, mask = residue_features(self.backbone, tokens, self.causal, self.layer)
        return self.head(feats, mask)

    @torch.no_grad()
    def predict(
        self, sequences: list[str], max_tokens: int = 16384, progress: bool = False
    ) -> list[np.ndarray]:
        """Predictions of each sequence, in batches of at most ``max_tokens`` padded tokens."""
        from plm.evaluation.backbone import token_batches

        self.eval()
        out: list[np.ndarray | None] = [None] * len(sequences)
        for idx, tokens in token_batches(sequences, max_tokens, next(self.parameters()).device, progress):
            probs = kinds.probabilities(self.kind, self(tokens)).cpu()
            if self.kind == "sequence_regression":
                probs = probs * self.std + self.mean
            for row, i in enumerate(idx):
                out[i] = probs[row, : len(sequences[i])].numpy() if self.per_residue else probs[row].numpy()
        return out  # type: ignore[return-value]

    def describe(self) -> str:
        what = "per residue" if self.per_residue else "per sequence"
        return (
            f"{self.meta['task']} ({self.kind}, {what}, mode {self.meta['mode']}, "
            f"{len(self.classes) or 1} output(s))"
        )


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        meta = json.loads((path / META_NAME).read_text())
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no {META_NAME}; a kept fine-tuned model is the final/ directory plm finetune writes"
        ) from None
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"{path / META_NAME}: unreadable ({err}); re-run plm finetune to write it again"
        ) from err
    if meta.get("format") != FORMAT or meta.get("version", 0) > VERSION:
        raise ValueError(
            f"{path / META_NAME}: not a plm fine-tuned model of format version <= {VERSION} "
            f"(format {meta.get('format')!r}, version {meta.get('version')!r}); upgrade plm"
        )
    return meta


def load_finetuned(path: str | Path, map_location: str = "cpu") -> FinetunedModel:
    """The kept model in ``path`` (a ``final/`` directory of ``plm finetune``), in eval mode."""
    from plm.evaluation.heads import head_for
    from plm.model.io import load_pretrained

    path = Path(path)
    meta = read_meta(path)
    backbone = load_pretrained(path / "backbone", map_location)
    if meta.get("lora"):
        backbone = load_adapter(backbone, path / "adapter", map_location)
    head = head_for(meta["kind"], meta["head"]["n_in"], meta["head"]["n_out"], meta["head"]["type"])
    head.load_state_dict(load_file(path / HEAD_NAME, device=map_location))
    return FinetunedModel(backbone, head, meta).eval()


def load_adapter(backbone: Transformer, directory: Path, map_location: str = "cpu") -> Transformer:
    """Inject the adapter in peft format into a plm backbone."""
    from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict

    cfg = LoraConfig.from_pretrained(str(directory))
    backbone = inject_adapter_in_model(cfg, backbone)
    state = {
        k.removeprefix(PEFT_PREFIX): v
        for k, v in load_file(directory / ADAPTER_WEIGHTS, device=map_location).items()
    }
    result = set_peft_model_state_dict(backbone, state)
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise ValueError(
            f"{directory / ADAPTER_WEIGHTS}: tensors that fit no adapter of the backbone: {unexpected[:5]}"
        )
    return backbone
