"""Train/test splits: one rule per task, no test sequence in training, caps that are always said, and
near-duplicates across the split reported.

Every decision that changes which records a task trains and tests on is made here, before any model is
loaded, and each is said through the run's ``note`` so a reported number comes with what it was measured on.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

from plm.evaluation.prepared import Note, note
from plm.evaluation.readers.structures import StructureRecord
from plm.evaluation.tasks import TaskSpec

NEAR_IDENTITY = 0.9  # test sequences this identical to a training one are reported (MMseqs2)
MAX_NAMED = 5  # ids named in one message


def split_records(
    spec: TaskSpec,
    records: list[Any],
    max_train: int | None,
    max_test: int | None,
    seed: int,
    say: Note = note,
    origins: dict[str, str] | None = None,
) -> tuple[list, list]:
    """Train/test by the task's one split rule, training records that repeat a test sequence left out,
    then each side capped (``None`` = all; a cap that applies is said)."""
    rng = random.Random(seed)
    train, test = split_by_rule(spec, records, rng)
    train = without_test_overlap(spec, train, test, say)
    total_train, total_test = len(train), len(test)
    train, test = capped(train, max_train, rng), capped(test, max_test, rng)
    for kept, total, key, what in (
        (train, total_train, "max_train", "training records"),
        (test, total_test, "max_test", "test records"),
    ):
        if len(kept) < total:
            say(cap_note(spec, len(kept), total, what, key, origins))
    return train, test


def capped(items: list, limit: int | None, rng: random.Random) -> list:
    """A seeded sample of at most ``limit`` items; without a limit all of them, in the same seeded order
    (the draws stay those of the capped runs before caps became optional)."""
    return rng.sample(items, len(items) if limit is None else min(int(limit), len(items)))


def cap_note(
    spec: TaskSpec, kept: int, total: int, what: str, key: str, origins: dict[str, str] | None
) -> str:
    """What a cap left out and who set it, so a capped number is never mistaken for the full benchmark's."""
    where = (origins or {}).get(key, "the caller")
    return (
        f"{spec.name}: using {kept:,} of {total:,} {what} ({key} {kept} from {where}; "
        f"--{key.replace('_', '-')} changes it)"
    )


def split_by_rule(spec: TaskSpec, records: list[Any], rng: random.Random) -> tuple[list, list]:
    """Train/test by the split column (YAML ``split: {train: <value>, test: <value>}``; by-file formats
    tag their records ``train``/``test``), or ``split: {train_fraction: f}``: a seeded shuffle and the
    first fraction trains, for benchmarks that ship as one set (CB513 is the only 8-state source here).
    ``load_task`` refuses a YAML with both rules."""
    if "train_fraction" in spec.split:
        shuffled = rng.sample(records, len(records))
        n_train = round(float(spec.split["train_fraction"]) * len(shuffled))
        train, test = shuffled[:n_train], shuffled[n_train:]
        if not train or not test:
            raise ValueError(
                f"{spec.source}: train_fraction {spec.split['train_fraction']} of {len(records)} records "
                f"leaves {len(train)} train and {len(test)} test; use a fraction strictly between 0 and 1"
            )
    else:
        train_val, test_val = spec.split.get("train", "train"), spec.split.get("test", "test")
        train = [r for r in records if r.split == train_val]
        test = [r for r in records if r.split == test_val]
        if not train or not test:
            seen = sorted({r.split for r in records})
            raise ValueError(
                f"{spec.source}: split values {train_val!r}/{test_val!r} select {len(train)} train and "
                f"{len(test)} test records; values present: {seen}"
            )
    return train, test


