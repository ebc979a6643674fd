import esm
import numpy as np
import pytest

from plm import tokenizer as tk


def test_ids_identical_to_fair_esm_alphabet():
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")  # the ESM-2 alphabet
    assert list(tk.TOKENS) == alphabet.all_toks
    assert (tk.CLS, tk.PAD, tk.EOS, tk.UNK, tk.MASK) == (
        alphabet.cls_idx,
        alphabet.padding_idx,
        alphabet.eos_idx,
        alphabet.unk_idx,
        alphabet.mask_idx,
    )


def test_encode_matches_fair_esm_batch_converter(real_sequences):
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    _, _, ref = alphabet.get_batch_converter()([("a", real_sequences[0])])
    assert tk.encode(real_sequences[0]) == ref[0].tolist()


def test_round_trip_and_lowercase(real_sequences):
    for seq in real_sequences:
        assert tk.decode(tk.encode(seq)) == seq
        assert tk.encode(seq.lower()) == tk.encode(seq)


def test_unknown_character_policy():
    with pytest.raises(tk.InvalidSequenceError, match=r"character '\?' at position 3"):
        tk.encode_residues("MK?L")
    ids = tk.encode_residues("MK?L", on_unknown="x")
    assert tk.decode(ids) == "MKXL"


def test_whitespace_crlf_and_stop_are_not_residues():
    assert tk.decode(tk.encode_residues("MK L\r\n*")) == "MKL"


def test_hf_tokenizer_same_ids(real_sequences):
    hf = tk.hf_tokenizer()
    seq = real_sequences[1]
    assert hf(seq)["input_ids"] == tk.encode(seq)
    assert hf.convert_tokens_to_ids("<mask>") == tk.MASK and hf.pad_token_id == tk.PAD
    assert hf("MK<mask>L")["input_ids"] == [
        tk.CLS,
        *tk.encode("MK", add_special=False),
        tk.MASK,
        *tk.encode("L", add_special=False),
        tk.EOS,
    ]


def test_encode_residues_dtype():
    ids = tk.encode_residues("ACDEFGHIKLMNPQRSTVWY")
    assert ids.dtype == np.uint8 and len(ids) == 20 and set(ids.tolist()) == set(tk.STANDARD_AA_IDS)
