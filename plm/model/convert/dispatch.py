"""``plm convert``: pick the reader for ``--from`` and the writer for ``--to``, and summarise what was done."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from plm.model.convert.core import CONTACT_REGRESSION_NAME, Converted
from plm.model.convert.esm_fair import load_esm2_pt
from plm.model.convert.esm_hf import load_hf_esm
from plm.model.convert.hf_writer import save_hf
from plm.model.convert.plm_export import load_plm, save_plm
from plm.model.convert.progen2 import VocabChoice, load_progen2

SourceFormat = Literal["esm2", "hf-esm", "progen2", "plm"]
TargetFormat = Literal["plm", "hf"]


def convert(
    src: SourceFormat,
    dst: TargetFormat,
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    n_head: int | None = None,
    contact_regression: str | os.PathLike | None = None,
    vocab: VocabChoice = "auto",
    progress: bool = True,
) -> tuple[Converted, str]:
    """Read ``input_path`` in format ``src``, write ``output`` as ``dst``; returns the model and a summary."""
    if src == "plm" and dst == "plm":
        raise ValueError("--from plm --to plm would copy the export unchanged; choose --to hf")
    if src == "plm" and (Path(input_path) / "finetune.json").is_file():
        # the model layer does not import evaluation: a kept fine-tune (backbone, adapter, head) is exported by
        # plm.evaluation.kept_hf, which `plm convert` calls for such a directory
        raise ValueError(
            f"{input_path} is a kept fine-tuned model (finetune.json): export it with `plm convert "
            "--from plm --to hf` or plm.evaluation.kept_hf.export_hf, not plm.model.convert"
        )
    if src == "esm2":
        conv = load_esm2_pt(input_path, contact_regression, n_head, progress)
    elif src == "hf-esm":
        conv = load_hf_esm(input_path, progress)
    elif src == "progen2":
        conv = load_progen2(input_path, vocab, progress)
    elif src == "plm":
        conv = load_plm(input_path)
    else:
        raise ValueError(f"unknown source format {src!r}; choose esm2, hf-esm, progen2 or plm")
    cfg = conv.model.config
    n_params = sum(p.numel() for p in conv.model.parameters())
    if dst == "plm":
        written, what = save_plm(conv, output), f"plm export ({conv.objective}; load with plm.load)"
    elif dst == "hf":
        written, arch = save_hf(conv, output, progress)
        what = (
            f"Hugging Face {arch} directory with plm's tokenizer (33 ids, at most {cfg.max_seq_len} tokens)"
        )
        if arch == "EsmForMaskedLM" and conv.objective == "clm":
            what += (
                "; a CLM: is_decoder=true makes its attention causal "
                "(load with AutoModelForMaskedLM: HF has no EsmForCausalLM)"
            )
    else:
        raise ValueError(f"unknown target format {dst!r}; choose plm or hf")
    contact = conv.contact_regression
    esm2 = cfg.preset() == "esm2"  # token dropout and the contact regression are ESM-2's
    lines = [
        conv.report.summary(),
        f"model: {cfg.preset() or cfg.flavour + ' with changed fields'} "
        f"{cfg.n_layer} layers × {cfg.n_embd} hidden × {cfg.n_head} heads "
        f"(head {cfg.head_dim}, rotary {cfg.rotary}, ffn {cfg.ffn}), {n_params:,} parameters"
        + (f", token_dropout={cfg.token_dropout}" if esm2 else ""),
        f"wrote {written}: {what}",
    ]
    if esm2:
        where = (
            (CONTACT_REGRESSION_NAME if dst == "plm" else "esm.contact_head.regression.*")
            if contact
            else None
        )
        lines.append(
            f"contact regression: {'kept in ' + where if where else 'none in the source'}"
            + (" (HF gets zeros: contacts need a fitted regression)" if not contact and dst == "hf" else "")
        )
    return conv, "\n".join(lines)
