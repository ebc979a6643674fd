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
        out.write_text(
            json.dumps({"digest": h.hexdigest(), "losses": self.losses, "world": trainer.world_size})
        )


class StreamRecorder(pl.Callback):
    """Per rank, $PLM_TEST_OUT/<run>-rank<r>.json: for every training micro-batch the step, the logged loss
    (over the global batch), the number of positions this rank scored and a digest of each row's tokens
    (the global stream is rank 0's rows then rank 1's); at the end, logits of a fixed input through the
    (possibly sharded) model, all ranks taking part. <run> is $PLM_TEST_RUN."""

    def __init__(self) -> None:
        self.batches: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        from plm.lit.objectives import IGNORE

        _, labels = pl_module.objective_inputs(batch)
        rows = [hashlib.sha256(r.cpu().numpy().tobytes()).hexdigest()[:16] for r in batch["tokens"]]
        self.batches.append(
            {
                "step": trainer.global_step - 1,
                "loss": float(trainer.callback_metrics["train/loss"]),
                "count": int((labels != IGNORE).sum()),
                "rows": rows,
            }
        )

    def on_train_end(self, trainer, pl_module) -> None:
        import torch

        out = Path(os.environ["PLM_TEST_OUT"])
        run = os.environ["PLM_TEST_RUN"]
        tokens = torch.arange(4, 28).remainder(20).add(4).view(2, 12).to(pl_module.device)
        was_training = pl_module.model.training
        pl_module.model.eval()
        with torch.no_grad():
            logits = pl_module.model(tokens)
        pl_module.model.train(was_training)
        if trainer.is_global_zero:
            torch.save({"tokens": tokens.cpu(), "logits": logits.cpu()}, out / f"{run}-logits.pt")
        (out / f"{run}-rank{trainer.global_rank}.json").write_text(
            json.dumps({"batches": self.batches, "world": trainer.world_size})
        )
