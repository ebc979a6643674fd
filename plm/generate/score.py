"""``plm score``: judge generated proteins the way the CLM papers do.

The measures and their sources are in docs/reference.md, "Generation evaluation".

Per sequence: length, ESMFold mean pLDDT, perplexity under the generating CLM, pseudo-perplexity under
an MLM, max identity to a reference set (novelty), repeat and low-complexity fractions. Over the set:
pairwise identity distribution and the number of clusters at 50% identity (diversity). Every metric
whose input was not given is reported as "not computed" with the flag that enables it — never dropped
silently. Outputs in ``--out``: ``scores.csv``, ``summary.md``, ``summary.json``, ``hist_<metric>.png``.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from plm.command import command
from plm.generate import metrics
from plm.utils.atomic import atomic_file, atomic_write_text

PLDDT_CONFIDENT = 70.0  # AlphaFold/ESMFold convention: > 70 is a confident backbone
NOVEL_BELOW = 0.5  # "novel" = below 50% identity to every reference sequence
REPETITIVE_ABOVE = 0.2


@dataclass
class ScoreOptions:
    esmfold: str | None = None
    fold_dtype: str = "fp32"
    fold_token_budget: int = 1024
    fold_cache: str | None = None
    clm: str | None = None
    mlm: str | None = None
    reference: str | None = None
    cluster_identity: float = 0.5
    cluster_backend: metrics.Backend = "auto"
    novelty_backend: metrics.Backend = "auto"
    max_pairs: int = 5000
    device: str = "cpu"
    progress: bool = True


def load_scorer(path: str, objective: str, flag: str) -> Any:
    """The model behind ``flag``, refused when its record says it was saved under the other objective
    (perplexity under an MLM, or pseudo-perplexity under a CLM, is a number with no meaning)."""
    from plm.model.io import load_with_record
    from plm.model.record import require_objective

    model, record = load_with_record(path)
    require_objective(record, objective, flag)
    return model


def read_sequences(path: str | Path) -> tuple[list[str], list[str]]:
    """Ids and residue strings of a FASTA(.gz); invalid records are an error naming the record."""
    from plm.data.fasta import read_fasta
    from plm.tokenizer import decode

    ids, seqs = [], []
    for rec in read_fasta(path):
        ids.append(rec.id)
        seqs.append(decode(rec.tokens.tolist()))
    if not seqs:
        raise ValueError(f"{path}: no sequences to score")
    return ids, seqs


def _stats(values: list[float]) -> dict[str, float]:
    v = np.array([x for x in values if not math.isnan(x)], dtype=np.float64)
    if not len(v):
        return {}
    return {
        "mean": float(v.mean()),
        "median": float(np.median(v)),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
    }


def _add_metric(rows: list[dict[str, Any]], summary: dict[str, Any], name: str, values: list[float]) -> None:
    """Each sequence's value as its row's ``name`` column and their statistics as ``summary[name]``, so the
    CSV and the summary can never describe different numbers."""
    for r, v in zip(rows, values):
        r[name] = v
    summary[name] = _stats(values)


def _perplexities(scores: list[tuple[float, int]]) -> list[float]:
    """exp(−log-likelihood / tokens scored) per sequence, from ``plm.model.likelihood``'s (sum, count)."""
    return [math.exp(-lp / n) for lp, n in scores]


def _histogram(values: list[float] | np.ndarray, title: str, xlabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.hist([x for x in values if not math.isnan(x)], bins=30, color="#4c72b0")
    ax.set(title=title, xlabel=xlabel, ylabel="count")
    fig.tight_layout()
    with atomic_file(path) as fh:
        fig.savefig(fh, dpi=110, format="png")
    plt.close(fig)


def check_inputs(fasta: str | Path, opts: ScoreOptions) -> None:
    """Every path the options name, checked before minutes of scoring: the FASTA and the reference
    exist, the ESMFold directory is complete, the CLM and MLM records say the right objective (read from
    their records, without loading weights)."""
    from plm.model.record import read_record, require_objective

    for flag, path in (("FASTA", fasta), ("--reference", opts.reference)):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"{flag} {path}: no such file")
    for flag, path, objective in (("--clm", opts.clm, "clm"), ("--mlm", opts.mlm, "mlm")):
        if path is not None:
            require_objective(read_record(path), objective, flag)
    if opts.esmfold:
        from plm.generate.fold import check_esmfold_dir

        check_esmfold_dir(opts.esmfold)


