"""One residue alphabet for both objectives, with token ids identical to fair-esm's ESM-2 alphabet.

Keeping ESM-2's ids means ESM-2 checkpoints load without remapping rows and a CLM trained here can be
turned into an MLM without touching its embedding (CLM uses ``<cls>`` … ``<eos>`` as begin/end).

Character policy (one policy, documented in the README):
  * lowercase letters are upper-cased;
  * whitespace and a trailing ``*`` (stop codon written by gene callers) are removed;
  * any other character outside the alphabet raises ``InvalidSequenceError`` (``on_unknown="error"``,
    the default) or becomes ``X`` (``on_unknown="x"``); characters are never dropped silently.
"""

from __future__ import annotations

from typing import Iterable, Literal

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


def hf_tokenizer():
    """A ``transformers.PreTrainedTokenizerFast`` with the same ids, for Hugging Face export.

    Built with ``tokenizers`` (character-level WordLevel model) so exported models need no custom code.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TOKENS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    specials = "|".join(t.replace("<", r"\<").replace(">", r"\>") for t in TOKENS if t.startswith("<"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(f"{specials}|."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<cls> $A <eos>", pair="<cls> $A <eos> $B <eos>", special_tokens=[("<cls>", CLS), ("<eos>", EOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<cls>",
        cls_token="<cls>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        model_max_length=1026,
    )
