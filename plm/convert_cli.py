"""``plm convert``: move weights between fair-esm, Hugging Face, ProGen2 and plm formats.

Thin on purpose: the key-map tables and format quirks live in :mod:`plm.model.convert`.
"""

from __future__ import annotations

import argparse

from plm.errors import add_debug_argument, one_line_errors

EXAMPLES = """examples:
  plm convert --from esm2 --to plm esm2_t6_8M_UR50D.pt weights/esm2_8m
  plm convert --from esm2 --to hf esm2_t6_8M_UR50D.pt hf/esm2_8m        # fair-esm .pt straight to HF
  plm convert --from hf-esm --to plm path/to/esm2_t6_8M_UR50D weights/esm2_8m
  plm convert --from progen2 --to plm progen2-small/ weights/progen2_small
  plm convert --from plm --to hf runs/clm/final hf/my_clm   # CLM: causal EsmForMaskedLM (esm2) or GPTJForCausalLM
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="plm convert",
        description=__doc__.splitlines()[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--from",
        dest="src",
        required=True,
        choices=["esm2", "hf-esm", "progen2", "plm"],
        help="input format: esm2 = fair-esm .pt file; hf-esm = Hugging Face EsmForMaskedLM directory; "
        "progen2 = official ProGen2 directory (config.json + pytorch_model.bin, fused qkv_proj) "
        "or a Hugging Face GPT-J directory; plm = plm export directory or .ckpt",
    )
    p.add_argument(
        "--to",
        dest="dst",
        required=True,
        choices=["plm", "hf"],
        help="output format: plm = plm export directory (plm.load, fine-tuning, evaluation); "
        "hf = Hugging Face directory following the saved objective: EsmForMaskedLM for an esm2 MLM, "
        "EsmForMaskedLM with is_decoder=true (causal attention) for an esm2 CLM, GPTJForCausalLM for a "
        "progen2 CLM; a progen2 MLM has no HF equivalent and is refused",
    )
    p.add_argument("input", help="checkpoint file or directory to read")
    p.add_argument("output", help="directory to write (replaced if it exists)")
    p.add_argument(
        "--n-head",
        type=int,
        default=None,
        help="attention heads, only for fair-esm files without a stored cfg (weights do not reveal it)",
    )
    p.add_argument(
        "--contact-regression",
        default=None,
        help="fair-esm contact regression .pt (default: <input stem>-contact-regression.pt if present)",
    )
    p.add_argument(
        "--vocab",
        choices=["auto", "progen2", "plm"],
        default="auto",
        help="token ids of a progen2/GPT-J input: progen2 = ProGen2's 30-token vocabulary (mapped onto "
        "plm ids), plm = already plm ids; auto = plm if the embedding has 33 rows, else progen2",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    add_debug_argument(p)
    return p


# CheckpointError (missing, truncated or unfitting weights) is a ValueError; exit 2 like every command
@one_line_errors("plm convert", expected=(ValueError, FileNotFoundError))
def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from plm.model.convert import convert

    _, summary = convert(
        args.src,
        args.dst,
        args.input,
        args.output,
        n_head=args.n_head,
        contact_regression=args.contact_regression,
        vocab=args.vocab,
        progress=not args.no_progress,
    )
    print(summary)
    return 0