def without_test_overlap(spec: TaskSpec, train: list[Any], test: list[Any], say: Note = note) -> list[Any]:
    """The training records minus those whose sequence is also a test sequence: a test set never
    overlaps train. The test side stays whole (it is the benchmark others report on). A record id on both
    sides means the split itself is wrong (one file in both roles, a record listed twice): an error."""
    shared = sorted({r.id for r in train} & {r.id for r in test})
    if shared:
        named = ", ".join(repr(i) for i in shared[:MAX_NAMED]) + (" …" if len(shared) > MAX_NAMED else "")
        raise ValueError(
            f"{spec.source}: {len(shared):,} record id(s) are on both the train and the test side "
            f"({named}); the data files or the split rule put the same records in both: give train "
            "and test different records"
        )
    test_sequences = {r.sequence for r in test}
    kept = [r for r in train if r.sequence not in test_sequences]
    if not kept:
        raise ValueError(
            f"{spec.source}: all {len(train):,} training sequences also occur in the test set; "
            "give train and test different sequences"
        )
    if len(kept) < len(train):
        say(
            f"{spec.name}: left out {len(train) - len(kept):,} of {len(train):,} training records whose sequence "
            "is identical to a test sequence (a test set never overlaps train)"
        )
    return kept


def split_structures(
    spec: TaskSpec,
    recs: list[StructureRecord],
    max_test: int | None,
    seed: int,
    say: Note = note,
    origins: dict[str, str] | None = None,
) -> tuple[list, list]:
    """Train on a seeded ``train_fraction`` of the chains (default 0.3), test on the rest (first
    ``max_test`` of them); training chains that repeat a test sequence are left out."""
    recs = list(recs)
    random.Random(seed).shuffle(recs)
    n_train = max(1, round(float(spec.split.get("train_fraction", 0.3)) * len(recs)))
    if len(recs) <= n_train:
        raise ValueError(
            f"{spec.source}: {len(recs)} usable structure(s); need at least 2 (train and test chains)"
        )
    train, test = recs[:n_train], recs[n_train:]
    train = without_test_overlap(spec, train, test, say)
    if max_test is not None and len(test) > int(max_test):
        say(cap_note(spec, int(max_test), len(test), "test chains", "max_test", origins))
        test = test[: int(max_test)]
    return train, test


_NEAR_DUPLICATES: dict[bytes, int] = {}  # sequences digest → count, so periodic evaluation searches once
_HINTS_GIVEN: set[str] = set()  # install hints are said once per process, not once per task


def near_duplicate_note(spec: TaskSpec, train: list[Any], test: list[Any]) -> str:
    """How many test sequences have a training sequence at least ``NEAR_IDENTITY`` identical (MMseqs2).
    Only reported: homology across a split is the benchmark's design (GB1's test variants differ from
    training ones at a few sites by construction), but whoever reads the number must know it."""
    from plm.identity.mmseqs import MMseqs, find_mmseqs

    if find_mmseqs() is None:
        how = "" if "mmseqs" in _HINTS_GIVEN else ": apt-get install mmseqs2, or set PLM_MMSEQS to the binary"
        _HINTS_GIVEN.add("mmseqs")
        return (
            f"{spec.name}: identical sequences checked; near-duplicates (>= {NEAR_IDENTITY:.0%} identity) "
            f"between train and test not checked (no MMseqs2{how})"
        )
    digest = hashlib.sha1(
        "\n".join([r.sequence for r in train] + [">"] + [r.sequence for r in test]).encode()
    ).digest()
    if digest not in _NEAR_DUPLICATES:
        from plm.identity.search import best_hits
        from plm.identity.seqio import SeqRecord

        hits = best_hits(
            [SeqRecord(str(i), r.sequence) for i, r in enumerate(test)],
            [SeqRecord(str(i), r.sequence) for i, r in enumerate(train)],
            MMseqs(progress=False),
            min_identity=NEAR_IDENTITY,
        )
        _NEAR_DUPLICATES[digest] = len(hits)
    return (
        f"{spec.name}: {_NEAR_DUPLICATES[digest]:,} of {len(test):,} test sequences are >= {NEAR_IDENTITY:.0%} "
        "identical to a training sequence (MMseqs2)"
    )
