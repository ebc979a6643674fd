"""``plm evaluate``: run task YAMLs against one backbone and write results.csv + results.md.

Per task kind: supervised tasks train a head (frozen probe on cached embeddings, LoRA or full
fine-tuning through ``plm.evaluation.finetune.FineTune``), ``zero_shot`` scores DMS variants without labels,
``contacts`` fits the ESM attention logistic regression (or a pairwise head) on training chains and
reports precision at L, L/2, L/5 on the rest.

A run reads and checks every task's files (columns, labels, mutations, the split) before it loads the
model, so a broken task costs seconds, not the tasks before it; then it writes results.csv/.md after each
task, so a later failure keeps what finished. Each row says what was evaluated (trained or random
weights, the checkpoint's step, the objective, the seed, full or bundled data). Anything the run changes
about a task (a cap on examples, training records dropped as duplicates of test ones) is printed.
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from plm.errors import PlmError, add_debug_argument, one_line_errors
from plm.evaluation import datasets as ds
from plm.evaluation import kinds
from plm.evaluation.heads import (
    AttentionContactRegression,
    PairwiseContactHead,
    ResidueHead,
    SequenceHead,
    attention_features,
    contact_pairs,
    fit_linear_probe,
)
from plm.evaluation.metrics import classification_metrics, contact_metrics, regression_metrics
from plm.evaluation.tasks import DataSource, TaskSpec, load_task, resolve_data
from plm.evaluation.zero_shot import parse_mutations, score_variants
from plm.model.transformer import Transformer
from plm.tokenizer import PAD, encode
from plm.utils.atomic import atomic_file, atomic_write_text

# What was measured, then what it was measured on: weights = trained | random_init, step = the
# checkpoint's optimizer step (empty for imported weights), data = full | bundled.
FIELDS = ["task", "metric", "value", "split", "mode", "n", "weights", "step", "seed", "objective", "data",
          "checkpoint"]
OPTION_KEYS = ("epochs", "lr", "batch_size", "max_train", "max_test", "max_len", "seed", "lora_rank", "lora_alpha",
               "backbone_lr", "layer", "probe_c", "probe_max_iter")
NEAR_IDENTITY = 0.9  # test sequences this identical to a training one are reported (MMseqs2)
MAX_NAMED = 5  # ids named in one message
Row = dict[str, Any]
Note = Callable[[str], None]


def note(message: str) -> None:
    """Tell the user what the run changed or checked about a task (stderr: results.md goes to stdout)."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class PreparedTask:
    """A task whose files were read and checked and whose split was drawn and capped: everything its run
    needs except the model, so every task can be checked before the model is loaded."""

    spec: TaskSpec
    opts: dict[str, Any]
    train: list[Any] = field(default_factory=list)
    test: list[Any] = field(default_factory=list)  # zero-shot: the scored variants
    wildtype: str = ""
    mutations: list[Any] = field(default_factory=list)  # zero-shot: the parsed mutations of each variant


# ---- backbone ---------------------------------------------------------------------------------------
def read_objective(path: str | Path) -> str:
    """The objective the weights were saved under (plm.model.record), never the run's start-time
    hyper-parameters: a checkpoint taken after a CLM→MLM switch holds an MLM."""
    from plm.model.record import read_record

    return read_record(path).objective


def load_backbone(checkpoint: str | Path, random_init: bool = False, objective: str | None = None,
                  seed: int = 0) -> tuple[Transformer, str]:
    """Load weights and their record; ``random_init`` keeps the architecture and re-draws the weights
    (the baseline a trained model must beat)."""
    from plm.model.io import load_with_record

    model, record = load_with_record(checkpoint)
    objective = objective or record.objective
    if random_init:
        torch.manual_seed(seed)
        model = Transformer(model.config).eval()
    return model, objective


def pad_tokens(seqs: list[str], max_len: int) -> Tensor:
    """<cls> seq <eos> rows padded with <pad>; sequences longer than ``max_len`` are cropped."""
    rows = [encode(s[:max_len], on_unknown="x") for s in seqs]
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


@torch.no_grad()
def embed(model: Transformer, seqs: list[str], max_len: int, causal: bool, batch_size: int = 16,
          progress: bool = True, desc: str = "embedding", layer: int = -1) -> list[Tensor]:
    """Residue embeddings (L, h) of ``layer`` per sequence, computed once for frozen probes (length-sorted
    batches)."""
    from plm.evaluation.finetune import residue_features

    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out: list[Tensor | None] = [None] * len(seqs)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
        idx = order[start : start + batch_size]
        feats, _ = residue_features(model, pad_tokens([seqs[i] for i in idx], max_len).to(device), causal, layer)
        for row, i in enumerate(idx):
            out[i] = feats[row, : min(len(seqs[i]), max_len)].float().cpu()
    return out  # type: ignore[return-value]