class _Stages:
    """``[k/n] what … done in Xs`` lines, so a long scoring run says what it is doing."""

    def __init__(self, names: list[str], enabled: bool) -> None:
        self.names, self.enabled, self.k = names, enabled, 0

    def __call__(self, name: str) -> Any:
        import contextlib
        import time

        @contextlib.contextmanager
        def stage() -> Any:
            self.k += 1
            t0 = time.perf_counter()
            if self.enabled:
                print(f"[{self.k}/{len(self.names)}] {name} …", file=sys.stderr, flush=True)
            yield
            if self.enabled:
                print(
                    f"[{self.k}/{len(self.names)}] {name}: done in {time.perf_counter() - t0:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )

        return stage()


def score(fasta: str | Path, out: str | Path, opts: ScoreOptions | None = None) -> dict[str, Any]:
    """Score every sequence in ``fasta``; write CSV, markdown, JSON and PNGs to ``out``; return the summary."""
    opts = opts or ScoreOptions()
    check_inputs(fasta, opts)
    names = ["sequence statistics", "pairwise identity and clusters"]
    names += [
        n
        for n, on in (
            ("novelty against --reference", opts.reference),
            ("CLM perplexity", opts.clm),
            ("MLM pseudo-perplexity", opts.mlm),
            ("ESMFold pLDDT", opts.esmfold),
        )
        if on
    ]
    stage = _Stages(names, opts.progress)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids, seqs = read_sequences(fasta)
    rows: list[dict[str, Any]] = [{"id": i, "length": len(s), "sequence": s} for i, s in zip(ids, seqs)]
    summary: dict[str, Any] = {"fasta": str(fasta), "n": len(seqs), "length": _stats([len(s) for s in seqs])}
    missing: dict[str, str] = {}

    with stage("sequence statistics"):
        _add_metric(rows, summary, "repeat_fraction", [metrics.repeat_fraction(s) for s in seqs])
        summary["repetitive_share"] = float(np.mean([r["repeat_fraction"] > REPETITIVE_ABOVE for r in rows]))
        _add_metric(
            rows, summary, "low_complexity_fraction", [metrics.low_complexity_fraction(s) for s in seqs]
        )

    with stage("pairwise identity and clusters"):
        pairwise = metrics.pairwise_identities(seqs, max_pairs=opts.max_pairs)
        summary["pairwise_identity"] = _stats(pairwise.tolist())
        n_clu, method = metrics.n_clusters(seqs, opts.cluster_identity, opts.cluster_backend)
    summary["clusters"] = {
        "min_identity": opts.cluster_identity,
        "count": n_clu,
        "method": method,
        "per_sequence": n_clu / len(seqs),
    }

    if opts.reference:
        with stage("novelty against --reference"):
            _, refs = read_sequences(opts.reference)
            novelty, method = metrics.max_identity_to_reference(seqs, refs, opts.novelty_backend)
        _add_metric(rows, summary, "max_identity_to_reference", novelty)
        summary["max_identity_to_reference"]["method"] = method
        summary["novel_share"] = float(np.mean([r["max_identity_to_reference"] < NOVEL_BELOW for r in rows]))
    else:
        missing["novelty"] = "--reference FASTA"

    if opts.clm:
        from plm.model.likelihood import sequence_logprobs

        with stage("CLM perplexity"):
            scores = sequence_logprobs(load_scorer(opts.clm, "clm", "--clm"), seqs, device=opts.device)
        _add_metric(rows, summary, "clm_perplexity", _perplexities(scores))
    else:
        missing["CLM perplexity"] = "--clm CHECKPOINT"

    if opts.mlm:
        from plm.model.likelihood import pseudo_logprobs

        with stage("MLM pseudo-perplexity"):
            scores = pseudo_logprobs(load_scorer(opts.mlm, "mlm", "--mlm"), seqs, device=opts.device)
        _add_metric(rows, summary, "mlm_pseudo_perplexity", _perplexities(scores))
    else:
        missing["MLM pseudo-perplexity"] = "--mlm CHECKPOINT"

    if opts.esmfold:
        from plm.generate.fold import PlddtScorer

        with stage("ESMFold pLDDT"):
            scorer = PlddtScorer(
                opts.esmfold,
                opts.fold_dtype,
                opts.device,
                opts.fold_token_budget,
                cache=opts.fold_cache or out / "plddt_cache.json",
            )
            _add_metric(rows, summary, "plddt", scorer(seqs, progress=opts.progress))
        summary["plddt_confident_share"] = float(np.mean([r["plddt"] > PLDDT_CONFIDENT for r in rows]))
    else:
        missing["pLDDT"] = "--esmfold DIR"
    summary["not_computed"] = missing

    _write_csv(rows, out / "scores.csv")
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "summary.md", render_markdown(summary))
    _histogram(pairwise, "pairwise identity", "identity", out / "hist_pairwise_identity.png")
    for key, label in [
        ("plddt", "mean pLDDT"),
        ("clm_perplexity", "CLM perplexity"),
        ("mlm_pseudo_perplexity", "MLM pseudo-perplexity"),
        ("max_identity_to_reference", "max identity to reference"),
        ("repeat_fraction", "repeat fraction"),
        ("length", "length"),
    ]:
        if key in rows[0]:
            _histogram([r[key] for r in rows], label, label, out / f"hist_{key}.png")
    return summary


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    fields = list(rows[0])
    fields.remove("sequence")
    fields.append("sequence")  # long column last: the table stays readable in a terminal
    with atomic_file(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)


