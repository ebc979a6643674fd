"""One residue alphabet for both objectives, with token ids identical to fair-esm's ESM-2 alphabet.

Keeping ESM-2's ids means ESM-2 checkpoints load without remapping rows and a CLM trained here can be
turned into an MLM without touching its embedding (CLM uses ``<cls>`` … ``<eos>`` as begin/end).

Character policy (one policy, documented in docs/data.md, "FASTA policy"):
  * lowercase letters are upper-cased;
  * whitespace and a trailing ``*`` (stop codon written by gene callers) are removed;
  * any other character outside the alphabet raises ``InvalidSequenceError`` (``on_unknown="error"``,
    the default) or becomes ``X`` (``on_unknown="x"``); characters are never dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

import numpy as np

SPECIAL_PREFIX = ("<cls>", "<pad>", "<eos>", "<unk>")
RESIDUES = "LAGVSERTIDPKQNFYMHWCXBUZO.-"
SPECIAL_SUFFIX = ("<null_1>", "<mask>")
TOKENS: tuple[str, ...] = (*SPECIAL_PREFIX, *RESIDUES, *SPECIAL_SUFFIX)

CLS, PAD, EOS, UNK = 0, 1, 2, 3
MASK = 32
VOCAB_SIZE = len(TOKENS)  # 33
FIRST_RESIDUE = 4
#: ids of the 20 standard amino acids: what MLM "random residue" replacements draw from.
STANDARD_AA_IDS = tuple(TOKENS.index(a) for a in "ACDEFGHIKLMNPQRSTVWY")
RESIDUE_IDS = tuple(range(FIRST_RESIDUE, FIRST_RESIDUE + len(RESIDUES)))

OnUnknown = Literal["error", "x"]


class InvalidSequenceError(ValueError):
    """A sequence holds a character outside the alphabet (and the policy is ``error``)."""


def _build_lookup() -> np.ndarray:
    table = np.full(256, 255, dtype=np.uint8)  # 255 = not in alphabet
    for i, ch in enumerate(RESIDUES):
        table[ord(ch)] = FIRST_RESIDUE + i
        if ch.isalpha():
            table[ord(ch.lower())] = FIRST_RESIDUE + i
    return table


_LOOKUP = _build_lookup()
_STRIP = str.maketrans("", "", " \t\r\n")


def encode_residues(seq: str | bytes, on_unknown: OnUnknown = "error", where: str = "") -> np.ndarray:
    """Residue letters → uint8 token ids (no begin/end tokens). Vectorised: this runs on 10⁹ records."""
    raw = seq.encode("ascii", errors="replace") if isinstance(seq, str) else bytes(seq)
    if raw.endswith(b"*"):
        raw = raw[:-1]
    if b" " in raw or b"\t" in raw or b"\r" in raw or b"\n" in raw:
        raw = raw.decode("ascii").translate(_STRIP).encode("ascii")
    ids = _LOOKUP[np.frombuffer(raw, dtype=np.uint8)]
    bad = ids == 255
    if bad.any():
        if on_unknown == "x":
            ids = ids.copy()
            ids[bad] = FIRST_RESIDUE + RESIDUES.index("X")
        else:
            pos = int(np.flatnonzero(bad)[0])
            char = raw[pos : pos + 1].decode("ascii", errors="replace")
            raise InvalidSequenceError(
                f"{where + ': ' if where else ''}character {char!r} at position {pos + 1} is not in the "
                f"protein alphabet {RESIDUES!r}; fix the record or use on_unknown='x' to map it to X"
            )
    return ids


def encode(seq: str, on_unknown: OnUnknown = "error", add_special: bool = True) -> list[int]:
    """Sequence → token ids, ``<cls> … <eos>`` around the residues when ``add_special``."""
    ids = encode_residues(seq, on_unknown).tolist()
    return [CLS, *ids, EOS] if add_special else ids


def decode(ids: Iterable[int], skip_special: bool = True) -> str:
    """Token ids → string; special tokens are dropped when ``skip_special`` (they never are residues)."""
    out = []
    for i in ids:
        i = int(i)
        if FIRST_RESIDUE <= i < FIRST_RESIDUE + len(RESIDUES):
            out.append(RESIDUES[i - FIRST_RESIDUE])
        elif not skip_special:
            out.append(TOKENS[i])
    return "".join(out)


#: What ``tokenizer_config.json`` declares. ``PreTrainedTokenizerFast`` + ``tokenizer.json`` loads with every
#: transformers the project supports (the class transformers 5 writes by itself, ``TokenizersBackend``,
#: does not exist in 4.x); the special tokens are spelled out so no version has to guess them.
HF_SPECIAL_TOKENS = {
    "bos_token": "<cls>",
    "cls_token": "<cls>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "mask_token": "<mask>",
}
#: Positions of a released ESM-2 (1024 residues + <cls> + <eos>): the default of a tokenizer built without a model.
ESM2_POSITIONS = 1026


def _backend_tokenizer():
    """The character-level ``tokenizers.Tokenizer`` (WordLevel over :data:`TOKENS`, same ids as ``encode``)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors

    vocab = {tok: i for i, tok in enumerate(TOKENS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    specials = "|".join(t.replace("<", r"\<").replace(">", r"\>") for t in TOKENS if t.startswith("<"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{specials}|."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<cls> $A <eos>",
        pair="<cls> $A <eos> $B <eos>",
        special_tokens=[("<cls>", CLS), ("<eos>", EOS)],
    )
    tok.add_special_tokens([t for t in TOKENS if t.startswith("<")])
    return tok


def hf_tokenizer(model_max_length: int = ESM2_POSITIONS):
    """A ``transformers.PreTrainedTokenizerFast`` with the same ids, for use in Python.

    ``model_max_length`` counts ``<cls>`` and ``<eos>``: pass the model's ``max_seq_len`` so that
    ``truncation=True`` never yields more tokens than the model has positions.
    """
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_backend_tokenizer(), model_max_length=model_max_length, **HF_SPECIAL_TOKENS
    )


def hf_tokenizer_files(model_max_length: int) -> dict[str, str]:
    """``tokenizer.json``, ``tokenizer_config.json`` and ``special_tokens_map.json`` of a Hugging Face export.

    Written by plm rather than by the installed transformers' ``save_pretrained``, so the export does not
    depend on which transformers version made it (the floor in pyproject.toml is tested to load it).
    """
    import json

    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **HF_SPECIAL_TOKENS,
        "model_max_length": int(model_max_length),
        "model_input_names": ["input_ids", "attention_mask"],
        "padding_side": "right",
        "truncation_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    return {
        "tokenizer.json": _backend_tokenizer().to_str(pretty=True),
        "tokenizer_config.json": json.dumps(config, indent=2, sort_keys=True) + "\n",
        "special_tokens_map.json": json.dumps(HF_SPECIAL_TOKENS, indent=2, sort_keys=True) + "\n",
    }
