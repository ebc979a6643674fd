"""Opens the configured data sources and eval sets (FASTA or prepared directories) as token stores."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from plm.data.clusters import exclude_records, load_clusters
from plm.data.fasta import FastaStats, OnInvalid, read_fasta
from plm.data.store import TokenStore, split_fasta
from plm.paths import not_found_hint, resolve


def load_source(
    name: str,
    spec: str | list[str],
    val_fraction: float,
    on_invalid: OnInvalid,
    stats: FastaStats | None = None,
) -> tuple[TokenStore, TokenStore]:
    """A source is a prepared store directory (``plm data prepare``) or one or more FASTA files; ``stats``
    counts the FASTA records kept and rejected."""
    paths = [_in_checkout(p) for p in ([spec] if isinstance(spec, (str, os.PathLike)) else list(spec))]
    if len(paths) == 1 and Path(paths[0]).is_dir():
        root = Path(paths[0])
        train = TokenStore.open(root / "train", name)
        train.clusters = load_clusters(root / "train", len(train))
        if (root / "exclude.npy").is_file():  # record indices to leave out (e.g. decontamination)
            train.clusters = exclude_records(
                len(train), train.clusters, np.load(root / "exclude.npy"), where=str(root / "exclude.npy")
            )
        return train, TokenStore.open(root / "val", f"{name}/val")
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(
            f"data source {name!r}: not found: {missing}{_hint(missing)}; fix data.sources in your config"
        )
    return split_fasta(
        name, paths, val_fraction, on_invalid=on_invalid, stats=stats if stats is not None else FastaStats()
    )


def _in_checkout(path: str | os.PathLike) -> str | os.PathLike:
    """A relative path as given when it exists from here, else plm's shipped file of that name: the shipped
    configs name bundled files (data/sample/…) relative to the checkout, and runs start from anywhere."""
    return resolve(path)


def _hint(missing: list[str]) -> str:
    return next((not_found_hint(p) for p in missing if not Path(p).is_absolute()), "")


def load_eval_set(
    name: str, spec: str | list[str], on_invalid: OnInvalid, stats: FastaStats | None = None
) -> TokenStore:
    """An external held-out set: every record is evaluated (it never goes through the train/val split,
    which would leave its training side empty). FASTA file(s), e.g. the bins `plm data split-by-identity`
    writes, or a `plm data prepare` source directory (its train and val records together)."""
    paths = [_in_checkout(p) for p in ([spec] if isinstance(spec, (str, os.PathLike)) else list(spec))]
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(
            f"data.eval_sets {name!r}: not found: {missing}{_hint(missing)}; fix data.eval_sets in your config"
        )
    if len(paths) == 1 and Path(paths[0]).is_dir():
        root = Path(paths[0])
        parts = [TokenStore.open(root / s, name) for s in ("train", "val") if (root / s).is_dir()]
        stores = parts or [TokenStore.open(root, name)]
        seqs = [store.get(i) for store in stores for i in range(len(store))]
    else:
        seqs = [rec.tokens for path in paths for rec in read_fasta(path, on_invalid=on_invalid, stats=stats)]
    if not seqs:
        raise ValueError(f"data.eval_sets {name!r}: no sequences in {[str(p) for p in paths]}")
    return TokenStore.from_arrays(name, seqs)