def render_markdown(s: dict[str, Any]) -> str:
    def line(label: str, key: str, fmt: str = "{:.3f}") -> str | None:
        st = s.get(key)
        if not st:
            return None
        return f"| {label} | {fmt.format(st['mean'])} | {fmt.format(st['median'])} | {fmt.format(st['min'])} | {fmt.format(st['max'])} |"

    out = [
        f"# Generation scores: {s['fasta']}",
        "",
        f"{s['n']} sequences.",
        "",
        "| metric | mean | median | min | max |",
        "|---|---|---|---|---|",
    ]
    for label, key, fmt in [
        ("length", "length", "{:.1f}"),
        ("mean pLDDT", "plddt", "{:.1f}"),
        ("CLM perplexity", "clm_perplexity", "{:.2f}"),
        ("MLM pseudo-perplexity", "mlm_pseudo_perplexity", "{:.2f}"),
        ("pairwise identity", "pairwise_identity", "{:.3f}"),
        ("max identity to reference", "max_identity_to_reference", "{:.3f}"),
        ("repeat fraction", "repeat_fraction", "{:.3f}"),
        ("low-complexity fraction", "low_complexity_fraction", "{:.3f}"),
    ]:
        row = line(label, key, fmt)
        if row:
            out.append(row)
    c = s["clusters"]
    out += [
        "",
        f"- clusters at {c['min_identity']:.0%} identity: **{c['count']}** of {s['n']} ({c['method']})",
        f"- repetitive sequences (repeat fraction > {REPETITIVE_ABOVE}): {s['repetitive_share']:.1%}",
    ]
    if "plddt_confident_share" in s:
        out.append(f"- pLDDT > {PLDDT_CONFIDENT:.0f}: {s['plddt_confident_share']:.1%}")
    if "novel_share" in s:
        out.append(
            f"- novel (< {NOVEL_BELOW:.0%} identity to every reference): {s['novel_share']:.1%} "
            f"({s['max_identity_to_reference']['method']})"
        )
    for name, flag in s["not_computed"].items():
        out.append(f"- {name}: not computed (pass {flag})")
    return "\n".join(out) + "\n"


def score_command(
    fasta: str,
    /,
    out: str,
    esmfold: str | None = None,
    fold_dtype: Literal["fp32", "bf16"] = ScoreOptions.fold_dtype,
    fold_token_budget: int = ScoreOptions.fold_token_budget,
    fold_cache: str | None = None,
    clm: str | None = None,
    mlm: str | None = None,
    reference: str | None = None,
    cluster_identity: float = ScoreOptions.cluster_identity,
    cluster_backend: metrics.Backend = ScoreOptions.cluster_backend,
    novelty_backend: metrics.Backend = ScoreOptions.novelty_backend,
    max_pairs: int = ScoreOptions.max_pairs,
    device: str = ScoreOptions.device,
) -> int:
    """Score generated proteins: pLDDT (ESMFold), perplexity, diversity, novelty, repeats.

    The defaults are ScoreOptions'.

    Args:
        fasta: FASTA(.gz) of sequences to score (e.g. from `plm generate`)
        out: directory for scores.csv, summary.md/json and hist_*.png
        esmfold: local ESMFold directory (config.json + weights) for mean pLDDT
        fold_dtype: dtype of ESMFold's language model (never fp16: NaNs)
        fold_token_budget: max batch size × longest length per ESMFold forward
        fold_cache: pLDDT cache JSON keyed by sequence hash (default OUT/plddt_cache.json)
        clm: the generating CLM (plm export dir or .ckpt) for perplexity
        mlm: an MLM (plm export dir or .ckpt) for pseudo-perplexity
        reference: reference FASTA(.gz), e.g. the training set, for novelty (max identity)
        cluster_identity: identity threshold for the cluster count
        cluster_backend: auto: MMseqs2 when installed, else pure-Python greedy clustering
        novelty_backend: auto: MMseqs2 easy-search against --reference when installed, else k-mer prefilter +
            alignment
        max_pairs: pairs sampled for the pairwise identity distribution
        device: torch device for the models
    """
    opts = ScoreOptions(
        esmfold=esmfold,
        fold_dtype=fold_dtype,
        fold_token_budget=fold_token_budget,
        fold_cache=fold_cache,
        clm=clm,
        mlm=mlm,
        reference=reference,
        cluster_identity=cluster_identity,
        cluster_backend=cluster_backend,
        novelty_backend=novelty_backend,
        max_pairs=max_pairs,
        device=device,
    )
    score(fasta, out, opts)
    print((Path(out) / "summary.md").read_text())
    return 0


main = command(score_command, "plm score", expected=(FileNotFoundError, ValueError))
