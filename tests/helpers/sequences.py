"""Hand-made protein sequences with known relations (identity, mutations) for metric and identity tests."""

from __future__ import annotations

import random

AA = "ACDEFGHIKLMNPQRSTVWY"

A = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"  # 33 residues
A_MUT3 = A[:5] + "W" + A[6:15] + "W" + A[16:25] + "W" + A[26:]  # 3 substitutions (no W in A)
B = "GHPLWEDNCYVTMAGSRKFIQDELWHNPCTMYG"  # unrelated


def mutate(seq: str, identity: float, seed: int = 0) -> str:
    """``seq`` with exactly round((1 - identity) · len) positions substituted by another residue (seeded)."""
    rng = random.Random(seed)
    s = list(seq)
    for i in rng.sample(range(len(s)), round((1 - identity) * len(s))):
        s[i] = rng.choice([a for a in AA if a != s[i]])
    return "".join(s)
