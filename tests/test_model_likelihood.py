"""plm.model.likelihood: the one causal and masked log-likelihood behind `plm score` and zero-shot scoring."""

import pytest
import torch

from plm.model.likelihood import masked_logprobs, pseudo_logprobs, sequence_logprobs
from plm.tokenizer import MASK, InvalidSequenceError, encode
from tests.conftest import tiny_model

SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MSIQHFRVALIPFFAAF", "GSHMLEDPVDAFQ", "WC"]


def _by_hand_causal(model, seq: str) -> float:
    ids = torch.tensor([encode(seq)])  # (1, L+2), no padding
    with torch.no_grad():
        lp = model(ids, causal=True).float().log_softmax(-1)[0]  # (L+2, V)
    return float(sum(lp[t, ids[0, t + 1]] for t in range(ids.shape[1] - 1)))


@pytest.mark.parametrize("flavour", ["esm2", "progen2"])
def test_causal_logprob_is_the_unpadded_sum_over_residues_and_eos(flavour):
    model = tiny_model(flavour)
    batched = sequence_logprobs(model, SEQS, batch_size=3)  # padded to the longest of each batch
    for seq, (lp, n) in zip(SEQS, batched):
        assert n == len(seq) + 1  # every residue and the closing <eos>; <cls> is given
        assert lp == pytest.approx(_by_hand_causal(model, seq), abs=1e-4)


def test_pseudo_logprob_masks_one_residue_at_a_time():
    model = tiny_model("esm2")
    seq = SEQS[1]
    ids = torch.tensor(encode(seq))
    expected = 0.0
    with torch.no_grad():
        for i in range(1, len(seq) + 1):
            row = ids.clone()
            row[i] = MASK
            expected += float(model(row[None], causal=False).float().log_softmax(-1)[0, i, ids[i]])
    ((lp, n),) = pseudo_logprobs(model, [seq], rows_per_batch=4)  # 4 masked copies per forward
    assert n == len(seq) and lp == pytest.approx(expected, abs=1e-4)
    no_columns = torch.tensor([], dtype=torch.long)
    assert masked_logprobs(model, ids, no_columns).shape == (0, model.config.vocab_size)


def test_unknown_letters_are_an_error_naming_the_sequence_unless_mapped_to_x():
    model = tiny_model("esm2")
    with pytest.raises(InvalidSequenceError, match="sequence 1: character 'J'"):
        sequence_logprobs(model, ["MKV", "MJV"])
    assert sequence_logprobs(model, ["MJV"], on_unknown="x") == sequence_logprobs(model, ["MXV"])
