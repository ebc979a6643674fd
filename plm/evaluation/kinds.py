"""What each supervised task kind means: its loss, its metrics, and how raw head outputs become predictions.

One table for every consumer (``FineTune`` training and validation, ``plm evaluate``, ``plm predict`` and the
task-YAML check), so a metric a YAML names is one plm computes, and a kept model turns logits into the
same probabilities the metrics scored.

Label conventions (what the readers produce and the collate pads with ``IGNORE`` = -100):

- ``residue_classification``: (L,) class ids; ``sequence_classification``: one class id.
- ``sequence_regression``: one float, trained on (y - mean) / std of the training targets.
- ``residue_multilabel``: (L, C) 0/1 floats, a row of ``IGNORE`` for unscored residues.
- ``sequence_multilabel``: (C,) 0/1 floats.
- ``contacts``: (L, L) 0/1, -1 unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

IGNORE = -100
RESIDUE_KINDS = ("residue_classification", "residue_multilabel")
CLASSIFICATION_KINDS = ("residue_classification", "sequence_classification")
MULTILABEL_KINDS = ("residue_multilabel", "sequence_multilabel")
SUPERVISED_KINDS = (*CLASSIFICATION_KINDS, *MULTILABEL_KINDS, "sequence_regression")
#: labels listed one metric row each up to this many (EC has hundreds: macro and micro only)
PER_LABEL_ROWS = 20


@dataclass(frozen=True)
class MetricInfo:
    """A metric plm computes for a kind, and whether larger is better (early stopping, best checkpoint)."""

    name: str
    higher_is_better: bool = True


#: the metrics each kind reports; a task YAML's ``metric`` must be one of them (per-label ``auprc_<label>``
#: rows of multi-label kinds are reported too, but a task names an aggregate)
KIND_METRICS: dict[str, tuple[MetricInfo, ...]] = {
    "residue_classification": (MetricInfo("accuracy"), MetricInfo("macro_f1"), MetricInfo("auroc")),
    "sequence_classification": (MetricInfo("accuracy"), MetricInfo("macro_f1"), MetricInfo("auroc")),
    "sequence_regression": (MetricInfo("spearman"), MetricInfo("rmse", higher_is_better=False)),
    "residue_multilabel": (MetricInfo("auprc_macro"), MetricInfo("auprc_micro"), MetricInfo("fmax")),
    "sequence_multilabel": (MetricInfo("auprc_macro"), MetricInfo("auprc_micro"), MetricInfo("fmax")),
    "zero_shot": (MetricInfo("spearman"),),
    "contacts": tuple(
        MetricInfo(f"P@{f}_{r}") for r in ("short", "medium", "long") for f in ("L", "L/2", "L/5")
    ),
}
#: the metric a task reports first when its YAML names none
DEFAULT_METRIC = {kind: infos[0].name for kind, infos in KIND_METRICS.items()}


def metric_problem(kind: str, metric: str, n_classes: int = 0) -> str | None:
    """Why ``metric`` cannot be a task's metric (None when it can): plm would otherwise compute another one
    and report it under the task's name."""
    if not metric or kind not in KIND_METRICS:
        return None
    names = [m.name for m in KIND_METRICS[kind]]
    if metric == "auroc" and kind in CLASSIFICATION_KINDS and n_classes and n_classes != 2:
        return f"metric 'auroc' is computed for two classes only; this task has {n_classes} (use one of {names[:2]})"
    if metric not in names:
        return f"metric {metric!r} is not computed for kind {kind} (plm computes {names})"
    return None


def higher_is_better(kind: str, metric: str) -> bool:
    return next((m.higher_is_better for m in KIND_METRICS.get(kind, ()) if m.name == metric), True)


def n_outputs(kind: str, n_classes: int) -> int:
    """Head width: one logit per class (softmax or independent sigmoids), one value for regression."""
    return 1 if kind == "sequence_regression" else n_classes


# ---- loss --------------------------------------------------------------------------------------------
def loss(kind: str, out: Tensor, labels: Tensor, class_weight: Tensor | None = None) -> Tensor:
    """The training loss of one batch. ``class_weight``: per-class weights of the cross-entropy, or the
    positive weight of each label's binary cross-entropy (multi-label)."""
    if kind in CLASSIFICATION_KINDS:
        out = out[:, : labels.shape[1]] if labels.dim() == 2 else out
        return nn.functional.cross_entropy(
            out.reshape(-1, out.shape[-1]).float(),
            labels.reshape(-1).long(),
            weight=class_weight,
            ignore_index=IGNORE,
        )
    if kind in MULTILABEL_KINDS:
        if kind == "residue_multilabel":
            out = out[:, : labels.shape[1]]
        keep = labels != IGNORE
        return nn.functional.binary_cross_entropy_with_logits(
            out.float()[keep], labels[keep].float(), pos_weight=_broadcast(class_weight, keep, labels)
        )
    if kind == "sequence_regression":
        return nn.functional.mse_loss(out.squeeze(-1).float(), labels.float())
    if kind == "contacts":
        keep = labels >= 0
        return nn.functional.binary_cross_entropy_with_logits(
            out[:, : labels.shape[1], : labels.shape[2]][keep], labels[keep].float()
        )
    raise ValueError(f"kind {kind!r} has no supervised loss")


def _broadcast(pos_weight: Tensor | None, keep: Tensor, labels: Tensor) -> Tensor | None:
    """Per-label positive weights laid out like the kept label entries."""
    if pos_weight is None:
        return None
    return pos_weight.expand_as(labels)[keep]


