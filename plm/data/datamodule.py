"""LightningDataModule: sources → mixture stream → packed rows; held-out splits and external eval sets.

Training batches are whole packed micro-batches (:class:`plm.data.batch.Batch`) produced by an
``IterableDataset`` (:class:`plm.data.streams.PackedStream`); the stores come from :mod:`plm.data.sources`.
The stream position is one integer, the global sample cursor: each batch carries its masking seed (the
cursor at its start) and the cursor after it, the datamodule remembers the cursor of the last batch the
trainer consumed, and a checkpoint stores it. Micro-batch m (counted over all ranks) belongs to data-loader
worker m % num_workers, and rank r takes rows [r·B, (r+1)·B) of it, so neither worker count nor
prefetching changes the order.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from plm.data.batch import FILLER_MASK_SEED, Batch, heldout_mask_seed
from plm.data.fasta import FastaStats, OnInvalid
from plm.data.packing import StreamPacker, materialize, pack_records
from plm.data.sampler import MixtureSampler
from plm.data.sources import load_eval_set, load_source
from plm.data.store import TokenStore
from plm.data.streams import PackedStream, RankBatches
from plm.paths import sample_data
from plm.reliability.signals import SignalSafeDataLoader, ignore_stop_signals
from plm.tokenizer import RESIDUE_IDS

#: UniMeta200B shares (docs/reference.md, "Data"): UniRef50/S, UniRef90/50, ColabFoldDB centroids, members.
UNIMETA_WEIGHTS = {"uniref50": 0.085, "uniref90": 0.195, "cfdb_centroids": 0.195, "cfdb_members": 0.525}


class ProteinDataModule(pl.LightningDataModule):
    """The pretraining data: provides :class:`plm.data.protocol.TrainingData` (what the callbacks and
    ``LanguageModel`` ask of it) and yields :class:`plm.data.batch.Batch` micro-batches."""

    def __init__(
        self,
        sources: dict[str, str | list[str]] | None = None,
        weights: dict[str, float] | None = None,
        eval_sets: dict[str, str | list[str]] | None = None,
        row_len: int = 1024,
        rows_per_batch: int = 8,
        val_fraction: float = 0.02,
        val_rows: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        on_invalid: OnInvalid = "skip",
        min_piece: int = 16,
        sampler_block: int = 4096,
    ) -> None:
        """
        Args:
            sources: name → FASTA path(s) or a `plm data prepare` directory. Default: the bundled sample.
            weights: name → sampling weight (normalised). Default: proportional to residues.
            eval_sets: name → external held-out set: FASTA path(s) or a prepared source directory (e.g. the
                < 0.5 identity bin of `plm data split-by-identity`); every record is evaluated, each set
                reported alone (val/<name>/…) and left out of the in-distribution val/loss.
            row_len: tokens per packed row (the context length).
            rows_per_batch: packed rows per device per micro-batch.
            val_fraction: share of each source held out, chosen by a hash of the sequence.
            val_rows: packed rows evaluated per held-out set.
            num_workers: data-loader worker processes (does not change the data order).
            seed: seeds the mixture, record order, crops and held-out masks.
            on_invalid: FASTA records that break the policy: error, skip (counted) or x (map to X).
            min_piece: smallest cropped piece used to fill the end of a row; shorter gaps are padded.
            sampler_block: block size of the deterministic mixture schedule (shares exact per block).
        """
        super().__init__()
        self.save_hyperparameters()
        root = sample_data()
        self.sources = sources or {
            "uniprot": str(root / "uniprot.fasta.gz"),
            "metagenomic": str(root / "metagenomic.fasta.gz"),
        }
        self.weights = weights
        self.eval_sets = eval_sets or {}
        self.row_len, self.rows_per_batch = row_len, rows_per_batch
        self.val_fraction, self.val_rows = val_fraction, val_rows
        self.num_workers, self.seed, self.on_invalid = num_workers, seed, on_invalid
        self.min_piece, self.sampler_block = min_piece, sampler_block
        self.cursor = 0  # global sample index after the last batch the trainer consumed
        self.train_stores: list[TokenStore] = []
        self.val_stores: dict[str, TokenStore] = {}
        self.sampler: MixtureSampler | None = None
        self._warned_epochs: set[str] = set()

    # ---- setup ------------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.sampler is not None:
            return
        names = list(self.sources)
        if self.weights is not None:
            unknown = sorted(set(self.weights) - set(names))
            if unknown:
                raise ValueError(f"data.weights names unknown sources {unknown}; sources are {names}")
        self.fasta_report: dict[str, dict[str, Any]] = {}  # per FASTA source: kept and rejected records
        for name in names:
            stats = FastaStats()
            train, val = load_source(name, self.sources[name], self.val_fraction, self.on_invalid, stats)
            self._report("data.sources", name, stats)
            self.train_stores.append(train)
            if len(val):
                self.val_stores[name] = val
        for name, path in self.eval_sets.items():
            if name in self.val_stores:
                raise ValueError(
                    f"data.eval_sets {name!r}: also a data.sources name; give the held-out set its own name"
                )
            stats = FastaStats()
            self.val_stores[name] = load_eval_set(name, path, self.on_invalid, stats)
            self._report("data.eval_sets", name, stats)
        if self.weights is None:
            w = [float(s.n_residues) for s in self.train_stores]
        else:
            w = [float(self.weights.get(n, 0.0)) for n in names]
        self.sampler = MixtureSampler(
            [len(s) for s in self.train_stores],
            w,
            self.seed,
            self.sampler_block,
            clusters=[s.clusters for s in self.train_stores],
        )
        self.packer = StreamPacker(self.train_stores, self.sampler, self.row_len, self.seed, self.min_piece)
        self.check_fingerprint()

    def _report(self, where: str, name: str, stats: FastaStats) -> None:
        """Count what the FASTA policy rejected, say it at start and keep it (checkpoints, <run>/data.json):
        skipping is only acceptable when it is never silent."""
        if not stats.records and not stats.rejected:
            return  # a prepared source: its manifest.json holds prepare's counts
        self.fasta_report[f"{where}.{name}"] = {
            "records": stats.records,
            "residues": stats.residues,
            "rejected": dict(stats.rejected),
            "rejected_examples": stats.examples,
        }
        if stats.rejected:
            reasons = ", ".join(f"{why}: {n:,}" for why, n in stats.rejected.most_common())
            example = next(iter(stats.examples.values()), [""])[0]
            rank_zero_warn(
                f"{where} {name!r}: {sum(stats.rejected.values()):,} FASTA record(s) skipped under "
                f"on_invalid={self.on_invalid} ({reasons}; kept {stats.records:,}), e.g. {example}. "
                "data.on_invalid=error stops at the first instead, x maps bad residues to X"
            )

    @property
    def is_set_up(self) -> bool:
        return self.sampler is not None

    @property
    def source_names(self) -> list[str]:
        return list(self.sources)

    @property
    def heldout_names(self) -> list[str]:
        return [n for n in self.val_stores if n not in self.eval_sets]

    def unigram_probs(self) -> np.ndarray:
        """Residue frequencies of the training mixture (by token id): the predictions of a model that
        ignores context. Validation scores it on the same positions as the model."""
        counts = np.zeros(max(RESIDUE_IDS) + 1)
        share = self.sampler.counts / self.sampler.counts.sum()
        for store, w in zip(self.train_stores, share):
            c = np.bincount(np.asarray(store.tokens[:5_000_000]), minlength=len(counts))
            counts += w * c / max(1, c.sum())
        return counts / counts.sum()

    def unigram_entropy(self) -> float:
        """Entropy (nats) of the training mixture's residue distribution: the unigram model's loss on
        positions drawn like the training data. A trained model must beat it."""
        p = self.unigram_probs()
        p = p[p > 0]
        return float(-(p * np.log(p)).sum())

    # ---- loaders ----------------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        stream = PackedStream(self.packer, self.rows_per_batch, rank, world, self.cursor)
        # workers ignore SIGTERM/SIGINT sent to the whole process group: the main process saves and stops
        return SignalSafeDataLoader(
            stream,
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=False,
            worker_init_fn=ignore_stop_signals if self.num_workers else None,
        )

    def val_dataloader(self) -> list[DataLoader]:
        loaders = []
        for i, (name, store) in enumerate(self.val_stores.items()):
            rows = pack_records(store, self.row_len, self.val_rows)
            rank, world = self._rank_world()
            per_rank = math.ceil(math.ceil(len(rows) / world) / self.rows_per_batch)
            rows = rows[rank::world]
            batches = []
            for b in range(0, len(rows), self.rows_per_batch):
                packed = materialize([store], rows[b : b + self.rows_per_batch], self.row_len)
                # fixed masking seed per held-out batch: val losses are comparable over time
                batches.append(
                    Batch(
                        tokens=torch.from_numpy(packed.tokens),
                        doc_ids=torch.from_numpy(packed.doc_ids),
                        n_real=int(packed.n_real),
                        mask_seed=heldout_mask_seed(i, b, world, rank),
                        set=name,
                    )
                )
            # every rank runs as many batches (a sharded forward's collectives must pair up, and a rank with no
            # batch at all would skip validation and its barriers): fillers of one padding row score nothing
            filler = materialize([store], [[]], self.row_len)
            batches += [
                Batch(
                    tokens=torch.from_numpy(filler.tokens),
                    doc_ids=torch.from_numpy(filler.doc_ids),
                    n_real=0,
                    mask_seed=FILLER_MASK_SEED,
                    set=name,
                )
            ] * (per_rank - len(batches))
            loaders.append(DataLoader(RankBatches(batches), batch_size=None))
        return loaders

    def test_dataloader(self) -> list[DataLoader]:
        return self.val_dataloader()

    # ---- position tracking and resume --------------------------------------------------------------
    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        if (
            self.trainer is not None
            and self.trainer.training
            and batch.set == "train"
            and batch.cursor_end is not None
        ):
            self.cursor = batch.cursor_end
        return batch

    def state_dict(self) -> dict[str, Any]:
        seen = self.sampler.seen_per_source(self.cursor).tolist() if self.sampler else []
        fingerprint = self.fingerprint() if self.sampler else None
        return {
            "cursor": self.cursor,
            "seen_per_source": dict(zip(self.source_names, seen)),
            "fingerprint": fingerprint,
            "fasta_report": getattr(self, "fasta_report", {}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.cursor = int(state["cursor"])
        self._resumed_fingerprint = state.get("fingerprint")  # None in checkpoints older than the check
        if self.sampler is not None:
            self.check_fingerprint()

    def fingerprint(self) -> dict[str, Any]:
        """What besides the cursor decides which samples the stream holds (not how rows are split over ranks,
        devices or micro-batches, which may change on resume)."""
        return {
            "sources": {n: [len(s), int(s.n_residues)] for n, s in zip(self.source_names, self.train_stores)},
            "weights": self.sampler.counts.tolist(),
            "seed": self.seed,
            "row_len": self.row_len,
            "min_piece": self.min_piece,
            "sampler_block": self.sampler_block,
        }

    def check_fingerprint(self) -> None:
        """A resume on other data would silently train on other samples at the saved cursor: refuse it."""
        saved, now = getattr(self, "_resumed_fingerprint", None), self.fingerprint()
        if saved is None or saved == now:
            return
        diffs = "; ".join(
            f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in now if saved.get(k) != now[k]
        )
        raise ValueError(
            f"resume refused: the checkpoint's data stream differs from this run's ({diffs}). Resume "
            "with the data.* settings (sources, weights, seed, row_len) the run started with, or start a "
            "new run (model.init_from takes the weights without the data position)"
        )

    def data_stats(self) -> dict[str, float]:
        """Sequences and epochs seen per source at the current cursor (for logging)."""
        if self.sampler is None:
            return {}
        seen = self.sampler.seen_per_source(self.cursor)
        epochs = self.sampler.epochs_per_source(self.cursor)
        out: dict[str, float] = {}
        for name, n, e in zip(self.source_names, seen, epochs):
            out[f"data/{name}/sequences"] = float(n)
            out[f"data/{name}/epochs"] = float(e)
            if e > 1 and name not in self._warned_epochs:
                self._warned_epochs.add(name)
                warnings.warn(
                    f"source {name!r} has passed one epoch ({e:.2f}): its data now repeats; the papers "
                    'show repeats hurt (docs/reference.md, "Data"). Add data or lower its weight.',
                    stacklevel=2,
                )
        return out

    def planned_tokens(self, steps: int, accumulate: int = 1) -> int:
        _, world = self._rank_world()
        return steps * accumulate * world * self.rows_per_batch * self.row_len

    def steps_for_tokens(self, tokens: float, world: int = 1, accumulate: int = 1) -> int:
        return max(1, math.ceil(tokens / (world * accumulate * self.rows_per_batch * self.row_len)))
