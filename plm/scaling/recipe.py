"""The one run recipe: compute → size, tokens, batch, steps, accumulation, warm-up, peak LR, strategy,
transfer split — and the ``plm fit`` settings that carry it out.

``plm train --size``, ``plm plan`` and ``plm sweep`` all build a :class:`RunPlan` here, and the CLM→MLM
transfer callback's default switch is the plans' own :func:`transfer_switch_flops`, so they cannot plan
different runs: the laws come from :mod:`plm.scaling.laws`,
the per-size LR, batch and strategy from the size preset (:data:`plm.model.config.SIZES`), the
schedule's warm-up from :mod:`plm.lit.schedule`.

Two entry points, one arithmetic: :func:`plan_for_budget` (a budget picks the size the law asks for)
and :func:`plan_for_size` (a size gets its compute-optimal budget, or the tokens you give). Planning a
size and then planning its budget gives back the same run.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

from plm.lit.schedule import WARMUP_FRACTION, warmup_steps
from plm.model.config import (
    SIZES,
    ModelConfig,
    Strategy,
    batch_tokens_for,
    config_for,
    peak_lr_for,
    strategy_for,
)
from plm.scaling.laws import clm_share_of_transfer, compute_optimal_flops, law, transfer_split

PlanObjective = Literal["mlm", "clm", "transfer"]
OBJECTIVES: tuple[str, ...] = ("mlm", "clm", "transfer")
#: a ladder size stands in for N_opt when within this factor of it (else a shape is generated)
LADDER_TOLERANCE = 1.15
#: a plan whose shape is further than this factor from N_opt says so
FAR_FROM_OPTIMUM = 1.5
#: the fewest optimizer steps a plan keeps: a recipe batch larger than the whole run's tokens / this is
#: reduced (saying so), so a small budget is not trained on many times its planned tokens in one step
MIN_STEPS = 20
#: generated shapes: layers and aspect ratio h/L near the ESM-2 / paper ladder
MAX_LAYERS, MIN_ASPECT, MAX_ASPECT = 128, 16, 128
VALIDATION_EVERY_MAX = 1000  # optimizer steps between validations in long runs

#: what differs between the GPU strategies (``plm fit`` keys); precision and the rest are shared by every
#: plan. FSDP2 builds the model on the meta device and materialises it block by block as it shards it.
STRATEGIES: dict[str, dict[str, Any]] = {
    "ddp": {"trainer.strategy": "ddp"},
    "fsdp": {
        "trainer.strategy": {
            "class_path": "plm.strategies.FSDP2",
            "init_args": {"activation_checkpointing": True},
        },
        "model.init_args.meta_init": True,
    },
}


@dataclass(frozen=True)
class Layout:
    """How one optimizer step is laid out on the hardware."""

    row_len: int = 1024
    rows_per_device: int = 8
    devices: int = 1
    num_nodes: int = 1

    def __post_init__(self) -> None:
        if min(self.row_len, self.rows_per_device, self.devices, self.num_nodes) < 1:
            raise ValueError(f"row length, rows per device, devices and nodes must be positive, got {self}")

    @property
    def world(self) -> int:
        return self.devices * self.num_nodes


@dataclass(frozen=True)
class RunPlan:
    """Everything a compute-optimal run is, derived once; ``fit_overrides`` turns it into ``plm fit``."""

    objective: str
    flops: float  # the budget C = 6·N·D (both stages for transfer)
    config: ModelConfig
    size: str | None  # ladder name, or None for a generated or explicit shape
    n_params: int  # non-embedding N of the shape
    n_opt: float | None  # the N the law asks for at this budget (None: the size was given)
    tokens: float  # D = C / 6N
    batch_tokens: int  # the recipe's tokens per optimizer step
    step_tokens: int  # what the layout really processes per optimizer step
    steps: int
    accumulate: int
    warmup_steps: int
    peak_lr: float
    strategy: Strategy
    layout: Layout
    clm_flops: float | None = None  # transfer: switch to MLM once 6·N·tokens reaches this
    mlm_flops: float | None = None
    law_source: str = "published: Cheng et al. 2024"
    notes: tuple[str, ...] = field(default=())

    @property
    def layers(self) -> int:
        return self.config.n_layer

    @property
    def hidden(self) -> int:
        return self.config.n_embd

    @property
    def heads(self) -> int:
        return self.config.n_head

    @property
    def train_tokens(self) -> int:
        """Tokens the schedule really covers (whole steps): at least ``tokens``."""
        return self.steps * self.step_tokens

    @property
    def run_name(self) -> str:
        return f"{self.objective}-{self.size or self.shape}"

    @property
    def shape(self) -> str:
        return f"{self.layers}x{self.hidden}x{self.heads}"

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            layers=self.layers,
            hidden=self.hidden,
            heads=self.heads,
            train_tokens=self.train_tokens,
            notes=list(self.notes),
        )
        return data

    def fit_overrides(self, gpu: bool | None = None) -> dict[str, Any]:
        """The ``plm fit`` settings this plan fixes, as dotted keys (CLI flags and YAML come from this).

        ``gpu``: add the size's GPU strategy (None: only when the plan spans several devices)."""
        init: dict[str, Any] = {"size": self.size or "tiny", "lr": self.peak_lr}
        if self.size is None:
            init["arch"] = {"n_layer": self.layers, "n_embd": self.hidden, "n_head": self.heads}
        out: dict[str, Any] = {f"model.init_args.{k}": v for k, v in init.items()}
        out.update(
            {
                "data.row_len": self.layout.row_len,
                "data.rows_per_batch": self.layout.rows_per_device,
                "trainer.max_steps": self.steps,
                "trainer.accumulate_grad_batches": self.accumulate,
                "trainer.val_check_interval": min(self.steps, VALIDATION_EVERY_MAX) * self.accumulate,
                "trainer.devices": self.layout.devices,
                "trainer.num_nodes": self.layout.num_nodes,
            }
        )
        if self.objective == "transfer":
            out["trainer.callbacks"] = [
                {
                    "class_path": "plm.callbacks.transfer.CLMToMLMTransfer",
                    # clm_share: None replaces a base config's share (the demo's 20%)
                    "init_args": {"switch_flops": self.clm_flops, "clm_share": None},
                }
            ]
        if gpu or (gpu is None and (self.layout.world > 1 or self.strategy == "fsdp")):
            out["trainer.accelerator"] = "gpu"
            out.update(STRATEGIES[self.strategy])
        return out


