"""``plm convert``: move weights between fair-esm, Hugging Face, ProGen2 and plm formats.

Thin on purpose: the key-map tables and format quirks live in :mod:`plm.model.convert`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from plm.command import Flag, command

EXAMPLES = """examples:
  plm convert --from esm2 --to plm esm2_t6_8M_UR50D.pt weights/esm2_8m
  plm convert --from esm2 --to hf esm2_t6_8M_UR50D.pt hf/esm2_8m        # fair-esm .pt straight to HF
  plm convert --from hf-esm --to plm path/to/esm2_t6_8M_UR50D weights/esm2_8m
  plm convert --from progen2 --to plm progen2-small/ weights/progen2_small
  plm convert --from plm --to hf runs/clm/final hf/my_clm   # CLM: causal EsmForMaskedLM (esm2) or GPTJForCausalLM
"""


def convert_command(
    input: str,  # shadows the builtin: a positional's name is its dest, frozen in the CLI surface
    output: str,
    /,
    src: Annotated[Literal["esm2", "hf-esm", "progen2", "plm"], Flag("--from")],
    dst: Annotated[Literal["plm", "hf"], Flag("--to")],
    n_head: int | None = None,
    contact_regression: str | None = None,
    vocab: Literal["auto", "progen2", "plm"] = "auto",
    no_progress: bool = False,
) -> int:
    """Weights ⇄ fair-esm ESM-2 .pt, HF EsmForMaskedLM, ProGen2, HF GPT-J (--from … --to plm|hf).

    Args:
        input: checkpoint file or directory to read
        output: directory to write (replaced if it exists)
        src: input format: esm2 = fair-esm .pt file; hf-esm = Hugging Face EsmForMaskedLM directory;
            progen2 = official ProGen2 directory (config.json + pytorch_model.bin, fused qkv_proj) or a Hugging
            Face GPT-J directory; plm = plm export directory or .ckpt
        dst: output format: plm = plm export directory (plm.load, fine-tuning, evaluation); hf = Hugging Face
            directory following the saved objective: EsmForMaskedLM for an esm2 MLM, EsmForMaskedLM with
            is_decoder=true (causal attention) for an esm2 CLM, GPTJForCausalLM for a progen2 CLM; a progen2
            MLM has no HF equivalent and is refused
        n_head: attention heads, only for fair-esm files without a stored cfg (weights do not reveal it)
        contact_regression: fair-esm contact regression .pt (default: <input stem>-contact-regression.pt if
            present)
        vocab: token ids of a progen2/GPT-J input: progen2 = ProGen2's 30-token vocabulary (mapped onto plm
            ids), plm = already plm ids; auto = plm if the embedding has 33 rows, else progen2
        no_progress: hide the progress bars
    """
    if src == "plm" and dst == "hf" and (Path(input) / "finetune.json").is_file():
        from plm.evaluation.kept_hf import export_hf  # a kept fine-tuned model: backbone, adapter and head

        _, summary = export_hf(input, output, not no_progress)
    else:
        from plm.model.convert import convert

        _, summary = convert(
            src,
            dst,
            input,
            output,
            n_head=n_head,
            contact_regression=contact_regression,
            vocab=vocab,
            progress=not no_progress,
        )
    print(summary)
    return 0


# CheckpointError (missing, truncated or unfitting weights) is a ValueError; exit 2 like every command
main = command(
    convert_command,
    "plm convert",
    expected=(ValueError, FileNotFoundError),
    description=__doc__.splitlines()[0],
    epilog=EXAMPLES,
)
