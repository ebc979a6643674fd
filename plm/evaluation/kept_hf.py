"""Hugging Face export of a kept fine-tuned model: ``plm convert --from plm --to hf final/ OUT``.

``OUT`` is the backbone as ``plm convert`` writes any plm model (``EsmForMaskedLM`` or ``GPTJForCausalLM``
with plm's tokenizer) and ``OUT/finetuned/``: the kept model's ``head.safetensors``, ``finetune.json`` and
``task.yaml`` and, for a LoRA fine-tune of an ESM-2-style model, ``adapter/``: the same adapters in peft's
format under Hugging Face module names, so that::

    model = PeftModel.from_pretrained(EsmForMaskedLM.from_pretrained(OUT), OUT / "finetuned" / "adapter")

computes the fine-tuned backbone. The head reads the residue features (``model.esm(...).last_hidden_state[:, 1:-1]``; per-sequence tasks
average them over the residues).

Why the adapters translate exactly: plm fuses query, key and value in one ``qkv`` projection, and LoRA
on it adds ``B·A`` with ``B`` of shape (3h, r). Hugging Face keeps three projections; the rows of ``B``
that produce the query are ``B_q``, so LoRA on ``query`` with the same ``A`` and ``B_q`` adds exactly the
query's share, and likewise for key and value.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from plm.evaluation.kept import ADAPTER_CONFIG, ADAPTER_WEIGHTS, HEAD_NAME, META_NAME, PEFT_PREFIX, read_meta

#: plm module → Hugging Face ESM module(s) inside ``esm.encoder.layer.{i}``
HF_ESM_TARGETS = {
    "attn.qkv": ("attention.self.query", "attention.self.key", "attention.self.value"),
    "attn.out": ("attention.output.dense",),
    "mlp.fc_in": ("intermediate.dense",),
    "mlp.fc_out": ("output.dense",),
}
HF_TARGET_REGEX = (
    r"esm\.encoder\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense|"
    r"intermediate\.dense|output\.dense)"
)


def hf_adapter_state(state: dict[str, Any]) -> dict[str, Any]:
    """plm adapter tensors (peft names on plm modules) → the same adapters on Hugging Face ESM modules."""
    out = {}
    for key, value in state.items():
        name = key.removeprefix(PEFT_PREFIX)  # blocks.{i}.attn.qkv.lora_A.weight
        _, layer, module, part, lora, weight = name.split(".")
        targets = HF_ESM_TARGETS[f"{module}.{part}"]
        chunks = value.chunk(len(targets), dim=0) if lora == "lora_B" else [value.clone() for _ in targets]
        for target, chunk in zip(targets, chunks):
            out[f"{PEFT_PREFIX}esm.encoder.layer.{layer}.{target}.{lora}.{weight}"] = chunk.contiguous()
    return out


def export_hf(final: str | Path, output: str | Path, progress: bool = True) -> tuple[Any, str]:
    """Write the Hugging Face export of the kept model in ``final``; returns (converted backbone, summary)."""
    from plm.model.convert import load_plm, save_hf
    from plm.model.io import save_safetensors
    from plm.utils.atomic import atomic_directory

    final = Path(final)
    meta = read_meta(final)
    conv = load_plm(final / "backbone")
    lora = bool(meta.get("lora"))
    if lora and conv.model.config.flavour != "esm2":
        raise ValueError(
            f"{final}: LoRA adapters of a {conv.model.config.flavour} backbone have no Hugging Face "
            "adapter export yet (only ESM-2-style backbones); use the plm kept model"
        )
    written, arch = save_hf(conv, output, progress)
    with atomic_directory(Path(output) / "finetuned") as tmp:
        for name in (HEAD_NAME, META_NAME, "task.yaml"):
            shutil.copyfile(final / name, tmp / name)
        if lora:
            config = json.loads((final / "adapter" / ADAPTER_CONFIG).read_text())
            config.update(target_modules=HF_TARGET_REGEX, base_model_name_or_path="..")
            (tmp / "adapter").mkdir()
            (tmp / "adapter" / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, sort_keys=True))
            state = hf_adapter_state(load_file(final / "adapter" / ADAPTER_WEIGHTS))
            save_safetensors(state, tmp / "adapter" / ADAPTER_WEIGHTS, {"format": "pt"})
    where = Path(output) / "finetuned"
    summary = (
        f"wrote {written}: Hugging Face {arch} backbone of the kept model {final}; {where}: head, "
        f"finetune.json, task.yaml"
        + (
            " and the LoRA adapter in peft format for Hugging Face module names "
            "(PeftModel.from_pretrained(model, '…/finetuned/adapter'))"
            if lora
            else ""
        )
    )
    return conv, summary