def model_class(objective: str) -> str:
    """Transfer starts as a causal LM; the callback switches it to masked."""
    return "plm.lit.CausalLM" if objective in ("clm", "transfer") else "plm.lit.MaskedLM"


def fit_config(plan: RunPlan, run_name: str | None = None, gpu: bool | None = None) -> dict[str, Any]:
    """A complete LightningCLI config (``plm fit --config``) for the plan."""
    cfg: dict[str, Any] = {
        "seed_everything": 0,
        "run_name": run_name or plan.run_name,
        "model": {"class_path": model_class(plan.objective)},
        "trainer": {
            "precision": "bf16-mixed",
            "gradient_clip_val": 1.0,
            "check_val_every_n_epoch": None,
            "num_sanity_val_steps": 0,
        },
    }
    for key, value in plan.fit_overrides(gpu).items():
        node = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return cfg


def overrides_as_args(overrides: dict[str, Any]) -> list[str]:
    """Dotted keys → ``--key value`` command-line flags (lists and dicts as JSON, which jsonargparse reads)."""
    import json

    args: list[str] = []
    for key, value in overrides.items():
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        args += [f"--{key}", text]
    return args


# ---- shapes ---------------------------------------------------------------------------------------
def generated_shape(n_target: float) -> tuple[int, int, int]:
    """Layers × hidden × heads with N ≈ 12·L·h², hidden a multiple of 64, head size 64 (128 from 2048
    hidden when it divides) and an aspect ratio h/L near the ESM-2 / paper ladder (≈ 20–100).

    Below the smallest shape it returns that shape; raises ValueError when no shape comes within
    :data:`LADDER_TOLERANCE` of a larger ``n_target``."""
    best, best_score = None, float("inf")
    for layers in range(2, MAX_LAYERS + 1):
        hidden = max(64, round(math.sqrt(n_target / (12 * layers)) / 64) * 64)
        aspect = hidden / layers
        if not MIN_ASPECT <= aspect <= MAX_ASPECT:
            continue
        score = abs(math.log(12 * layers * hidden**2 / n_target)) + 0.05 * abs(math.log(aspect / 48))
        if score < best_score:
            head = 128 if hidden >= 2048 and hidden % 128 == 0 else 64  # 128-dim heads only where they divide
            best, best_score = (layers, hidden, hidden // head), score
    if n_target < 12 * 2 * 64**2:
        return 2, 64, 1  # the smallest shape plm builds; the plan notes how far it is from N_opt
    if best is None or abs(math.log(12 * best[0] * best[1] ** 2 / n_target)) > math.log(LADDER_TOLERANCE):
        largest = 12 * MAX_LAYERS * (MAX_ASPECT * MAX_LAYERS) ** 2
        raise ValueError(
            f"N = {n_target:.3g} is beyond the shapes plm generates (up to ≈ {largest:.2g} "
            f"non-embedding parameters: {MAX_LAYERS} layers, hidden/layers ≤ {MAX_ASPECT}); "
            "give a smaller budget or your own shape (plm sweep --sizes LxHxA)"
        )
    return best


def ladder_name(cfg: ModelConfig) -> str | None:
    """The ladder size whose preset is exactly this shape (name aside), if any."""
    return next((s for s in SIZES if replace(cfg, name=s) == config_for(s)), None)


def choose_shape(n_target: float) -> tuple[str | None, ModelConfig]:
    """The ladder size nearest ``n_target`` when within :data:`LADDER_TOLERANCE`, else a generated shape."""
    name = min(SIZES, key=lambda s: abs(math.log(config_for(s).n_params_non_embedding() / n_target)))
    cfg = config_for(name)
    if abs(math.log(cfg.n_params_non_embedding() / n_target)) <= math.log(LADDER_TOLERANCE):
        return name, cfg
    layers, hidden, heads = generated_shape(n_target)
    return None, ModelConfig(n_layer=layers, n_embd=hidden, n_head=heads, name="planned")


# ---- the plan ---------------------------------------------------------------------------------------
def transfer_switch_flops(size: ModelConfig | float, flops: float | None = None) -> float:
    """The CLM stage's budget in a CLM→MLM transfer run of this shape (a config or its non-embedding N):
    the stage's share C_CLM(N) / (C_CLM(N) + C_MLM(N)) of ``flops``, the whole run's budget. Without
    ``flops`` the run is the shape's compute-optimal one, C_CLM(N) + C_MLM(N), so the CLM stage gets
    C_CLM(N). A plan's ``clm_flops`` and the transfer callback's default switch both come from here."""
    n = size.n_params_non_embedding() if isinstance(size, ModelConfig) else size
    total = compute_optimal_flops(n, "transfer") if flops is None else flops
    return total * clm_share_of_transfer(n)


def _check_objective(objective: str) -> None:
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r}: use one of {', '.join(OBJECTIVES)}")


