import numpy as np
import pytest

from plm.data.packing import StreamPacker, materialize
from plm.data.sampler import MixtureSampler, block_counts, feistel_permute
from plm.data.store import TokenStore
from plm.tokenizer import CLS, EOS, PAD


def test_feistel_is_a_permutation_per_key():
    for n in (1, 2, 5, 97, 1000, 4099):
        for key in (0, 7):
            assert sorted(feistel_permute(np.arange(n), n, key).tolist()) == list(range(n))
    assert not np.array_equal(
        feistel_permute(np.arange(1000), 1000, 1), feistel_permute(np.arange(1000), 1000, 2)
    )


def test_realised_shares_within_one_point_over_100k():
    weights = [0.085, 0.195, 0.195, 0.525]  # UniMeta200B
    s = MixtureSampler([1000, 3000, 2000, 50000], weights, seed=3)
    draw = s.draw(np.arange(100_000))
    shares = np.bincount(draw.source, minlength=4) / 100_000
    assert np.abs(shares - np.array(weights)).max() < 0.01
    assert np.array_equal(np.bincount(draw.source, minlength=4), s.seen_per_source(100_000))


def test_order_is_a_pure_function_of_seed_and_index():
    s1 = MixtureSampler([50, 80], [0.3, 0.7], seed=5)
    s2 = MixtureSampler([50, 80], [0.3, 0.7], seed=5)
    k = np.arange(10_000)
    a = s1.draw(k)
    b = s2.draw(k[::-1])  # any order of evaluation, fresh object
    assert np.array_equal(a.record, b.record[::-1]) and np.array_equal(a.source, b.source[::-1])
    assert not np.array_equal(a.record, MixtureSampler([50, 80], [0.3, 0.7], seed=6).draw(k).record)


def test_each_record_once_per_epoch():
    s = MixtureSampler([37], [1.0], seed=0, block=64)
    recs = s.draw(np.arange(37 * 3)).record
    for e in range(3):
        assert sorted(recs[e * 37 : (e + 1) * 37].tolist()) == list(range(37))
    assert np.allclose(s.epochs_per_source(37 * 2 + 5), [2 + 5 / 37])


def test_clusters_uniform_cluster_then_member():
    offsets, members = np.array([0, 1, 4]), np.array([9, 0, 1, 2])  # cluster 0: {9}; cluster 1: {0, 1, 2}
    s = MixtureSampler([10], [1.0], seed=0, clusters=[(offsets, members)])
    rec = s.draw(np.arange(4000)).record
    assert (rec == 9).mean() == pytest.approx(0.5, abs=0.01)
    assert set(rec.tolist()) == {9, 0, 1, 2}


def test_block_counts_and_bad_weights():
    assert block_counts([1, 1, 1], 10).tolist() in ([4, 3, 3], [3, 4, 3], [3, 3, 4])
    with pytest.raises(ValueError, match="non-negative"):
        block_counts([0, 0], 10)
    with pytest.raises(ValueError, match="2 sources but 1 mixture weights"):
        MixtureSampler([1, 2], [1.0])


def test_packing_fills_rows_with_framed_documents():
    rng = np.random.default_rng(0)
    store = TokenStore.from_arrays(
        "s", [rng.integers(4, 24, n).astype(np.uint8) for n in rng.integers(10, 400, 300)]
    )
    packer = StreamPacker([store], MixtureSampler([len(store)], [1.0], seed=0), row_len=256, seed=0)
    rows, cursor = packer.plan(0, 50)
    packed = materialize([store], rows, 256)
    assert packed.efficiency > 0.95
    for r in range(50):
        toks, docs = packed.tokens[r], packed.doc_ids[r]
        for d in np.unique(docs):
            seg = toks[docs == d]
            if seg[0] == PAD:
                assert (seg == PAD).all()
                continue
            assert seg[0] == CLS and seg[-1] == EOS and (seg[1:-1] >= 4).all()
    rows2, _ = packer.plan(cursor, 5)  # continuing from the cursor == planning more at once
    rows_all, _ = packer.plan(0, 55)
    assert rows_all[50:] == rows2
