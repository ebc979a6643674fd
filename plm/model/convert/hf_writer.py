"""plm → Hugging Face directory. The export follows the objective the weights were saved under, not only
the architecture: an esm2 MLM becomes ``EsmForMaskedLM``; an esm2 CLM the same class with ``is_decoder=true``
(causal attention); a progen2 CLM becomes ``GPTJForCausalLM``; a progen2 MLM is refused, since GPT-J
attention is always causal. "esm2" and "progen2" mean the fields equal that preset (``ModelConfig.preset``),
whatever the ``flavour`` name says; any other combination is refused. (A kept fine-tuned model is exported
by :mod:`plm.evaluation.kept_hf`.)"""

from __future__ import annotations

import os
from pathlib import Path

from plm.model.convert.core import Converted
from plm.model.convert.esm_hf import esm_hf_config, esm_hf_state
from plm.model.convert.progen2 import gptj_hf_config, gptj_hf_state
from plm.model.io import CheckpointError, save_safetensors
from plm.tokenizer import hf_tokenizer_files
from plm.utils.atomic import atomic_directory


def hf_target(conv: Converted) -> tuple[str, bool]:
    """The Hugging Face class a model exports to and whether its attention is causal, or a
    ``CheckpointError`` saying why there is none and what to do instead."""
    cfg, source = conv.model.config, conv.report.source
    preset = cfg.preset()  # the fields, not the name: each key map below holds for exactly one preset
    if preset not in ("esm2", "progen2"):
        raise CheckpointError(
            f"{source}: its architecture ({', '.join(f'{k}={v!r}' for k, v in cfg.architecture().items())}) "
            "is neither the esm2 nor the progen2 preset, so it has no Hugging Face equivalent; use the plm "
            "export instead (plm.load, plm evaluate)"
        )
    if preset == "progen2":
        if conv.objective == "mlm":
            raise CheckpointError(
                f"{source}: an MLM with the progen2 flavour has no Hugging Face equivalent: GPT-J attention "
                "is always causal, so GPTJForCausalLM would run it as a CLM. Use the plm export instead "
                "(plm.load, plm evaluate), or train the MLM with the esm2 flavour to export EsmForMaskedLM"
            )
        return "GPTJForCausalLM", True
    if cfg.rotary != cfg.head_dim:
        raise CheckpointError(
            f"{source}: rotary_dim={cfg.rotary} < head_dim={cfg.head_dim}; HF ESM rotates whole heads, so "
            "this model has no EsmForMaskedLM equivalent; use the plm export instead"
        )
    return "EsmForMaskedLM", conv.objective == "clm"


def save_hf(conv: Converted, output: str | os.PathLike, progress: bool = True) -> tuple[Path, str]:
    """plm model → Hugging Face directory, following the objective (see the module docstring).

    Weights, config.json and plm's tokenizer (``model_max_length`` = the model's ``max_seq_len``);
    ``from_pretrained`` needs no custom code. Written in a temporary sibling and swapped in, so no stale
    shard of an older export survives. Returns the directory and the architecture name.
    """
    arch, causal = hf_target(conv)
    cfg = conv.model.config
    if arch == "GPTJForCausalLM":
        state, hf_cfg = gptj_hf_state(conv.model, progress), gptj_hf_config(cfg)
    else:
        state, hf_cfg = (
            esm_hf_state(conv.model, conv.contact_regression, progress),
            esm_hf_config(cfg, causal),
        )
    with atomic_directory(output) as tmp:
        save_safetensors(state, tmp / "model.safetensors", {"format": "pt"})
        hf_cfg.save_pretrained(tmp)
        for name, text in hf_tokenizer_files(cfg.max_seq_len).items():
            (tmp / name).write_text(text)
    return Path(output), arch