def _build(
    objective: str,
    flops: float,
    cfg: ModelConfig,
    size: str | None,
    n_opt: float | None,
    layout: Layout,
    batch_tokens: int | None,
    lr: float | None,
    law_source: str,
    notes: list[str],
) -> RunPlan:
    """The arithmetic every plan shares, from a budget and a shape."""
    n = cfg.n_params_non_embedding()
    preset = SIZES.get(size) if size else None
    batch = batch_tokens or (preset.batch_tokens if preset else batch_tokens_for(n))
    tokens = flops / (6.0 * n)
    if batch_tokens is None and batch > tokens / MIN_STEPS:
        reduced = max(layout.row_len, int(tokens / MIN_STEPS))
        notes.append(
            f"batch reduced from {batch:,} to ≈ {reduced:,} tokens: the run's {tokens:.3g} tokens "
            f"would fill fewer than {MIN_STEPS} steps of the recipe's batch"
        )
        batch = reduced
    rows_per_step = max(1, batch // layout.row_len)
    accumulate = max(1, math.ceil(rows_per_step / (layout.rows_per_device * layout.world)))
    step_tokens = accumulate * layout.rows_per_device * layout.world * layout.row_len
    steps = max(1, math.ceil(tokens / step_tokens))
    clm_flops = mlm_flops = None
    if objective == "transfer":
        clm_flops = transfer_switch_flops(n, flops)  # the shape trained, as the callback's default
        mlm_flops = flops - clm_flops
    if n_opt is not None and abs(math.log(n / n_opt)) > math.log(FAR_FROM_OPTIMUM):
        side = "smallest shape plm builds" if n > n_opt else "chosen shape"
        notes.append(
            f"the {side} has N = {n:.3g}, {max(n / n_opt, n_opt / n):.0f}× "
            f"{'above' if n > n_opt else 'below'} N_opt = {n_opt:.3g}: this budget is off the laws' "
            "useful range, the plan is not compute-optimal"
        )
    return RunPlan(
        objective=objective,
        flops=flops,
        config=cfg,
        size=size,
        n_params=n,
        n_opt=n_opt,
        tokens=tokens,
        batch_tokens=batch,
        step_tokens=step_tokens,
        steps=steps,
        accumulate=accumulate,
        warmup_steps=warmup_steps(steps, WARMUP_FRACTION),
        peak_lr=lr if lr is not None else (preset.peak_lr if preset else peak_lr_for(n)),
        strategy=preset.strategy if preset else strategy_for(n),
        layout=layout,
        clm_flops=clm_flops,
        mlm_flops=mlm_flops,
        law_source=law_source,
        notes=tuple(notes),
    )


def plan_for_budget(
    flops: float,
    objective: str,
    layout: Layout = Layout(),
    fitted: dict[str, Any] | None = None,
    fitted_source: str = "fitted",
) -> RunPlan:
    """The size the law asks for at ``flops``, trained on the whole budget.

    ``fitted``: one objective's entry of ``plm fit-laws --json`` (its N_opt law replaces the published one)."""
    _check_objective(objective)
    if not flops > 0 or not math.isfinite(flops):
        raise ValueError(f"the budget must be a positive number of FLOPs, got {flops}")
    if objective == "transfer":
        if fitted is not None:
            raise ValueError("fitted laws apply to clm or mlm; the transfer split uses the published laws")
        n_opt = transfer_split(flops)[0]
    elif fitted is not None:
        n_opt = float(fitted["n_opt"]["coef"]) * flops ** float(fitted["n_opt"]["exponent"])
    else:
        n_opt = law(objective).n_opt(flops)
    size, cfg = choose_shape(n_opt)
    source = fitted_source if fitted is not None else "published: Cheng et al. 2024"
    return _build(objective, flops, cfg, size, n_opt, layout, None, None, source, [])


def plan_for_size(
    size: str | ModelConfig,
    objective: str,
    layout: Layout = Layout(),
    tokens: float | None = None,
    batch_tokens: int | None = None,
    lr: float | None = None,
    flops: float | None = None,
) -> RunPlan:
    """A given size (ladder name or shape) on its compute-optimal budget, or on ``tokens`` / ``flops``.

    A shape equal to a ladder preset's gets that preset's LR, batch and strategy. ``batch_tokens`` and
    ``lr`` replace the recipe's (small CPU sweeps use small batches)."""
    _check_objective(objective)
    cfg = config_for(size) if isinstance(size, str) else size
    name = size if isinstance(size, str) else ladder_name(cfg)
    n = cfg.n_params_non_embedding()
    if tokens is not None and flops is not None:
        raise ValueError("give tokens or flops, not both")
    if tokens is not None:
        if not tokens > 0 or not math.isfinite(tokens):
            raise ValueError(f"tokens must be a positive number, got {tokens}")
        flops = 6.0 * n * tokens
    elif flops is None:
        flops = compute_optimal_flops(n, objective)
    return _build(
        objective, flops, cfg, name, None, layout, batch_tokens, lr, "published: Cheng et al. 2024", []
    )
