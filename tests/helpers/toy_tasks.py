"""Toy downstream tasks written into a test's directory: real task YAMLs over a few short sequences."""

from __future__ import annotations

import csv
import random
from pathlib import Path

AA = "ACDEFGHIKLMNPQRSTVWY"


def random_sequence(rng: random.Random, low: int = 8, high: int = 24) -> str:
    return "".join(rng.choice(AA) for _ in range(rng.randint(low, high)))


def write_toy_task(root: Path, n: int = 60) -> Path:
    """Regression, FLIP CSV layout: train / test by ``set``, rows 40-47 flagged ``validation``; target = the
    share of K (learnable from the residues)."""
    rng = random.Random(0)
    with open(root / "toy.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sequence", "target", "set", "validation"])
        for i in range(n):
            s = random_sequence(rng)
            w.writerow(
                [
                    s,
                    f"{s.count('K') / len(s):.4f}",
                    "test" if i >= 48 else "train",
                    "True" if 40 <= i < 48 else "",
                ]
            )
    (root / "toy.yaml").write_text(
        "name: toy\nkind: sequence_regression\nformat: sequence_csv\ndata: {table: toy.csv}\n"
        "columns: {sequence: sequence, target: target, split: set, validation: validation}\n"
        "split: {train: train, test: test}\nmetric: spearman\n"
    )
    return root / "toy.yaml"


def write_residue_task(root: Path, n: int = 30) -> Path:
    """Per-residue 3-class labels in FLIP's three-FASTA layout (label: H for K/R, E for V/I/L, else C)."""
    rng = random.Random(1)
    seqs, labels = [], []
    for i in range(n):
        s = random_sequence(rng)
        split = "test" if i >= 24 else "train"
        seqs.append(f">r{i}\n{s}\n")
        lab = "".join("H" if c in "KR" else "E" if c in "VIL" else "C" for c in s)
        labels.append(f">r{i} SET={split} VALIDATION={i in (20, 21, 22)}\n{lab}\n")
    (root / "seqs.fasta").write_text("".join(seqs))
    (root / "labels.fasta").write_text("".join(labels))
    (root / "res.yaml").write_text(
        "name: res\nkind: residue_classification\nformat: residue_fasta\n"
        "data: {sequences: seqs.fasta, labels: labels.fasta}\nclasses: [H, E, C]\n"
        "columns: {split: SET, validation: VALIDATION}\nsplit: {train: train, test: test}\nmetric: accuracy\n"
    )
    return root / "res.yaml"
