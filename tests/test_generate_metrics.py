"""Diversity, novelty, repeat and low-complexity metrics on hand-made cases with known answers."""

import pytest

from plm.generate import metrics
from plm.identity import find_mmseqs
from tests.helpers.sequences import A_MUT3, A, B


def test_pairwise_identities_all_pairs_and_sampled():
    ids = metrics.pairwise_identities([A, A, A_MUT3])
    assert sorted(ids.round(4).tolist()) == sorted([1.0, round(30 / 33, 4), round(30 / 33, 4)])
    sampled = metrics.pairwise_identities([A, A_MUT3, B, A[:20], B[3:]], max_pairs=4, seed=1)
    assert len(sampled) == 4


def test_n_clusters_known_partition():
    seqs = [A, B, A_MUT3, B[2:], "W" * 30]
    assert metrics.n_clusters(seqs, 0.5, backend="python") == (3, "python greedy (Biopython alignment)")
    assert metrics.n_clusters(seqs, 0.95, backend="python")[0] == 4  # A and A_MUT3 (91%) split


@pytest.mark.skipif(find_mmseqs() is None, reason="mmseqs not installed")
def test_mmseqs_cluster_count_agrees_on_clear_case():
    seqs = [A, A_MUT3, B, B[:-1] + "A"]
    count, method = metrics.n_clusters(seqs, 0.5, backend="mmseqs")
    assert (count, method) == (2, "mmseqs2 easy-cluster")


@pytest.mark.parametrize(
    "seq,expected",
    [
        ("AAAAAAAAAA", 1.0),  # homopolymer
        ("ACDEFGHIKL", 0.0),  # no repeat
        ("MKVLGSGSGSWY", 6 / 12),  # GSGSGS: period 2, 3 copies
        ("ACDEFAAAAA", 0.0),  # 5-residue run is below the 6-residue minimum
        ("MKTEVLKTEVLKTEVLW", 15 / 17),  # KTEVL ×3 (period 5)
        ("MKTEVLKTEVLKTEVW", 0.0),  # KTEVL ×2 + KTEV: fewer than 3 copies
        ("", 0.0),
    ],
)
def test_repeat_fraction(seq, expected):
    assert metrics.repeat_fraction(seq) == pytest.approx(expected)


def test_low_complexity_fraction():
    assert metrics.low_complexity_fraction("Q" * 12) == 1.0
    assert metrics.low_complexity_fraction("ACDEFGHIKLMNPQRSTVWY") == 0.0
    assert metrics.low_complexity_fraction("ACDEFGHIKLMNPQRSTVWY" + "Q" * 12) == pytest.approx(17 / 32)
