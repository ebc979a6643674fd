"""Supervised tasks: a head trained on the backbone's residue features (a frozen probe on cached
embeddings, or LoRA / full fine-tuning through :class:`plm.evaluation.finetune.FineTune`) and scored on
the test split. The batching, training and prediction helpers here serve the contact heads too.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import torch
from torch import Tensor

from plm.evaluation import kinds
from plm.evaluation.backbone import embed, pad_tokens
from plm.evaluation.heads import ResidueHead, SequenceHead, fit_linear_probe
from plm.evaluation.metrics import classification_metrics, regression_metrics
from plm.evaluation.prepared import PreparedTask, Row
from plm.evaluation.readers.common import IGNORE
from plm.model.transformer import Transformer


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


def make_batches(
    examples: list[dict[str, Any]], batch_size: int, shuffle: bool, seed: int, square: bool | None = None
) -> list[dict[str, Tensor]]:
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
        b["labels"] = _pad_stack(labels, IGNORE, square=two_d) if labels[0].dim() else torch.stack(labels)
        batches.append(b)
    return batches


def fit_head(
    module: Any, train: list[dict[str, Tensor]], epochs: int, progress: bool, use_trainer: bool = True
) -> None:
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

    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    # batch_size=None: the loader yields our pre-padded batches as they are
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(train, batch_size=None))


@torch.no_grad()
def predict(module: Any, batches: list[dict[str, Tensor]]) -> tuple[list[Tensor], list[Tensor]]:
    """The module's outputs and the labels, batch by batch, in evaluation mode without gradients."""
    module.eval()
    outs, labels = [], []
    for b in batches:
        outs.append(module(b))
        labels.append(b["labels"])
    return outs, labels


def probe_rows(examples: list[dict[str, Any]], kind: str) -> tuple[Tensor, Tensor]:
    """The frozen linear probe's design matrix: every scored residue (residue tasks) or each sequence's
    mean residue embedding (what ``SequenceHead`` pools), with its label."""
    if kind in ("residue_classification", "residue_multilabel"):
        keep = [torch.as_tensor(e["labels"]) != IGNORE for e in examples]
        keep = [k.all(-1) if k.dim() == 2 else k for k in keep]
        x = torch.cat([e["feats"][k] for e, k in zip(examples, keep)])
        return x, torch.cat([torch.as_tensor(e["labels"])[k] for e, k in zip(examples, keep)])
    return torch.stack([e["feats"].mean(0) for e in examples]), torch.stack(
        [torch.as_tensor(e["labels"]) for e in examples]
    )


def run_supervised(
    task: PreparedTask, model: Transformer, objective: str, mode: str, progress: bool
) -> list[Row]:
    """Train the task's head on its training records (regression targets standardised on them) and report
    every metric of its kind on the test records."""
    from plm.evaluation.finetune import FineTune

    spec, opts, train, test = task.spec, task.opts, task.train, task.test
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
    torch.manual_seed(opts.seed)
    head_cls = ResidueHead if spec.kind in ("residue_classification", "residue_multilabel") else SequenceHead
    head = head_cls(model.config.n_embd, n_out, spec.head)
    if mode == "frozen":
        feats = embed(
            model,
            [r.sequence for r in train + test],
            opts.max_len,
            causal,
            progress=progress,
            desc=f"{spec.name}: embedding",
            layer=opts.layer,
        )
        ex = [{"feats": f} for f in feats]
        module = FineTune(head, spec.kind, None, "frozen", lr=opts.lr)
    else:
        ex = [{"seq": r.sequence} for r in train + test]
        module = FineTune(
            head,
            spec.kind,
            copy.deepcopy(model),
            mode,
            lr=opts.lr,
            backbone_lr=opts.backbone_lr,
            lora_rank=opts.lora_rank,
            lora_alpha=opts.lora_alpha,
            causal=causal,
            layer=opts.layer,
        )
    for e, r in zip(ex, train + test):
        y = labels_of(r)
        e["labels"] = (y - mean) / std if spec.kind == "sequence_regression" else y
    bs, seed = opts.batch_size, opts.seed
    if mode == "frozen" and spec.head == "linear":
        x, y = probe_rows(ex[: len(train)], spec.kind)
        loss = {"sequence_regression": "mse", "residue_multilabel": "bce", "sequence_multilabel": "bce"}
        fit_linear_probe(
            head.net, x, y, loss.get(spec.kind, "cross_entropy"), opts.probe_c, opts.probe_max_iter
        )
    else:
        fit_head(
            module,
            make_batches(ex[: len(train)], bs, True, seed, square=False),
            opts.epochs,
            progress,
            opts.use_trainer,
        )
    outs, labels = predict(module, make_batches(ex[len(train) :], bs, False, seed, square=False))
    if spec.kind in kinds.MULTILABEL_KINDS:
        rows, y = kinds.scored_rows(spec.kind, outs, labels, n_out)
        metrics = kinds.multilabel_metrics(rows.sigmoid(), y, spec.classes)
        n = rows.shape[0]
    elif spec.kind == "residue_classification":
        logits = torch.cat([o[:, : y.shape[1]].reshape(-1, n_out) for o, y in zip(outs, labels)])
        y = torch.cat([y.reshape(-1) for y in labels])
        keep = y != IGNORE
        metrics = classification_metrics(logits[keep], y[keep], n_out)
        n = int(keep.sum())
    elif spec.kind == "sequence_classification":
        metrics = classification_metrics(torch.cat(outs), torch.cat(labels), n_out)
        n = len(test)
    else:
        preds = torch.cat(outs).squeeze(-1) * std + mean
        metrics = regression_metrics(preds, torch.cat(labels) * std + mean)
        n = len(test)
    return [
        {"task": spec.name, "metric": k, "value": v, "split": "test", "mode": mode, "n": n}
        for k, v in metrics.items()
    ]
