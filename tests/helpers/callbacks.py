"""Callbacks used by subprocess tests (importable via PYTHONPATH=repo root)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import lightning.pytorch as pl


class WeightDigest(pl.Callback):
    """Writes a digest of the weights and the step losses of each rank to $PLM_TEST_OUT/rank<r>.json."""

    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))

    def on_train_end(self, trainer, pl_module) -> None:
        h = hashlib.sha256()
        for name, p in sorted(pl_module.model.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().cpu().numpy().tobytes())
        out = Path(os.environ["PLM_TEST_OUT"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"digest": h.hexdigest(), "losses": self.losses, "world": trainer.world_size}))
