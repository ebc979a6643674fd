import itertools

import torch

from plm.lit.objectives import IGNORE, clm_labels, mlm_inputs
from plm.lit.schedule import cosine_schedule
from plm.tokenizer import CLS, EOS, MASK, PAD, STANDARD_AA_IDS


def _rows(n_rows=64, docs_per_row=4, doc_len=60):
    g = torch.Generator().manual_seed(1)
    tokens = torch.tensor(STANDARD_AA_IDS)[torch.randint(20, (n_rows, docs_per_row * doc_len), generator=g)]
    docs = torch.arange(docs_per_row).repeat_interleave(doc_len).expand(n_rows, -1).contiguous()
    tokens[:, ::doc_len] = CLS
    tokens[:, doc_len - 1 :: doc_len] = EOS
    return tokens, docs


def test_mlm_masking_statistics():
    tokens, docs = _rows()
    inputs, labels = mlm_inputs(tokens, docs, torch.Generator().manual_seed(0))
    residues = (tokens != CLS) & (tokens != EOS)
    selected = labels != IGNORE
    assert not (selected & ~residues).any(), "specials are never selected"
    rate = selected.sum() / residues.sum()
    assert 0.14 < rate < 0.16
    sel_in = inputs[selected]
    as_mask = (sel_in == MASK).float().mean()
    unchanged = (sel_in == tokens[selected]).float().mean()
    assert 0.77 < as_mask < 0.83
    # 10% kept + random residues that happen to equal the original (1/20 of 10%)
    assert 0.08 < unchanged < 0.13
    assert torch.equal(inputs[~selected], tokens[~selected])
    assert torch.equal(labels[selected], tokens[selected])


def test_mlm_at_least_one_masked_per_sequence():
    tokens, docs = _rows(n_rows=200, docs_per_row=8, doc_len=5)  # 3 residues per doc: often none drawn
    _, labels = mlm_inputs(tokens, docs, torch.Generator().manual_seed(0))
    per_doc = torch.zeros(200, 8, dtype=torch.long).scatter_add_(1, docs, (labels != IGNORE).long())
    assert (per_doc >= 1).all()


def test_mlm_masks_are_seeded():
    tokens, docs = _rows(8)
    a = mlm_inputs(tokens, docs, torch.Generator().manual_seed(3))
    b = mlm_inputs(tokens, docs, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_clm_labels_never_cross_documents_or_padding():
    tokens = torch.tensor([[CLS, 5, 6, EOS, CLS, 7, EOS, PAD, PAD]])
    docs = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2]])
    assert clm_labels(tokens, docs).tolist() == [[5, 6, EOS, IGNORE, 7, EOS, IGNORE, IGNORE, IGNORE]]


def test_lr_schedule_shape():
    total, warmup = 1000, 25
    lrs = [cosine_schedule(s, total, warmup, 0.1) for s in range(total + 50)]
    assert lrs[0] == 1 / warmup and abs(lrs[warmup - 1] - 1.0) < 1e-9
    assert all(a <= b for a, b in itertools.pairwise(lrs[:warmup]))
    assert all(a >= b for a, b in zip(lrs[warmup:total], lrs[warmup + 1 : total + 1]))
    assert abs(lrs[total] - 0.1) < 1e-9 and abs(lrs[-1] - 0.1) < 1e-9
    assert abs(cosine_schedule(warmup + (total - warmup) // 2, total, warmup, 0.1) - 0.55) < 1e-3
