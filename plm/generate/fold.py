"""Mean pLDDT of sequences with ESMFold through ``transformers.EsmForProteinFolding`` (no openfold needed).

Weights come from a local directory (``config.json`` + safetensors/bin), never the hub. The trunk always
runs in fp32; the 3B ESM-2 language model inside runs in fp32 or bf16. fp16 is refused: ESMFold
produces NaNs in fp16 (docs/reference.md, "ESMFold (pLDDT)"). pLDDT is ``plddt`` (B, L, 37 atoms,
0–1) averaged over ``atom37_atom_exists`` and ×100, matching fair-esm's ``mean_plddt``. Results are
cached by the SHA-256 of (model fingerprint, sequence) in a JSON file so re-scoring a FASTA folds only
new sequences.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch

from plm.utils.atomic import atomic_write_text

FoldDtype = Literal["fp32", "bf16"]
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
GET_WEIGHTS_HINT = (
    "download facebook/esmfold_v1 on a machine with internet, e.g. "
    "`hf download facebook/esmfold_v1 --local-dir DIR`, and pass --esmfold DIR"
)
#: Sequences longer than this fold with the trunk's axial attention chunked (memory O(L²) → smaller peaks).
DEFAULT_CHUNK_THRESHOLD = 512
DEFAULT_CHUNK_SIZE = 64


def check_esmfold_dir(directory: str | os.PathLike) -> Path:
    """Raise FileNotFoundError / ValueError naming everything missing from an ESMFold directory."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"--esmfold {d}: no such directory; {GET_WEIGHTS_HINT}")
    problems = []
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        problems.append("config.json is missing")
    else:
        try:
            cfg = json.loads(cfg_path.read_text())
            if not cfg.get("is_folding_model") or cfg.get("esmfold_config") is None:
                problems.append(
                    "config.json is not an ESMFold config (is_folding_model/esmfold_config absent)"
                )
        except json.JSONDecodeError as err:
            problems.append(f"config.json is not valid JSON ({err})")
    weights = [f for f in WEIGHT_FILES if (d / f).is_file()]
    if not weights:
        problems.append(f"no weights ({' or '.join(WEIGHT_FILES)})")
    for index in (f for f in weights if f.endswith(".index.json")):
        shards = set(json.loads((d / index).read_text()).get("weight_map", {}).values())
        missing = sorted(s for s in shards if not (d / s).is_file())
        if missing:
            problems.append(f"{index} lists shards that are missing: {missing[:5]}")
    if problems:
        raise FileNotFoundError(
            f"--esmfold {d}: incomplete ESMFold directory: "
            + "; ".join(problems)
            + f". Fix: {GET_WEIGHTS_HINT}"
        )
    return d