def balanced_weights(kind: str, labels: list[Tensor], n_classes: int) -> Tensor:
    """Class weights that make each class (or each label's positives) weigh as much as the rest in total:
    n / (C · count_c) for classes (scikit-learn's 'balanced'), negatives / positives per label. A class
    absent from training gets weight 1 (it cannot be learned either way)."""
    if kind in CLASSIFICATION_KINDS:
        y = torch.cat([t.reshape(-1) for t in labels]).long()
        y = y[y != IGNORE]
        counts = torch.bincount(y, minlength=n_classes).double()
        w = y.numel() / (n_classes * counts.clamp(min=1))
        return torch.where(counts > 0, w, torch.ones_like(w)).float()
    if kind in MULTILABEL_KINDS:
        y = torch.cat([t.reshape(-1, n_classes) for t in labels]).float()
        y = y[(y != IGNORE).all(-1)]
        pos = y.sum(0)
        neg = y.shape[0] - pos
        return torch.where(pos > 0, neg / pos.clamp(min=1), torch.ones_like(pos)).float()
    raise ValueError(f"class_weights apply to classification and multi-label tasks, not {kind}")


# ---- predictions ----------------------------------------------------------------------------------------
def probabilities(kind: str, out: Tensor) -> Tensor:
    """What a kept model reports: class probabilities (softmax), per-label probabilities (sigmoid), or the
    regression value as trained (the caller undoes the target scaling)."""
    if kind in CLASSIFICATION_KINDS:
        return out.float().softmax(-1)
    if kind in MULTILABEL_KINDS or kind == "contacts":
        return out.float().sigmoid()
    return out.float().squeeze(-1)


def scored_rows(kind: str, outs: list[Tensor], labels: list[Tensor], n_out: int) -> tuple[Tensor, Tensor]:
    """Batches of head outputs and labels → (rows, labels) of every scored example: residues of residue
    tasks (unscored ones dropped), sequences otherwise."""
    if kind in RESIDUE_KINDS:
        rows, ys = [], []
        for o, y in zip(outs, labels):
            o = o[:, : y.shape[1]].reshape(-1, n_out)
            y = y.reshape(o.shape[0], -1) if kind == "residue_multilabel" else y.reshape(-1)
            keep = (y != IGNORE).all(-1) if y.dim() == 2 else y != IGNORE
            rows.append(o[keep])
            ys.append(y[keep])
        return torch.cat(rows), torch.cat(ys)
    return torch.cat(outs), torch.cat(labels)


# ---- metrics ---------------------------------------------------------------------------------------------
def metrics(
    kind: str, out: Tensor, y: Tensor, classes: list[str], mean: float = 0.0, std: float = 1.0
) -> dict[str, float]:
    """Every metric of ``kind`` on scored rows (:func:`scored_rows`); regression outputs and targets are in
    training units and are scaled back by ``mean``/``std`` first."""
    from plm.evaluation.metrics import classification_metrics, regression_metrics

    if kind in CLASSIFICATION_KINDS:
        return classification_metrics(out, y, len(classes))
    if kind == "sequence_regression":
        return regression_metrics(out.squeeze(-1) * std + mean, y * std + mean)
    if kind in MULTILABEL_KINDS:
        return multilabel_metrics(out.float().sigmoid(), y, classes)
    raise ValueError(f"kind {kind!r} has no supervised metrics")


def multilabel_metrics(probs: Tensor, y: Tensor, classes: list[str]) -> dict[str, float]:
    """AUPRC per label (torchmetrics' average precision) for labels with a positive among the scored rows,
    their mean (macro) and the pooled (micro) AUPRC, and Fmax (:func:`fmax`). Per-label rows are listed
    for up to ``PER_LABEL_ROWS`` labels."""
    from torchmetrics.functional.classification import binary_average_precision

    y = y.long()
    present = [i for i in range(len(classes)) if bool(y[:, i].any())]
    per = {classes[i]: float(binary_average_precision(probs[:, i], y[:, i])) for i in present}
    out = {
        "auprc_macro": float(np.mean(list(per.values()))) if per else float("nan"),
        "auprc_micro": float(binary_average_precision(probs.reshape(-1), y.reshape(-1)))
        if present
        else float("nan"),
        "fmax": fmax(probs, y),
    }
    if len(classes) <= PER_LABEL_ROWS:
        out |= {f"auprc_{c}": per.get(c, float("nan")) for c in classes}
    return out


def fmax(probs: Tensor, y: Tensor, thresholds: int = 100) -> float:
    """CAFA's protein-centric Fmax (as DeepFRI reports it): for each threshold t, precision is averaged over
    the rows with at least one score >= t and recall over the rows with at least one true label; Fmax is
    the largest harmonic mean over t in (0, 1). Rows without a true label do not count for recall."""
    y = y.bool()
    has_true = y.any(1)
    if not bool(has_true.any()):
        return float("nan")
    best = 0.0
    for t in torch.linspace(0, 1, thresholds + 1)[1:-1]:
        pred = probs >= t
        tp = (pred & y).sum(1).float()
        predicted = pred.sum(1)
        covered = predicted > 0
        if not bool(covered.any()):
            continue
        precision = float((tp[covered] / predicted[covered]).mean())
        recall = float((tp[has_true] / y[has_true].sum(1)).mean())
        if precision + recall > 0:
            best = max(best, 2 * precision * recall / (precision + recall))
    return best