# ---- supervised tasks -------------------------------------------------------------------------------
def _pad_stack(items: list[Tensor], fill: float, square: bool = False) -> Tensor:
    """Stack (L, …) tensors padding dim 0 (and dim 1 too when ``square``: (L, L) contact maps)."""
    width = max(x.shape[0] for x in items)
    tail = (width, *items[0].shape[2:]) if square else items[0].shape[1:]
    out = torch.full((len(items), width, *tail), fill, dtype=items[0].dtype)
    for i, x in enumerate(items):
        if square:
            out[i, : x.shape[0], : x.shape[1]] = x
        else:
            out[i, : x.shape[0]] = x
    return out


def make_batches(examples: list[dict[str, Any]], batch_size: int, shuffle: bool, seed: int,
                 square: bool | None = None) -> list[dict[str, Tensor]]:
    """Examples hold 'seq' or 'feats' plus 'labels'; batches are padded tensors (labels with -100). Labels
    with two dimensions are (L, L) contact maps padded in both unless ``square`` is False ((L, C) rows of
    a per-residue multi-label task)."""
    idx = list(range(len(examples)))
    if shuffle:
        random.Random(seed).shuffle(idx)
    batches = []
    for start in range(0, len(idx), batch_size):
        chunk = [examples[i] for i in idx[start : start + batch_size]]
        b: dict[str, Tensor] = {}
        if "feats" in chunk[0]:
            b["feats"] = _pad_stack([e["feats"] for e in chunk], 0.0)
            b["mask"] = _pad_stack([torch.ones(e["feats"].shape[0], dtype=torch.bool) for e in chunk], False)
        else:
            b["tokens"] = pad_tokens([e["seq"] for e in chunk], 10**9)
        labels = [torch.as_tensor(e["labels"]) for e in chunk]
        two_d = labels[0].dim() == 2 if square is None else square
        b["labels"] = _pad_stack(labels, ds.IGNORE, square=two_d) if labels[0].dim() else torch.stack(labels)
        batches.append(b)
    return batches


def fit_head(module: Any, train: list[dict[str, Tensor]], epochs: int, progress: bool, use_trainer: bool = True) -> None:
    """Train with a Lightning Trainer, or (``use_trainer=False``, e.g. inside a running pre-training
    Trainer where a nested Trainer would clash) with the same optimizer and loss in a plain loop."""
    if not use_trainer:
        optimizer = module.configure_optimizers()
        module.train()
        with torch.enable_grad():
            for _ in range(epochs):
                for b in train:
                    optimizer.zero_grad()
                    module.loss(module(b), b["labels"]).backward()
                    optimizer.step()
        return
    import lightning.pytorch as pl

    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=progress, enable_model_summary=False, num_sanity_val_steps=0)
    # batch_size=None: the loader yields our pre-padded batches as they are
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(train, batch_size=None))


