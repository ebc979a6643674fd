"""``DownstreamDataModule``: a task YAML's data as train / validation / test loaders for ``plm finetune``.

The records, the split rule, the train-test overlap removal and the caps are ``plm evaluate``'s own
(:func:`plm.evaluation.datasets.load_records`, :func:`~plm.evaluation.splits.split_records`), so a fine-tuned
model is scored on the test set ``plm evaluate`` reports. Validation comes from the task when it marks
records for it (FLIP's ``VALIDATION=True`` / ``validation`` column via ``columns.validation``, a ``valid``
file role), else it is carved out of the training records by hashing each sequence (:func:`carve_validation`).

Resume is exact: epoch ``e`` visits the training records in an order that is a pure function of (seed,
``e``), and the loader's state is the number of training batches consumed, so a run restarted from any
step's checkpoint continues with the batch the interrupted run would have taken next.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Sampler

from plm.evaluation import kinds
from plm.evaluation.tasks import TaskSpec, load_task, resolve_data
from plm.utils.hashing import mix64

PARTS = ("train", "val", "test")


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---- validation split -----------------------------------------------------------------------------------
def carve_validation(
    records: list[Any], fraction: float, seed: int, identity: float | None = None
) -> tuple[list[Any], list[Any]]:
    """(train, validation) by a hash of each record's sequence, so identical sequences always land on the
    same side; with ``identity`` the hash is of the sequence's cluster representative (greedy clustering
    at that identity, :func:`plm.identity.pairwise.greedy_clusters`), so no validation sequence is that
    similar to a training one. At least one record goes to each side."""
    if not 0 < fraction < 1:
        raise ValueError(f"val_fraction {fraction}: give a share strictly between 0 and 1")
    seqs = [r.sequence for r in records]
    keys = seqs
    if identity is not None:
        from plm.identity.pairwise import greedy_clusters

        keys = [seqs[i] for i in greedy_clusters(seqs, identity)]
    u = np.array(
        [int.from_bytes(hashlib.sha1(f"{seed}\t{k}".encode()).digest()[:8], "little") / 2**64 for k in keys]
    )
    held = u < fraction
    if held.all() or not held.any():  # a tiny set: the group with the smallest hash validates
        held = u == u.min()
        if held.all():
            raise ValueError(
                f"{len(records)} training record(s) in one identity group: nothing left to carve a "
                "validation split from; give the task a validation split or more training data"
            )
    return [r for r, h in zip(records, held) if not h], [r for r, h in zip(records, held) if h]


# ---- batching --------------------------------------------------------------------------------------------
class EpochBatches(Sampler[list[int]]):
    """Training batches of one epoch, shuffled by (seed, epoch), starting after the batches consumed so far.

    ``consumed`` is read when an epoch's iteration starts; ``len`` is always the whole epoch, so Lightning's
    batch count of a resumed epoch (restored from the checkpoint) and this iterator end together."""

    def __init__(self, n: int, batch_size: int, seed: int, consumed: Callable[[], int]) -> None:
        self.n, self.batch_size, self.seed, self.consumed = n, batch_size, seed, consumed

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        epoch, start = divmod(self.consumed(), len(self))
        order = np.random.default_rng(int(mix64(self.seed, epoch))).permutation(self.n).tolist()
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        return iter(batches[start:])


class ResumableLoader(DataLoader):
    """A DataLoader whose state (training batches consumed) goes into Lightning's checkpoint."""

    def __init__(self, *args: Any, datamodule: DownstreamDataModule, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.datamodule = datamodule

    def state_dict(self) -> dict[str, int]:
        return {"consumed": self.datamodule.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.datamodule.consumed = int(state["consumed"])


def label_tensor(kind: str, record: Any) -> Tensor:
    """One record's labels as :mod:`plm.evaluation.kinds` lays them out."""
    if kind == "residue_classification":
        return torch.as_tensor(record.labels, dtype=torch.long)
    if kind in kinds.MULTILABEL_KINDS:
        return torch.as_tensor(record.labels, dtype=torch.float32)
    if kind == "sequence_classification":
        return torch.tensor(int(record.target))
    return torch.tensor(float(record.target))


def collate(kind: str, examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Padded tokens (``<cls> seq <eos> <pad>…``), labels padded with ``IGNORE`` along the residues, and
    each example's index in its part (frozen mode looks cached features up by it)."""
    from plm.evaluation.backbone import pad_tokens

    labels = [e["labels"] for e in examples]
    if kind in kinds.RESIDUE_KINDS:
        width = max(y.shape[0] for y in labels)
        padded = torch.full((len(labels), width, *labels[0].shape[1:]), kinds.IGNORE, dtype=labels[0].dtype)
        for i, y in enumerate(labels):
            padded[i, : y.shape[0]] = y
    else:
        padded = torch.stack(labels)
    return {
        "tokens": pad_tokens([e["seq"] for e in examples], 10**9),
        "labels": padded,
        "index": torch.tensor([e["index"] for e in examples]),
        "part": examples[0]["part"],
    }


# ---- the datamodule --------------------------------------------------------------------------------------
class DownstreamDataModule(pl.LightningDataModule):
    def __init__(
        self,
        task: str,
        task_dir: str | None = None,
        data_root: str | None = None,
        small: bool = False,
        batch_size: int | None = None,
        max_train: int | None = None,
        max_test: int | None = None,
        max_len: int | None = None,
        val_fraction: float = 0.1,
        val_identity: float | None = None,
        task_validation: bool = True,
        seed: int | None = None,
        num_workers: int = 0,
    ) -> None:
        """
        Args:
            task: task name (evaluation/tasks/<name>.yaml) or a YAML path.
            task_dir: directory of task YAMLs for names.
            data_root: directory holding the full task files (default $PLM_DATA_ROOT, else the bundled
                subsets, said when used).
            small: use the bundled subsets (evaluation/data).
            batch_size: sequences per batch; default the task's ``defaults.batch_size``.
            max_train, max_test: caps on training / test records (default the task's; None = all).
            max_len: residues kept per sequence; default the task's ``defaults.max_len``.
            val_fraction: share of training records carved out for validation when the task has none.
            val_identity: carve by clusters at this sequence identity (e.g. 0.5) instead of identical
                sequences only.
            task_validation: use the task's own validation records (off: carve them like the rest).
            seed: split, caps and batch order; default the task's ``defaults.seed``.
            num_workers: data-loader worker processes (the batch order does not depend on them).
        """
        super().__init__()
        self.task, self.task_dir, self.data_root, self.small = task, task_dir, data_root, small
        self.spec: TaskSpec = load_task(task, task_dir)
        if self.spec.kind not in kinds.SUPERVISED_KINDS:
            raise ValueError(
                f"{self.spec.source}: kind {self.spec.kind} has no training data; plm finetune trains "
                f"{', '.join(kinds.SUPERVISED_KINDS)} tasks (plm evaluate scores the others)"
            )
        base = self.spec.options()  # the task's, for what the arguments leave at None
        given = lambda value, default: default if value is None else value
        self.batch_size = int(given(batch_size, base.batch_size))
        self.max_train, self.max_test = given(max_train, base.max_train), given(max_test, base.max_test)
        self.max_len, self.seed = int(given(max_len, base.max_len)), int(given(seed, base.seed))
        self.val_fraction, self.val_identity, self.task_validation = (
            val_fraction,
            val_identity,
            task_validation,
        )
        self.num_workers = num_workers
        self.records: dict[str, list[Any]] = {}
        self.classes: list[str] = list(self.spec.classes)
        self.consumed = 0  # training batches the trainer has taken (the loader's checkpointed state)
        self._resumed_fingerprint: dict[str, Any] | None = None

    # ---- records ----------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        from plm.evaluation.datasets import load_records
        from plm.evaluation.splits import split_records

        source = resolve_data(self.data_root, self.small)
        if source.note:
            say(source.note)
        records = load_records(self.spec, self.spec.files_in(source), self.max_len)
        classes = getattr(records, "classes", None)
        if classes:
            self.classes = list(classes)
        train, test = split_records(self.spec, list(records), self.max_train, self.max_test, self.seed, say)
        given = [r for r in train if getattr(r, "validation", False)] if self.task_validation else []
        if given:
            train = [r for r in train if not getattr(r, "validation", False)]
            val, how = given, "the task's validation records"
        else:
            train, val = carve_validation(train, self.val_fraction, self.seed, self.val_identity)
            how = f"carved from training by sequence hash ({self.val_fraction:.0%}" + (
                f", clusters at {self.val_identity:.0%} identity)"
                if self.val_identity
                else ", identical sequences together)"
            )
        self.records = {"train": train, "val": val, "test": test}
        say(
            f"{self.spec.name}: {len(train):,} train, {len(val):,} validation ({how}), {len(test):,} test records; "
            f"{source.describe()}"
        )
        self._check_fingerprint()

    def sequences(self, part: str) -> list[str]:
        return [r.sequence for r in self.records[part]]

    def train_labels(self) -> list[Tensor]:
        return [label_tensor(self.spec.kind, r) for r in self.records["train"]]

    def _examples(self, part: str) -> list[dict[str, Any]]:
        return [
            {"seq": r.sequence, "labels": label_tensor(self.spec.kind, r), "index": i, "part": part}
            for i, r in enumerate(self.records[part])
        ]

    # ---- loaders ------------------------------------------------------------------------------------------
    def _collate(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(self.spec.kind, examples)

    def train_dataloader(self) -> DataLoader:
        sampler = EpochBatches(len(self.records["train"]), self.batch_size, self.seed, lambda: self.consumed)
        return ResumableLoader(
            self._examples("train"),
            batch_sampler=sampler,
            collate_fn=self._collate,
            num_workers=self.num_workers,
            datamodule=self,
        )

    def _fixed(self, part: str) -> DataLoader:
        return DataLoader(
            self._examples(part),
            batch_size=self.batch_size,
            shuffle=False,
            collate_fn=self._collate,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return self._fixed("val")

    def test_dataloader(self) -> DataLoader:
        return self._fixed("test")

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if self.trainer is not None and self.trainer.training and batch.get("part") == "train":
            self.consumed += 1
        return batch

    # ---- resume on the same data only --------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What decides the batches besides the position: the records of each part, in order."""
        digest = {
            p: hashlib.sha1("\n".join(r.sequence for r in self.records[p]).encode()).hexdigest()[:16]
            for p in PARTS
        }
        return {"task": self.spec.name, "seed": self.seed, "batch_size": self.batch_size, "records": digest}

    def state_dict(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint()} if self.records else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._resumed_fingerprint = state.get("fingerprint")
        if self.records:
            self._check_fingerprint()

    def _check_fingerprint(self) -> None:
        saved = self._resumed_fingerprint
        if saved is None or saved == self.fingerprint():
            return
        now = self.fingerprint()
        diffs = "; ".join(
            f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in now if saved.get(k) != now[k]
        )
        raise ValueError(
            f"resume refused: the checkpoint was trained on other data ({diffs}); resume with the "
            "data settings the run started with, or start a new run (another --run_name)"
        )
