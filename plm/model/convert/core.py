"""Shared machinery of every converter: a format is a key-map table of :class:`Rule` (plm name ⇄ source
names, plus the tensor transform in each direction), and one routine applies a table with a strict
missing/unexpected-key report, so each format's quirks live in its own module (as torchtitan's
``state_dict_adapter.py`` does).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from tqdm.auto import tqdm

from plm.model.config import ModelConfig
from plm.model.io import CheckpointError, load_state_into
from plm.model.transformer import Transformer

#: File beside a plm export holding ESM-2's contact-regression logistic layer.
CONTACT_REGRESSION_NAME = "contact_regression.safetensors"


# ---- tables ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Rule:
    """One plm tensor ⇄ one or more source tensors. ``{i}`` in names stands for the layer index."""

    plm: str
    src: tuple[str, ...]
    to_plm: Callable[..., Tensor] | None = None
    """Source tensors → plm tensor; None = the single source tensor unchanged."""
    from_plm: Callable[[Tensor], tuple[Tensor, ...]] | None = None
    """plm tensor → source tensors (export); None = unchanged."""


def _cat(*ts: Tensor) -> Tensor:
    return torch.cat(ts, dim=0)


def _split3(t: Tensor) -> tuple[Tensor, ...]:
    return tuple(x.contiguous() for x in t.chunk(3, dim=0))


def _renames(pairs: dict[str, str]) -> list[Rule]:
    """plm name → source name, for both ``.weight`` and ``.bias`` when the key ends with '.'."""
    rules = []
    for ours, theirs in pairs.items():
        if ours.endswith("."):
            rules += [Rule(ours + p, (theirs + p,)) for p in ("weight", "bias")]
        else:
            rules.append(Rule(ours, (theirs,)))
    return rules


@dataclass
class Report:
    """What a conversion did, for the CLI summary and for tests."""

    source: str
    source_format: str
    flag: str = ""
    """The ``--from`` value of this format (so error hints never suggest the format already chosen)."""
    mapped: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    ignored: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        n_src = sum(len(s) for _, s in self.mapped)
        lines = [
            f"read {self.source} ({self.source_format}): mapped {len(self.mapped)} plm tensors from {n_src} source tensors"
        ]
        lines += [f"  not mapped: {n} × {why}" for why, n in self.ignored.items()]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)


@dataclass
class Converted:
    """A plm model read from some format, with what the plm export keeps beside it."""

    model: Transformer
    objective: str
    report: Report
    contact_regression: dict[str, Tensor] | None = None


def _expand(rules: list[Rule], n_layer: int, layered: bool) -> list[Rule]:
    if not layered:
        return rules
    return [
        Rule(r.plm.format(i=i), tuple(s.format(i=i) for s in r.src), r.to_plm, r.from_plm)
        for i in range(n_layer)
        for r in rules
    ]


def _apply(
    state: dict[str, Tensor], rules: list[Rule], ignored: dict[str, str], report: Report, progress: bool
) -> dict[str, Tensor]:
    """Source state → plm state with one error listing every missing and unexpected source tensor."""
    used = {s for r in rules for s in r.src}
    missing = [s for r in rules for s in r.src if s not in state]
    unexpected = []
    for key in state:
        why = next((w for pat, w in ignored.items() if re.search(pat, key)), None)
        if why is not None:
            report.ignored[why] = report.ignored.get(why, 0) + 1
        elif key not in used:
            unexpected.append(key)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' …' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:8]}{' …' if len(unexpected) > 8 else ''}")
        hint = _layout_hint(state)
        raise CheckpointError(
            f"{report.source}: does not match the {report.source_format} layout: "
            + "; ".join(parts)
            + ("" if report.flag and f"--from {report.flag})" in hint else f". {hint}")
        )
    out = {}
    for r in tqdm(rules, desc=f"mapping {report.source_format} tensors", unit="tensor", disable=not progress):
        tensors = [state[s] for s in r.src]
        try:
            out[r.plm] = r.to_plm(*tensors) if r.to_plm else tensors[0]
        except (RuntimeError, ValueError) as err:
            raise CheckpointError(
                f"{report.source}: tensor {', '.join(r.src)} "
                f"{[tuple(t.shape) for t in tensors]} cannot become {r.plm}: {err}"
            ) from err
        report.mapped.append((r.plm, r.src))
    return out


def _layout_hint(state: dict[str, Tensor]) -> str:
    """Name the layout a state dict looks like, so a wrong --from gets a useful message."""
    keys = list(state)
    looks = [
        ("an official ProGen2 checkpoint (use --from progen2)", lambda k: ".attn.qkv_proj." in k),
        ("a GPT-J checkpoint (use --from progen2)", lambda k: k.startswith("transformer.h.")),
        ("a Hugging Face ESM checkpoint (use --from hf-esm)", lambda k: k.startswith("esm.encoder.")),
        ("a fair-esm ESM checkpoint (use --from esm2)", lambda k: ".self_attn.q_proj." in k),
        ("a plm export (use --from plm)", lambda k: k.startswith("blocks.")),
    ]
    for what, test in looks:
        if any(test(k) for k in keys):
            return f"The file looks like {what}."
    return f"First keys: {keys[:4]}."


def _build(cfg: ModelConfig, state: dict[str, Tensor], report: Report) -> Transformer:
    """Instantiate plm's model and load ``state``; shape errors name the source tensors too."""
    model = Transformer(cfg)
    expected = model.state_dict()
    origin = {dst: src for dst, src in report.mapped}
    bad = [
        f"{k} ← {', '.join(origin.get(k, ('?',)))}: file {tuple(v.shape)} vs expected {tuple(expected[k].shape)}"
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if bad:
        raise CheckpointError(
            f"{report.source}: shape mismatches (config {cfg.n_layer}×{cfg.n_embd}×{cfg.n_head}): "
            + "; ".join(bad[:8])
        )
    load_state_into(model, state, report.source)
    return model.eval()


# ---- ESM-2 checks shared by both ESM readers and the plm export ----------------------------------
def _check_tied(state: dict[str, Tensor], head: str, embed: str, source: str) -> None:
    if head in state and embed in state and not torch.equal(state[head], state[embed]):
        raise CheckpointError(
            f"{source}: {head} differs from {embed}; ESM-2's LM head is tied to the embedding "
            "and plm's esm2 flavour cannot hold an untied one"
        )


def _contact(weight: Tensor, bias: Tensor, cfg: ModelConfig, source: str) -> dict[str, Tensor]:
    want = (1, cfg.n_layer * cfg.n_head)
    if tuple(weight.shape) != want or tuple(bias.shape) != (1,):
        raise CheckpointError(
            f"{source}: contact regression weight {tuple(weight.shape)} / bias {tuple(bias.shape)} "
            f"does not fit {cfg.n_layer} layers × {cfg.n_head} heads (expected {want} and (1,))"
        )
    return {"weight": weight.float().contiguous(), "bias": bias.float().contiguous()}


# ---- export ---------------------------------------------------------------------------------------
def to_source(model: Transformer, rules: list[Rule], desc: str, progress: bool) -> dict[str, Tensor]:
    """plm state → source state: every rule run backwards (export), as fp32 contiguous tensors."""
    ours = model.state_dict()
    state: dict[str, Tensor] = {}
    for r in tqdm(rules, desc=desc, unit="tensor", disable=not progress):
        outs = r.from_plm(ours[r.plm]) if r.from_plm else (ours[r.plm],)
        state.update({s: t.detach().float().contiguous() for s, t in zip(r.src, outs)})
    return state