@torch.no_grad()
def predict(module: Any, batches: list[dict[str, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
    module.eval()
    outs, labels = [], []
    for b in batches:
        outs.append(module(b))
        labels.append(b["labels"])
    return outs, labels


# ---- splits: one rule, no overlap, explicit caps -----------------------------------------------------
def split_records(spec: TaskSpec, records: list[Any], max_train: int | None, max_test: int | None, seed: int,
                  say: Note = note, origins: dict[str, str] | None = None) -> tuple[list, list]:
    """Train/test by the task's one split rule, training records that repeat a test sequence left out,
    then each side capped (``None`` = all; a cap that applies is said)."""
    rng = random.Random(seed)
    train, test = split_by_rule(spec, records, rng)
    train = without_test_overlap(spec, train, test, say)
    total_train, total_test = len(train), len(test)
    train, test = capped(train, max_train, rng), capped(test, max_test, rng)
    for kept, total, key, what in ((train, total_train, "max_train", "training records"),
                                   (test, total_test, "max_test", "test records")):
        if len(kept) < total:
            say(cap_note(spec, len(kept), total, what, key, origins))
    return train, test


def capped(items: list, limit: int | None, rng: random.Random) -> list:
    """A seeded sample of at most ``limit`` items; without a limit all of them, in the same seeded order
    (the draws stay those of the capped runs before caps became optional)."""
    return rng.sample(items, len(items) if limit is None else min(int(limit), len(items)))


def cap_note(spec: TaskSpec, kept: int, total: int, what: str, key: str, origins: dict[str, str] | None) -> str:
    where = (origins or {}).get(key, "the caller")
    return (f"{spec.name}: using {kept:,} of {total:,} {what} ({key} {kept} from {where}; "
            f"--{key.replace('_', '-')} changes it)")


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
            raise ValueError(f"{spec.source}: train_fraction {spec.split['train_fraction']} of {len(records)} records "
                             f"leaves {len(train)} train and {len(test)} test; use a fraction strictly between 0 and 1")
    else:
        train_val, test_val = spec.split.get("train", "train"), spec.split.get("test", "test")
        train = [r for r in records if r.split == train_val]
        test = [r for r in records if r.split == test_val]
        if not train or not test:
            seen = sorted({r.split for r in records})
            raise ValueError(f"{spec.source}: split values {train_val!r}/{test_val!r} select {len(train)} train and "
                             f"{len(test)} test records; values present: {seen}")
    return train, test


def without_test_overlap(spec: TaskSpec, train: list[Any], test: list[Any], say: Note = note) -> list[Any]:
    """The training records minus those whose sequence is also a test sequence: a test set never
    overlaps train. The test side stays whole (it is the benchmark others report on). A record id on both
    sides means the split itself is wrong (one file in both roles, a record listed twice): an error."""
    shared = sorted({r.id for r in train} & {r.id for r in test})
    if shared:
        named = ", ".join(repr(i) for i in shared[:MAX_NAMED]) + (" …" if len(shared) > MAX_NAMED else "")
        raise ValueError(f"{spec.source}: {len(shared):,} record id(s) are on both the train and the test side "
                         f"({named}); the data files or the split rule put the same records in both: give train "
                         "and test different records")
    test_sequences = {r.sequence for r in test}
    kept = [r for r in train if r.sequence not in test_sequences]
    if not kept:
        raise ValueError(f"{spec.source}: all {len(train):,} training sequences also occur in the test set; "
                         "give train and test different sequences")
    if len(kept) < len(train):
        say(f"{spec.name}: left out {len(train) - len(kept):,} of {len(train):,} training records whose sequence "
            "is identical to a test sequence (a test set never overlaps train)")
    return kept


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
        return (f"{spec.name}: identical sequences checked; near-duplicates (>= {NEAR_IDENTITY:.0%} identity) "
                f"between train and test not checked (no MMseqs2{how})")
    digest = hashlib.sha1("\n".join([r.sequence for r in train] + [">"] + [r.sequence for r in test]).encode()).digest()
    if digest not in _NEAR_DUPLICATES:
        from plm.identity.search import best_hits
        from plm.identity.seqio import SeqRecord

        hits = best_hits([SeqRecord(str(i), r.sequence) for i, r in enumerate(test)],
                         [SeqRecord(str(i), r.sequence) for i, r in enumerate(train)],
                         MMseqs(progress=False), min_identity=NEAR_IDENTITY)
        _NEAR_DUPLICATES[digest] = len(hits)
    return (f"{spec.name}: {_NEAR_DUPLICATES[digest]:,} of {len(test):,} test sequences are >= {NEAR_IDENTITY:.0%} "
            "identical to a training sequence (MMseqs2)")


def load_records(spec: TaskSpec, files: dict[str, Any], max_len: int) -> list[Any]:
    """The task's records in its YAML format; formats that split by file tag records ``train``/``test``."""
    cols, fmt, ignore = spec.columns, spec.format, spec.ignore_labels
    if spec.kind in ("residue_multilabel", "sequence_multilabel"):
        return load_multilabel(spec, files, max_len)
    if fmt == "residue_fasta":
        return ds.read_residue_fasta(files["sequences"], files["labels"], spec.classes, files.get("mask"),
                                     cols.get("split", "SET"), max_len, ignore, cols.get("validation"))
    if fmt == "residue_table":
        return ds.read_residue_table(files["table"], spec.classes, cols.get("sequence", "sequence"), cols.get("labels", "labels"),
                                     cols.get("mask", []), cols.get("id"), cols.get("split"), max_len, ignore)
    if fmt == "sequence_csv":
        split_column = None if "train_fraction" in spec.split else cols.get("split", "set")
        return ds.read_sequence_csv(files["table"], cols.get("sequence", "sequence"), cols.get("target", "target"),
                                    split_column, spec.classes or None, max_len, cols.get("validation"))
    exclude = ds.read_ids(files["exclude"]) if "exclude" in files else None
    if fmt == "annotated_fasta":
        read = lambda paths, split: ds.read_annotated_fasta(paths, spec.classes, split, max_len, ignore, exclude)
    elif fmt == "sequence_fasta":
        read = lambda paths, split: ds.read_sequence_fasta(paths, spec.header_pattern, spec.classes, split,
                                                           max_len, ignore, exclude)
    else:
        raise ValueError(f"{spec.source}: format {fmt!r} has no supervised reader")
    return read(files["train"], "train") + read(files["test"], "test")


def load_multilabel(spec: TaskSpec, files: dict[str, Any], max_len: int) -> list[Any]:
    """Multi-label records (plm.evaluation.multilabel); a vocabulary read from the data becomes the spec's
    classes, so heads, metrics and kept models all use it."""
    from plm.evaluation import multilabel as ml

    cols = spec.columns
    if spec.kind == "residue_multilabel":
        return ml.read_residue_multilabel(files["sequences"], files["labels"], spec.classes, spec.label_map,
                                          files.get("mask"), cols.get("split", "SET"), cols.get("validation"), max_len)
    records = ml.read_id_annotations(files["sequences"], files["labels"], files["train"], files["test"],
                                     files.get("valid"), spec.classes or None, max_len)
    spec.classes = list(records.classes)
    return records


def probe_rows(examples: list[dict[str, Any]], kind: str) -> tuple[Tensor, Tensor]:
    """The frozen linear probe's design matrix: every scored residue (residue tasks) or each sequence's
    mean residue embedding (what ``SequenceHead`` pools), with its label."""
    if kind in ("residue_classification", "residue_multilabel"):
        keep = [torch.as_tensor(e["labels"]) != ds.IGNORE for e in examples]
        keep = [k.all(-1) if k.dim() == 2 else k for k in keep]
        x = torch.cat([e["feats"][k] for e, k in zip(examples, keep)])
        return x, torch.cat([torch.as_tensor(e["labels"])[k] for e, k in zip(examples, keep)])
    return torch.stack([e["feats"].mean(0) for e in examples]), torch.stack([torch.as_tensor(e["labels"]) for e in examples])


def run_supervised(task: PreparedTask, model: Transformer, objective: str, mode: str, progress: bool) -> list[Row]:
    from plm.evaluation.finetune import FineTune

    spec, opts, train, test = task.spec, task.opts, task.train, task.test
    max_len, seed = int(opts["max_len"]), int(opts["seed"])
    if spec.kind in ("residue_classification", "residue_multilabel", "sequence_multilabel"):
        labels_of = lambda r: torch.as_tensor(r.labels)
    else:
        labels_of = lambda r: torch.tensor(r.target).long() if spec.classes else torch.tensor(r.target)
    mean, std = 0.0, 1.0
    if spec.kind == "sequence_regression":
        t = torch.tensor([r.target for r in train])
        mean, std = float(t.mean()), float(t.std().clamp(min=1e-8))
    n_out = len(spec.classes) if spec.classes else 1
    causal = objective == "clm"
    torch.manual_seed(seed)
    head_cls = ResidueHead if spec.kind in ("residue_classification", "residue_multilabel") else SequenceHead
    head = head_cls(model.config.n_embd, n_out, spec.head)
    layer = int(opts["layer"])
    if mode == "frozen":
        feats = embed(model, [r.sequence for r in train + test], max_len, causal, progress=progress,
                      desc=f"{spec.name}: embedding", layer=layer)
        ex = [{"feats": f} for f in feats]
        module = FineTune(head, spec.kind, None, "frozen", lr=float(opts["lr"]))
    else:
        ex = [{"seq": r.sequence} for r in train + test]
        module = FineTune(head, spec.kind, copy.deepcopy(model), mode, lr=float(opts["lr"]),
                          backbone_lr=float(opts["backbone_lr"]), lora_rank=int(opts["lora_rank"]),
                          lora_alpha=int(opts["lora_alpha"]), causal=causal, layer=layer)
    for e, r in zip(ex, train + test):
        y = labels_of(r)
        e["labels"] = (y - mean) / std if spec.kind == "sequence_regression" else y
    bs = int(opts["batch_size"])
    if mode == "frozen" and spec.head == "linear":
        x, y = probe_rows(ex[: len(train)], spec.kind)
        loss = {"sequence_regression": "mse", "residue_multilabel": "bce", "sequence_multilabel": "bce"}
        fit_linear_probe(head.net, x, y, loss.get(spec.kind, "cross_entropy"), float(opts["probe_c"]),
                         int(opts["probe_max_iter"]))
    else:
        fit_head(module, make_batches(ex[: len(train)], bs, True, seed, square=False), int(opts["epochs"]), progress,
                 bool(opts.get("use_trainer", True)))
    outs, labels = predict(module, make_batches(ex[len(train) :], bs, False, seed, square=False))
    if spec.kind in kinds.MULTILABEL_KINDS:
        rows, y = kinds.scored_rows(spec.kind, outs, labels, n_out)
        metrics = kinds.multilabel_metrics(rows.sigmoid(), y, spec.classes)
        n = rows.shape[0]
    elif spec.kind == "residue_classification":
        logits = torch.cat([o[:, : y.shape[1]].reshape(-1, n_out) for o, y in zip(outs, labels)])
        y = torch.cat([y.reshape(-1) for y in labels])
        keep = y != ds.IGNORE
        metrics = classification_metrics(logits[keep], y[keep], n_out)
        n = int(keep.sum())
    elif spec.kind == "sequence_classification":
        metrics = classification_metrics(torch.cat(outs), torch.cat(labels), n_out)
        n = len(test)
    else:
        preds = torch.cat(outs).squeeze(-1) * std + mean
        metrics = regression_metrics(preds, torch.cat(labels) * std + mean)
        n = len(test)
    return [{"task": spec.name, "metric": k, "value": v, "split": "test", "mode": mode, "n": n}
            for k, v in metrics.items()]


# ---- zero-shot --------------------------------------------------------------------------------------
def prepare_zero_shot(spec: TaskSpec, files: dict[str, Path], opts: dict[str, Any], origins: dict[str, str],
                      say: Note) -> PreparedTask:
    """The wild type and every scored variant, each mutation checked against the wild type."""
    wt = ds.read_wildtype(files["wildtype"], spec.wildtype_id)
    variants = ds.read_dms_csv(files["table"], spec.columns.get("mutant", "mutant"), spec.columns.get("score", "DMS_score"))
    parsed, problems = [], []
    for i, v in enumerate(variants):
        try:
            parsed.append(parse_mutations(v.mutant, wt, spec.offset))
        except ValueError as err:
            problems.append(f"row {i + 2}: {err}")
    if problems:
        raise ValueError(f"{files['table']}: {len(problems)} mutation(s) do not match wild type "
                         f"{spec.wildtype_id!r} with offset {spec.offset}: " + "; ".join(problems[:5]))
    max_n = opts["max_test"]
    if max_n is not None and len(variants) > int(max_n):
        say(cap_note(spec, int(max_n), len(variants), "variants", "max_test", origins))
        pick = sorted(random.Random(int(opts["seed"])).sample(range(len(variants)), int(max_n)))
        variants, parsed = [variants[i] for i in pick], [parsed[i] for i in pick]
    return PreparedTask(spec, opts, test=variants, wildtype=wt, mutations=parsed)


def run_zero_shot(task: PreparedTask, model: Transformer, objective: str, progress: bool,
                  scores_dir: Path | None = None) -> list[Row]:
    """Spearman of the model's scores with the measured ones; ``scores_dir`` also gets ``<task>.csv`` with
    every variant's measured score and the model's (its column named by ``zero_shot.score_name``)."""
    scores = score_variants(model, objective, task.wildtype, task.mutations, progress=progress)
    if scores_dir is not None:
        from plm.evaluation.zero_shot import score_name

        with atomic_file(Path(scores_dir) / f"{task.spec.name}.csv", "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["mutant", "DMS_score", score_name(model, objective)])
            w.writerows([v.mutant, v.score, f"{s:.6g}"] for v, s in zip(task.test, scores))
    m = regression_metrics(torch.tensor(scores), torch.tensor([v.score for v in task.test]))
    return [{"task": task.spec.name, "metric": "spearman", "value": m["spearman"], "split": "all",
             "mode": f"zero_shot_{objective}", "n": len(task.test)}]


# ---- contacts ---------------------------------------------------------------------------------------
def load_structures(spec: TaskSpec, files: dict[str, Path], max_len: int) -> list[ds.StructureRecord]:
    """Every structure under ``dir`` (.npz / .pdb / .cif[.gz]) or listed in ``files`` (a text file of
    paths), cropped to ``max_len`` and filtered to ≥ ``min_contacts`` contacts at |i−j| ≥ 6."""
    if "dir" in files:
        paths = sorted(p for p in files["dir"].iterdir() if p.name.endswith((".npz", ".pdb", ".cif", ".cif.gz", ".pdb.gz", ".bcif")))
    else:
        listing = files["files"]
        paths = [listing.parent / line.strip() for line in listing.read_text().splitlines() if line.strip()]
    out = []
    for p in paths:
        rec = ds.read_structure(p)
        rec.sequence, rec.cb = rec.sequence[:max_len], rec.cb[:max_len]
        c = rec.contacts()
        if int(np.triu(c == 1, 6).sum()) >= spec.min_contacts:
            out.append(rec)
    if not out:
        raise ValueError(f"{spec.source}: no structure with >= {spec.min_contacts} contacts found in {files}")
    return out


@torch.no_grad()
def attention_maps(model: Transformer, seq: str, causal: bool) -> Tensor:
    tokens = pad_tokens([seq], 10**9)
    _, maps = model.hidden(tokens.to(next(model.parameters()).device), causal=causal, need_weights=True)
    return attention_features([m.cpu() for m in maps], len(seq))


def split_structures(spec: TaskSpec, recs: list[ds.StructureRecord], max_test: int | None, seed: int,
                     say: Note = note, origins: dict[str, str] | None = None) -> tuple[list, list]:
    """Train on a seeded ``train_fraction`` of the chains (default 0.3), test on the rest (first
    ``max_test`` of them); training chains that repeat a test sequence are left out."""
    recs = list(recs)
    random.Random(seed).shuffle(recs)
    n_train = max(1, round(float(spec.split.get("train_fraction", 0.3)) * len(recs)))
    if len(recs) <= n_train:
        raise ValueError(f"{spec.source}: {len(recs)} usable structure(s); need at least 2 (train and test chains)")
    train, test = recs[:n_train], recs[n_train:]
    train = without_test_overlap(spec, train, test, say)
    if max_test is not None and len(test) > int(max_test):
        say(cap_note(spec, int(max_test), len(test), "test chains", "max_test", origins))
        test = test[: int(max_test)]
    return train, test


def run_contacts(task: PreparedTask, model: Transformer, objective: str, mode: str, progress: bool) -> list[Row]:
    spec, opts, train, test = task.spec, task.opts, task.train, task.test
    seed = int(opts["seed"])
    causal = objective == "clm"
    truths = [torch.as_tensor(r.contacts()).long() for r in test]
    gen = torch.Generator().manual_seed(seed)
    if spec.head == "attention":
        xs, ys = [], []
        for r in tqdm(train, desc=f"{spec.name}: train maps", disable=not progress):
            x, y = contact_pairs(attention_maps(model, r.sequence, causal), torch.as_tensor(r.contacts()).long(),
                                 int(opts.get("max_pairs") or 20000), gen)
            xs.append(x)
            ys.append(y)
        n_feat = xs[0].shape[1]
        reg = AttentionContactRegression(n_feat).fit(torch.cat(xs), torch.cat(ys))
        preds = [reg(attention_maps(model, r.sequence, causal)).detach().numpy()
                 for r in tqdm(test, desc=f"{spec.name}: test maps", disable=not progress)]
        mode = "frozen"
    else:
        from plm.evaluation.finetune import FineTune

        head = PairwiseContactHead(model.config.n_embd)
        seqs = [r.sequence for r in train + test]
        if mode == "frozen":
            ex = [{"feats": f} for f in embed(model, seqs, 10**9, causal, batch_size=4, progress=progress,
                                              layer=int(opts["layer"]))]
            module = FineTune(head, "contacts", None, "frozen", lr=float(opts["lr"]))
        else:
            ex = [{"seq": s} for s in seqs]
            module = FineTune(head, "contacts", copy.deepcopy(model), mode, lr=float(opts["lr"]),
                              backbone_lr=float(opts["backbone_lr"]), causal=causal, layer=int(opts["layer"]))
        for e, r in zip(ex, train + test):
            e["labels"] = torch.as_tensor(r.contacts()).long()
        bs = 2
        fit_head(module, make_batches(ex[: len(train)], bs, True, seed), int(opts["epochs"]), progress, bool(opts.get("use_trainer", True)))
        outs, _ = predict(module, make_batches(ex[len(train) :], 1, False, seed))
        preds = [o[0, : len(r.sequence), : len(r.sequence)].numpy() for o, r in zip(outs, test)]
    metrics = contact_metrics(preds, [t.numpy() for t in truths])
    return [{"task": spec.name, "metric": k, "value": v, "split": "test", "mode": mode, "n": len(test)}
            for k, v in metrics.items()]


# ---- driver -----------------------------------------------------------------------------------------
def task_options(spec: TaskSpec, max_seq_len: int, overrides: dict[str, Any] | None = None
                 ) -> tuple[dict[str, Any], dict[str, str]]:
    """The task's options (plm's defaults < the YAML's ``defaults`` < ``overrides``) and where each came
    from, so a cap that applies can say who set it."""
    opts = {k: spec.option(k) for k in OPTION_KEYS}
    origins = {k: spec.source.name if k in spec.defaults else "plm's defaults" for k in OPTION_KEYS}
    opts["max_len"] = min(int(opts["max_len"]), max_seq_len - 2)
    for k, v in (overrides or {}).items():
        if v is not None:
            opts[k], origins[k] = v, "an override"
    return opts, origins


def prepare_task(spec: TaskSpec, source: DataSource, max_seq_len: int, overrides: dict[str, Any] | None = None,
                 say: Note = note) -> PreparedTask:
    """Read and check the task's files, draw its split and apply its caps (all said when they apply)."""
    files = spec.files_in(source)
    opts, origins = task_options(spec, max_seq_len, overrides)
    if spec.kind == "zero_shot":
        return prepare_zero_shot(spec, files, opts, origins, say)
    max_test, seed = opts["max_test"], int(opts["seed"])
    if spec.kind == "contacts":
        train, test = split_structures(spec, load_structures(spec, files, int(opts["max_len"])), max_test, seed, say,
                                       origins)
    else:
        train, test = split_records(spec, load_records(spec, files, int(opts["max_len"])), opts["max_train"],
                                    max_test, seed, say, origins)
    say(near_duplicate_note(spec, train, test))
    return PreparedTask(spec, opts, train, test)


def prepare_all(names: list[str], task_dir: str | None, source: DataSource, max_seq_len: int,
                overrides: dict[str, Any] | None = None, say: Note = note) -> list[PreparedTask]:
    """Every task read and checked before the model is loaded; every broken task reported at once, because
    a bad file found after an hour of other tasks costs that hour."""
    tasks, problems = [], []
    for name in names:
        try:
            tasks.append(prepare_task(load_task(name, task_dir), source, max_seq_len, overrides, say))
        except (ValueError, FileNotFoundError) as err:
            problems.append(str(err))
    if len(problems) == 1:
        raise PlmError(problems[0])
    if problems:
        raise PlmError(f"{len(problems)} of {len(names)} tasks cannot run (nothing was evaluated):\n  "
                       + "\n  ".join(problems))
    return tasks


def run_prepared(task: PreparedTask, model: Transformer, objective: str, mode: str = "frozen",
                 progress: bool = True, scores_dir: Path | None = None) -> list[Row]:
    """Evaluate one prepared task; every row records the task's seed (``scores_dir``: zero-shot tasks'
    per-variant scores)."""
    if task.spec.kind == "zero_shot":
        rows = run_zero_shot(task, model, objective, progress, scores_dir)
    elif task.spec.kind == "contacts":
        rows = run_contacts(task, model, objective, mode, progress)
    else:
        rows = run_supervised(task, model, objective, mode, progress)
    return [{**r, "seed": int(task.opts["seed"])} for r in rows]


def run_task(spec: TaskSpec, model: Transformer, objective: str, mode: str = "frozen",
             data_root: str | Path | None = None, small: bool = False, overrides: dict[str, Any] | None = None,
             progress: bool = True) -> list[Row]:
    """Evaluate one task; ``overrides`` replace the YAML's defaults (epochs, max_train, …)."""
    source = resolve_data(data_root, small)
    if source.note:
        note(source.note)
    task = prepare_task(spec, source, model.config.max_seq_len, overrides)
    return run_prepared(task, model, objective, mode, progress)


def run_all(tasks: list[PreparedTask], model: Transformer, objective: str, mode: str, out: Path,
            meta: dict[str, Any], title: str = "", progress: bool = True) -> list[Row]:
    """Run the tasks in turn, rewriting results.csv/.md after each, so a failure keeps what finished."""
    rows: list[Row] = []
    write_results(rows, out, title)  # no stale rows of an earlier run under this run's title
    for done, task in enumerate(tasks):
        try:
            rows += [{**r, **meta} for r in run_prepared(task, model, objective, mode, progress)]
        except Exception:
            if done:
                note(f"plm evaluate: task {task.spec.name} failed; the {done} task(s) before it are in {out / 'results.csv'}")
            raise
        write_results(rows, out, title)
    return rows


def write_results(rows: list[Row], out: Path, title: str = "") -> None:
    """results.csv (every field) and results.md, each replaced atomically: a reader never sees half a file."""
    with atomic_file(Path(out) / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = [f"# {title}", ""] if title else []
    lines += ["| task | metric | value | split | mode | n | seed |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['metric']} | {r['value']:.4f} | {r['split']} | {r['mode']} | {r['n']} | "
              f"{r.get('seed', '')} |" for r in rows]
    atomic_write_text(Path(out) / "results.md", "\n".join(lines) + "\n")


def run_metadata(checkpoint: str, record: Any, random_init: bool, objective: str, source: DataSource) -> dict[str, Any]:
    """The per-row fields saying what was evaluated (``record``: plm.model.record.CheckpointRecord)."""
    return {"weights": "random_init" if random_init else "trained", "step": "" if record.step is None else record.step,
            "objective": objective, "data": "bundled" if source.bundled else "full", "checkpoint": str(checkpoint)}


def run_suite_command(args: argparse.Namespace, source: DataSource, overrides: dict[str, Any]) -> int:
    from plm.evaluation.suites import load_suite, run_suite

    suite = load_suite(args.suite)
    if args.random_init or args.seed is not None:
        raise PlmError("--suite runs its own seeds and random-init control: use --seeds and --no-random-init-control")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    run_suite(suite, args.checkpoint, args.out, source, overrides, args.objective, not args.no_progress,
              False if args.no_random_init_control else None, seeds)
    print((args.out / "results.md").read_text())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="plm evaluate", description="Evaluate a plm checkpoint or export on downstream tasks.")
    p.add_argument("--checkpoint", required=True, help="plm export directory or Lightning .ckpt (imported weights are export dirs)")
    p.add_argument("--tasks", help="comma-separated task names (evaluation/tasks/<name>.yaml) or YAML paths")
    p.add_argument("--suite", help="a named protocol (evaluation/suites/<name>.yaml: schmirler2024, proteingym_dms): "
                                   "its tasks over its seeds, with the random-init control and the published numbers")
    p.add_argument("--seeds", default=None, help="--suite: comma-separated seeds (default: the suite's)")
    p.add_argument("--no-random-init-control", action="store_true", help="--suite: skip the random-init runs")
    p.add_argument("--out", required=True, type=Path, help="output directory for results.csv and results.md")
    p.add_argument("--mode", default="frozen", choices=["frozen", "lora", "full"], help="supervised training mode")
    p.add_argument("--data-root", default=None,
                   help="directory holding the full task files the YAMLs' 'data' paths name (default: $PLM_DATA_ROOT, "
                        "else ../shared/data beside the checkout as in CI; without any, the bundled subsets)")
    p.add_argument("--small", action="store_true", help="use the bundled subsets (evaluation/data) instead of the full files")
    p.add_argument("--task-dir", default=None, help="directory of task YAMLs (default evaluation/tasks)")
    p.add_argument("--random-init", action="store_true", help="same architecture, freshly initialised weights (baseline)")
    p.add_argument("--objective", choices=["mlm", "clm"], default=None, help="override the recorded training objective")
    p.add_argument("--epochs", type=int, default=None, help="override the task's training epochs")
    p.add_argument("--max-train", type=int, default=None,
                   help="cap training examples per task (default: the task's own cap, else all; printed when it applies)")
    p.add_argument("--max-test", type=int, default=None,
                   help="cap test examples / variants per task (default: the task's own cap, else all; printed when it applies)")
    p.add_argument("--seed", type=int, default=None,
                   help="override the tasks' seed (sampling, head init) and draw --random-init weights with it (default 0)")
    p.add_argument("--layer", type=int, default=None,
                   help="representation to probe: 0 = embeddings, i = after block i, -1 = final after the final norm (default)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_debug_argument(p)
    return p


@one_line_errors("plm evaluate", expected=(ValueError, FileNotFoundError))
def main(argv: list[str]) -> int:
    """Check the checkpoint and every task's data, then load the model and run the tasks in turn."""
    from plm.model.record import read_record

    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if bool(args.tasks) == bool(args.suite):
        raise PlmError("give --tasks (task names or YAML paths) or --suite (a named protocol), one of them")
    record = read_record(args.checkpoint)  # without the weights: a wrong path fails before any data is read
    source = resolve_data(args.data_root, args.small)
    if source.note:
        note(source.note)
    overrides = {"epochs": args.epochs, "max_train": args.max_train, "max_test": args.max_test, "seed": args.seed,
                 "layer": args.layer}
    if args.suite:
        return run_suite_command(args, source, overrides)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    tasks = prepare_all(names, args.task_dir, source, record.config.max_seq_len, overrides)
    model, objective = load_backbone(args.checkpoint, args.random_init, args.objective,
                                     seed=args.seed if args.seed is not None else 0)
    meta = run_metadata(args.checkpoint, record, args.random_init, objective, source)
    title = (f"{args.checkpoint} ({meta['weights']}, step {meta['step'] if meta['step'] != '' else 'not recorded'}), "
             f"objective {objective}, {source.describe()}")
    note(f"plm evaluate: {title}")
    run_all(tasks, model, objective, args.mode, args.out, meta, title, not args.no_progress)
    print((args.out / "results.md").read_text())
    return 0
