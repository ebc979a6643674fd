"""Sample from the CLM while it trains and log what the papers judge generation by.

Every ``every_n_steps`` optimizer steps: sample ``num`` sequences (seeded, so runs are comparable
step to step), log their perplexity under the model itself, diversity (mean pairwise identity,
clusters at 50% per sequence), repeat fraction, and — when an ESMFold directory is given — mean
pLDDT. Skipped while the objective is MLM (e.g. after a CLM→MLM transfer switch).
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np

from plm.generate import metrics
from plm.generate.sampling import SamplingConfig, generate


class GenerationCallback(pl.Callback):
    """
    Args:
        every_n_steps: sample after every K-th optimizer step (K > 0).
        num: sequences per evaluation.
        max_length: residues per sequence at most.
        temperature, top_p: sampling settings (default: ``SamplingConfig``'s, ProGen2's released example).
        seed: generator seed, the same at every evaluation.
        esmfold: local ESMFold directory; None skips pLDDT.
        fold_dtype: 'fp32' or 'bf16' for ESMFold's language model.
    """

    def __init__(
        self,
        every_n_steps: int = 1000,
        num: int = 16,
        max_length: int = 128,
        temperature: float = SamplingConfig.temperature,
        top_p: float = SamplingConfig.top_p,
        seed: int = 0,
        esmfold: str | None = None,
        fold_dtype: str = "fp32",
    ) -> None:
        if every_n_steps < 1 or num < 1:
            raise ValueError(f"GenerationCallback: every_n_steps={every_n_steps} and num={num} must be >= 1")
        self.every_n_steps, self.num, self.seed = every_n_steps, num, seed
        self.sampling = SamplingConfig(temperature=temperature, top_p=top_p, max_length=max_length)
        self.esmfold, self.fold_dtype = esmfold, fold_dtype
        self._scorer = None
        self.history: list[dict[str, float]] = []

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.esmfold and self._scorer is None:
            from plm.generate.fold import PlddtScorer

            self._scorer = PlddtScorer(self.esmfold, self.fold_dtype, str(pl_module.device))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps or getattr(pl_module, "objective", "clm") != "clm":
            return
        if getattr(self, "_last_step", None) == step:  # gradient accumulation: one evaluation per step
            return
        self._last_step = step
        model = pl_module.model
        was_training = model.training
        try:
            samples = generate(
                model,
                self.num,
                self.sampling,
                seed=self.seed,
                batch_size=self.num,
                device=pl_module.device,
                progress=False,
            )
        finally:
            model.train(was_training)
        seqs = [s.sequence for s in samples]
        nonempty = [s for s in seqs if s]
        logs = {
            "gen/perplexity": float(np.mean([s.perplexity for s in samples])),
            "gen/length": float(np.mean([len(s) for s in seqs])),
            "gen/eos_share": float(np.mean([s.stop == "eos" for s in samples])),
            "gen/repeat_fraction": float(np.mean([metrics.repeat_fraction(s) for s in seqs])),
            "gen/pairwise_identity": float(metrics.pairwise_identities(nonempty).mean())
            if len(nonempty) > 1
            else 0.0,
            "gen/clusters50_per_seq": metrics.n_clusters(nonempty, 0.5, "python")[0] / max(1, len(nonempty)),
        }
        if self._scorer is not None and nonempty:
            logs["gen/plddt"] = float(np.mean(self._scorer(nonempty, progress=False)))
        self.history.append({"step": float(step), **logs})
        for k, v in logs.items():
            pl_module.log(k, v, on_step=True, on_epoch=False, rank_zero_only=True)
