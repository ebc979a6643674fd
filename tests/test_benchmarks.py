"""The benchmarks' own logic (not their timings, which are never asserted): the peer's batches are drawn so
its padding is typical, and the results table judges each ratio against its target."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_train import data_module, real_fraction, representative_peer_batches
from benchmarks.run_all import verdict


def test_real_fraction_counts_padding_to_the_longest_sequence():
    batch = [
        np.zeros(8, np.uint8),
        np.zeros(2, np.uint8),
    ]  # 10 + 4 real tokens (with <cls>, <eos>), 2 rows of 10
    assert real_fraction([batch]) == 14 / 20


def test_timed_peer_batches_pad_like_the_pool_they_are_drawn_from():
    dm, _ = data_module(4)
    batches, pool = representative_peer_batches(dm, 4 * 1024, steps=4, pool=60)
    timed = batches[1:]
    assert len(batches) == 5 and all(sum(len(r) + 2 for r in b) >= 4096 for b in batches)
    fractions = [real_fraction([b]) for b in timed]
    assert fractions == sorted(fractions) and fractions[0] < fractions[-1]  # spread over the quantiles
    assert abs(real_fraction(timed) - pool) < 0.03
    assert fractions[0] <= real_fraction([batches[0]]) <= fractions[-1]  # the warm-up is the median draw


def test_verdict_names_the_target_and_whether_it_is_met():
    assert verdict("train_mlm_35m", 5.73) == "≥ 5 met"
    assert verdict("train_mlm_35m_compiled", 4.9) == "≥ 5 NOT met"
    assert verdict("mfu_35m_bf16", 0.44) == "≥ 0.45 NOT met"
    assert verdict("something_else", 1.0) == ""
