"""plm.identity.pairwise: the one definition of sequence identity, pinned on hand-aligned pairs.

identity = identical aligned residues / length of the SHORTER sequence (global alignment, free end gaps).
Each expected value below is counted by hand from the alignment drawn beside it.
"""

import pytest

from plm.generate import metrics
from plm.identity import fallback
from plm.identity.pairwise import KmerIndex, greedy_clusters, identity
from plm.identity.seqio import SeqRecord

A = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # 33 residues
A_MUT3 = A[:5] + "W" + A[6:15] + "W" + A[16:25] + "W" + A[26:]  # 3 substitutions (no W in A)
B = "GHPLWEDNCYVTMAGSRKFIQDELWHNPCTMYG"  # unrelated


@pytest.mark.parametrize(
    "a, b, expected",
    [
        ("ACDEFGHIKL", "ACDEFGHIKL", 1.0),  # identical
        ("ACDEFGHIKL", "ACDEFGHIKW", 9 / 10),  # ACDEFGHIK[L/W]: one substitution in 10
        ("DEFGH", "ACDEFGHIKL", 5 / 5),  # --DEFGH---: a fragment aligns inside its parent, overhangs are free
        ("ACDEFGHIKL", "ACDEFWWWGHIKL", 10 / 10),  # ACDEF---GHIKL: an insertion in the longer costs nothing
        (
            "ACDEFWWWGHIKL",
            "ACDEFGHIKLMNPQ",
            10 / 13,
        ),  # ACDEFWWWGHIKL vs ACDEF---GHIKL: the shorter's WWW count
        ("AAAA", "WWWW", 0.0),  # nothing identical
        ("", "ACDE", 0.0),  # empty
        (A, A_MUT3, 30 / 33),
    ],
)
def test_identity_is_identical_pairs_over_the_shorter_length(a, b, expected):
    assert identity(a, b) == pytest.approx(expected)
    assert identity(b, a) == pytest.approx(expected)  # symmetric


def test_every_python_identity_in_plm_is_the_same_number():
    """plm score (generate.metrics) and the plm data fallback report identity() itself: on this gapped pair
    the fallback's old k-mer estimate said 0.87 and alignment-column identity would say 10/13."""
    a, b = "ACDEFGHIKLMNPQRSTVWY", "ACDEFGHIKLWWWMNPQRSTVWY"
    assert identity(a, b) == 1.0
    assert metrics.pairwise_identities([a, b])[0] == identity(a, b)
    assert metrics.max_identity_to_reference([a], [b], backend="python")[0] == [identity(a, b)]
    assert fallback.best_hits([SeqRecord("q", a)], [SeqRecord("t", b)])[0] == fallback.Best(identity(a, b), 0)


def test_kmer_index_aligns_only_prefiltered_references():
    index = KmerIndex([B, A, "W" * 40])
    assert index.max_identity(A_MUT3) == (pytest.approx(30 / 33), 1)
    assert index.max_identity(A[3:25]) == (1.0, 1)
    assert index.max_identity("CCCCCCCCCC") == (0.0, -1)  # shares no 3-mer with any reference


@pytest.mark.parametrize("top", [None, 2])
def test_greedy_clusters_longest_first_join_the_earliest_representative(top):
    seqs = [A[:30], B, A_MUT3, B[2:], "W" * 30, A]
    # order: B, A_MUT3, A (33 residues each, input order among equals), B[2:], A[:30], W*30
    # at 0.5: A joins A_MUT3 (30/33), B[2:] joins B (a fragment: 1.0), A[:30] joins A_MUT3 (28/30)
    assert greedy_clusters(seqs, 0.5, top=top) == [2, 1, 2, 1, 4, 2]
    # at 0.95: A (91% to A_MUT3) founds its own cluster and A[:30] (93% to A_MUT3, 100% to A) joins it
    assert greedy_clusters(seqs, 0.95, top=top) == [5, 1, 2, 1, 4, 5]