def load_esmfold(directory: str | os.PathLike, dtype: FoldDtype = "fp32", device: str = "cpu"):
    """Load ``EsmForProteinFolding`` from a local directory in eval mode; missing tensors are an error."""
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"fold dtype {dtype!r}: use 'fp32' or 'bf16' (ESMFold gives NaN pLDDT in fp16)")
    from transformers import EsmForProteinFolding

    d = check_esmfold_dir(directory)
    model, info = EsmForProteinFolding.from_pretrained(str(d), dtype=torch.float32, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", ()) if k != "af2_to_esm"]
    if missing:
        raise FileNotFoundError(
            f"--esmfold {d}: weights lack {len(missing)} tensors, e.g. {sorted(missing)[:5]}; "
            f"the download is incomplete or not ESMFold. Fix: {GET_WEIGHTS_HINT}"
        )
    model = model.float()  # the config's fp16_esm makes __init__ halve the LM: undo it
    if dtype == "bf16":
        model.esm = model.esm.to(torch.bfloat16)  # the LM holds most weights; the trunk stays fp32
    return model.to(device).eval()


def fingerprint(directory: str | os.PathLike) -> str:
    """Identifies the weights a cached pLDDT came from: config text plus weight file names and sizes."""
    d = Path(directory)
    h = hashlib.sha256((d / "config.json").read_bytes())
    for f in sorted(d.glob("*.safetensors")) + sorted(d.glob("*.bin")):
        h.update(f"{f.name}:{f.stat().st_size}".encode())
    return h.hexdigest()[:16]


def mean_plddt(output) -> torch.Tensor:
    """(B,) mean pLDDT × 100 over existing atoms from an ``EsmForProteinFoldingOutput``."""
    mask = output.atom37_atom_exists.float()  # (B, L, 37), zero on padding
    return (output.plddt.float() * mask).sum(dim=(1, 2)) / mask.sum(dim=(1, 2)).clamp(min=1) * 100


class PlddtScorer:
    """Folds sequences in length-sorted batches of at most ``token_budget`` padded residues, with a cache.

    Args:
        directory: local ESMFold directory (see ``check_esmfold_dir``).
        dtype: 'fp32' or 'bf16' for the language model inside ESMFold.
        token_budget: batch size × longest length per forward; one sequence always fits.
        cache: JSON file of {fingerprint: {sha256(sequence): pLDDT}}; None disables caching.
        chunk_size: trunk chunk size for sequences longer than ``chunk_threshold`` (memory for speed).
        num_recycles: None uses the config's ``max_recycles`` (ESMFold: 4).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        dtype: FoldDtype = "fp32",
        device: str = "cpu",
        token_budget: int = 1024,
        cache: str | os.PathLike | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        chunk_threshold: int = DEFAULT_CHUNK_THRESHOLD,
        num_recycles: int | None = None,
    ) -> None:
        self.model = load_esmfold(directory, dtype, device)
        self.key = fingerprint(directory)
        self.token_budget, self.chunk_size, self.chunk_threshold = token_budget, chunk_size, chunk_threshold
        self.num_recycles = num_recycles
        self.cache_path = Path(cache) if cache else None
        self._cache: dict[str, dict[str, float]] = {}
        if self.cache_path and self.cache_path.is_file():
            try:
                self._cache = json.loads(self.cache_path.read_text())
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"pLDDT cache {self.cache_path}: not valid JSON ({err}); delete it to start over"
                ) from err
        self.folded = 0  # sequences actually folded (not served from the cache), for tests and logs

    @staticmethod
    def _hash(seq: str) -> str:
        return hashlib.sha256(seq.encode()).hexdigest()

    def _save_cache(self) -> None:
        if not self.cache_path:
            return
        # atomic: an interrupted run never leaves half a cache (which would fail the next run's JSON read)
        atomic_write_text(self.cache_path, json.dumps(self._cache, sort_keys=True))

    def _batches(self, seqs: list[str]) -> list[list[str]]:
        batches, current = [], []
        for s in sorted(seqs, key=len):
            if current and (len(current) + 1) * len(s) > self.token_budget:
                batches.append(current)
                current = []
            current.append(s)
        return batches + ([current] if current else [])

    @torch.inference_mode()
    def __call__(self, seqs: Sequence[str], progress: bool = True) -> list[float]:
        from tqdm.auto import tqdm

        known = self._cache.setdefault(self.key, {})
        todo = sorted({s for s in seqs if self._hash(s) not in known})
        empty = [i for i, s in enumerate(seqs) if not s]
        if empty:
            raise ValueError(f"cannot fold empty sequences (indices {empty[:10]})")
        bar = tqdm(total=len(todo), desc="ESMFold pLDDT", unit="seq", disable=not progress or not todo)
        for batch in self._batches(todo):
            longest = max(len(s) for s in batch)
            self.model.trunk.set_chunk_size(self.chunk_size if longest > self.chunk_threshold else None)
            out = self.model(**self._inputs(batch), num_recycles=self.num_recycles)
            for s, p in zip(batch, mean_plddt(out).tolist()):
                if math.isnan(p):  # NaN: never cache it, say what to do
                    raise FloatingPointError(
                        f"ESMFold returned NaN pLDDT for a sequence of length {len(s)}; use fp32"
                    )
                known[self._hash(s)] = p
            self.folded += len(batch)
            bar.update(len(batch))
            self._save_cache()
        bar.close()
        return [known[self._hash(s)] for s in seqs]

    def _inputs(self, batch: list[str]) -> dict[str, torch.Tensor]:
        """ESMFold's own residue encoding (AF2 order, unknown → X), right-padded with a mask."""
        from transformers.models.esm.openfold_utils import residue_constants as rc

        device = next(self.model.parameters()).device
        width = max(len(s) for s in batch)
        aa = torch.zeros(len(batch), width, dtype=torch.long, device=device)
        mask = torch.zeros_like(aa)
        for r, s in enumerate(batch):
            aa[r, : len(s)] = torch.tensor([rc.restype_order_with_x.get(c, rc.restype_num) for c in s])
            mask[r, : len(s)] = 1
        return {"input_ids": aa, "attention_mask": mask}
