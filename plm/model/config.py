"""Model configuration, the size ladder as data, and exact parameter / FLOP counts.

Counts follow Cheng et al. 2024 (docs/reference.md): N is the *non-embedding* parameter count (token
embedding and output projection excluded), training compute C = 6·N·D. Attention FLOPs are excluded
from C (as in the fits) and included in ``flops_per_token(..., attention=True)`` for MFU.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any, Literal

from plm.tokenizer import VOCAB_SIZE

Flavour = Literal["esm2", "progen2", "xtrimopglm"]
Activation = Literal["gelu", "gelu_tanh", "geglu"]
Norm = Literal["pre", "deepnorm"]

#: What a flavour decides, field by field: a flavour name is only a preset of these (as litgpt's configs are
#: data), and the model reads the fields, never the name. A config may override any of them, so a new
#: combination is a new row here or a few keys in ``model.arch``, not a new branch in the model.
FLAVOURS: dict[Flavour, dict[str, Any]] = {
    # ESM-2 (fair-esm esm2.py): x += Attn(LN(x)); x += FFN(LN(x)); biases everywhere; erf GELU;
    # RoBERTa LM head (dense → GELU → LN) whose decoder is the embedding
    "esm2": {
        "parallel_block": False,
        "attn_bias": True,
        "mlp_bias": True,
        "activation": "gelu",
        "norm": "pre",
        "tied_head": True,
        "head_transform": True,
    },
    # ProGen2 (GPT-J block): x += Attn(LN(x)) + MLP(LN(x)) with one LN; no attention biases; tanh GELU;
    # one untied Linear as LM head
    "progen2": {
        "parallel_block": True,
        "attn_bias": False,
        "mlp_bias": True,
        "activation": "gelu_tanh",
        "norm": "pre",
        "tied_head": False,
        "head_transform": False,
    },
    # xTrimoPGLM-like (GLM-130B block, the scaling paper's own architecture): DeepNorm post-LN
    # x = LN(α·x + f(x)), GeGLU FFN, biases, LM head tied to the embedding. Not weight-compatible with
    # any released checkpoint; the init keeps plm's (its residual 1/sqrt(2L) is DeepNorm's β of GLM-130B)
    "xtrimopglm": {
        "parallel_block": False,
        "attn_bias": True,
        "mlp_bias": True,
        "activation": "geglu",
        "norm": "deepnorm",
        "tied_head": True,
        "head_transform": False,
    },
}
ARCH_FIELDS = tuple(FLAVOURS["esm2"])
ACTIVATIONS: tuple[str, ...] = ("gelu", "gelu_tanh", "geglu")
NORMS: tuple[str, ...] = ("pre", "deepnorm")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and architecture of one Transformer; everything else (counts, head size) is derived.

    The architecture fields (``parallel_block`` … ``head_transform``) default to None, meaning "as the
    flavour's preset in :data:`FLAVOURS`"; construction fills them in, so a built config always holds
    plain values and configs written before these fields existed (only ``flavour``) build the same model.
    """

    n_layer: int = 2
    """Number of Transformer blocks."""
    n_embd: int = 64
    """Hidden size h."""
    n_head: int = 4
    """Attention heads; n_embd must be divisible by it."""
    flavour: Flavour = "esm2"
    """Name of the preset (a row of :data:`FLAVOURS`) that fills every architecture field left None:
    'esm2', 'progen2' or 'xtrimopglm'. Only a preset: the model reads the fields."""
    ffn_hidden: int | None = None
    """FFN width; None means 4·n_embd (ESM-2 and ProGen2 both use 4h; with GeGLU it is the gated width)."""
    rotary_dim: int | None = None
    """Dimensions of each head that get rotary embeddings; None means the whole head (ESM-2).
    ProGen2 rotates part of the head only."""
    vocab_size: int = VOCAB_SIZE
    """Embedding rows; 33 = the ESM-2 alphabet shared by both objectives."""
    max_seq_len: int = 1024
    """Longest row the model is trained on (the papers' context is 1024)."""
    token_dropout: bool = False
    """ESM-2's mask-ratio rescaling of embeddings (needed to continue ESM-2 weights)."""
    layer_norm_eps: float = 1e-5
    """LayerNorm epsilon."""
    name: str = "custom"
    """Preset name this shape came from (informational)."""
    parallel_block: bool | None = None
    """GPT-J's block: attention and MLP both read one LayerNorm of x and add to x together (one LN per
    block); False: sequential, each sublayer with its own LN (ESM-2)."""
    attn_bias: bool | None = None
    """Biases on the q,k,v and output projections (ESM-2 has them, GPT-J not)."""
    mlp_bias: bool | None = None
    """Biases on the FFN's two projections."""
    activation: Activation | None = None
    """FFN nonlinearity: 'gelu' (erf, ESM-2), 'gelu_tanh' (GPT-J's approximation) or 'geglu' (gated:
    the input projection is twice as wide, value · GELU(gate))."""
    norm: Norm | None = None
    """'pre': x + f(LN(x)) (ESM-2, GPT-J); 'deepnorm': post-LN LN(α·x + f(x)) with α = sqrt(2·n_layer)
    (GLM-130B's DeepNorm), which keeps deep post-LN stacks trainable."""
    tied_head: bool | None = None
    """The LM head's decoder is the token embedding (one tensor) rather than its own matrix."""
    head_transform: bool | None = None
    """RoBERTa's dense → GELU → LayerNorm before the decoder (ESM-2's LM head)."""

    def __post_init__(self) -> None:
        problems = []
        preset = FLAVOURS.get(self.flavour)  # a Literal is not checked at run time
        if preset is None:
            problems.append(f"flavour={self.flavour!r} must be one of {', '.join(map(repr, FLAVOURS))}")
        else:
            for key, value in preset.items():  # frozen: fill the preset's values in once, at construction
                if getattr(self, key) is None:
                    object.__setattr__(self, key, value)
            if self.activation not in ACTIVATIONS:
                problems.append(f"activation={self.activation!r} must be one of {', '.join(ACTIVATIONS)}")
            if self.norm not in NORMS:
                problems.append(f"norm={self.norm!r} must be one of {', '.join(NORMS)}")
        if self.n_embd % self.n_head:
            problems.append(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.rotary_dim is not None and (self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim):
            problems.append(f"rotary_dim={self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]")
        if min(self.n_layer, self.n_embd, self.n_head, self.vocab_size, self.max_seq_len) <= 0:
            problems.append("n_layer, n_embd, n_head, vocab_size and max_seq_len must be positive")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    def architecture(self) -> dict[str, Any]:
        """The architecture fields' values (what a row of :data:`FLAVOURS` holds)."""
        return {k: getattr(self, k) for k in ARCH_FIELDS}

    def preset(self) -> Flavour | None:
        """The flavour whose preset these fields are exactly, or None for a new combination. Converters
        ask this, not ``flavour``: a config named 'esm2' with overridden fields is no ESM-2 any more."""
        arch = self.architecture()
        if arch == FLAVOURS.get(self.flavour):
            return self.flavour
        return next((name for name, fields in FLAVOURS.items() if fields == arch), None)

    # ---- derived values -------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn(self) -> int:
        return self.ffn_hidden or 4 * self.n_embd

    @property
    def rotary(self) -> int:
        return self.rotary_dim or self.head_dim

    @property
    def ffn_in(self) -> int:
        """Output width of the FFN's input projection: doubled by a gated activation (value and gate)."""
        return 2 * self.ffn if self.activation == "geglu" else self.ffn

    @property
    def deepnorm_alpha(self) -> float:
        """DeepNorm's residual scale α = sqrt(2·n_layer) (GLM-130B); 1 with pre-LN."""
        return math.sqrt(2 * self.n_layer) if self.norm == "deepnorm" else 1.0

    def n_params_block(self) -> int:
        """One block, from the fields: its LayerNorms, attention and FFN (with their biases if any)."""
        h, f, f_in = self.n_embd, self.ffn, self.ffn_in
        norms = (1 if self.parallel_block else 2) * 2 * h  # GPT-J's parallel block shares one LN
        attn = 4 * h * h + (4 * h if self.attn_bias else 0)  # q,k,v and output projections
        mlp = h * f_in + f * h + ((f_in + h) if self.mlp_bias else 0)
        return norms + attn + mlp

    def n_params_non_embedding(self) -> int:
        """N of the scaling laws: blocks + final norm (+ the LM head's dense transform and its LN)."""
        h = self.n_embd
        extra = 2 * h  # final LayerNorm
        if self.head_transform:
            extra += h * h + h + 2 * h  # RobertaLMHead dense + LayerNorm
        return self.n_layer * self.n_params_block() + extra

    def n_params_embedding(self) -> int:
        """Token embedding, output projection (when untied) and output bias."""
        v, h = self.vocab_size, self.n_embd
        return v * h + (0 if self.tied_head else v * h) + v

    def n_params(self) -> int:
        return self.n_params_non_embedding() + self.n_params_embedding()

    def flops_per_token(self, seq_len: int | None = None, attention: bool = True) -> float:
        """Training FLOPs per token (forward + backward = 3 × forward).

        Without attention this is 6·N (the laws' accounting); with attention it adds the PaLM term
        12·L·h·T for the score and value products, plus the output projection, for MFU.
        """
        if not attention:
            return 6.0 * self.n_params_non_embedding()
        t = seq_len or self.max_seq_len
        return (
            6.0 * (self.n_params_non_embedding() + self.vocab_size * self.n_embd)
            + 12.0 * self.n_layer * self.n_embd * t
        )

    def training_flops(self, n_tokens: int, attended_pairs: int, n_predicted: int | None = None) -> float:
        """Training FLOPs (forward + backward = 3 × forward) of one batch, exact for packed rows.

        6 per matmul parameter per token; 12·L·h per (query, key) pair that attention scores:
        ``attended_pairs`` = Σ len² over the documents of packed rows (T² per row for one sequence
        per row); the LM head (with ``head_transform`` its dense too) only on the ``n_predicted`` labelled
        positions (every token if None). With one sequence of T tokens per row and every position
        predicted this equals ``flops_per_token(T) · n_tokens``.
        """
        h = self.n_embd
        transform = h * h if self.head_transform else 0  # the head's dense matmul runs per predicted token
        head = self.vocab_size * h + transform  # LM-head matmul weights
        body = self.n_params_non_embedding() - transform
        n_pred = n_tokens if n_predicted is None else n_predicted
        return 6.0 * (body * n_tokens + head * n_pred) + 12.0 * self.n_layer * h * attended_pairs

    def to_dict(self) -> dict[str, Any]:
        """All fields except architecture fields equal to the flavour's preset: a record names its flavour
        and only what differs, so a preset model writes the record it wrote before the fields existed
        (older plm reads it), and ``config_for(size).to_dict()`` with another ``flavour`` takes that
        flavour's preset rather than keeping the first one's values."""
        data = dataclasses.asdict(self)
        for key, value in FLAVOURS[self.flavour].items():
            if data[key] == value:
                del data[key]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown model config keys {unknown}; valid keys are {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


Strategy = Literal["ddp", "fsdp"]

#: tokens per optimizer step: ≈0.5M (512 × 1024) below 1B non-embedding parameters, ≈1M from 1B
#: (docs/reference.md, "Architecture and training")
HALF_M_TOKENS, ONE_M_TOKENS = 512 * 1024, 1024 * 1024
#: from this many non-embedding parameters a run uses the 1M-token batch and shards its state (FSDP)
LARGE_MODEL_PARAMS = 1e9


def batch_tokens_for(n_params_non_embedding: float) -> int:
    """The papers' batch rule, for shapes that are not on the ladder."""
    return ONE_M_TOKENS if n_params_non_embedding >= LARGE_MODEL_PARAMS else HALF_M_TOKENS


def strategy_for(n_params_non_embedding: float) -> Strategy:
    """Data parallel while weights, gradients and Adam state fit on one 40–80 GB GPU; sharded from 1B."""
    return "fsdp" if n_params_non_embedding >= LARGE_MODEL_PARAMS else "ddp"


def peak_lr_for(n_params_non_embedding: float) -> float:
    """Peak LR by size (docs/reference.md, "Architecture and training") for shapes off the ladder."""
    n = n_params_non_embedding
    for limit, lr in ((60e6, 6e-4), (150e6, 5.5e-4), (300e6, 5e-4), (600e6, 4e-4), (950e6, 3.5e-4)):
        if n <= limit:
            return lr
    return 3e-4


@dataclass(frozen=True)
class SizePreset:
    """One rung of the ladder: its shape and what differs between sizes in the recipe — the paper's peak
    LR, the batch (tokens per optimizer step) and the GPU strategy. Everything else is shared."""

    n_layer: int
    n_embd: int
    n_head: int
    peak_lr: float
    batch_tokens: int
    strategy: Strategy
    origin: str


# Shapes, peak LRs and batch sizes: docs/reference.md ("Size ladder", "Architecture and training").
SIZES: dict[str, SizePreset] = {
    "tiny": SizePreset(
        2, 64, 4, 1e-3, 16 * 512, "ddp", "test and CPU-demo shape (the demo trains 900 steps in minutes)"
    ),
    "8m": SizePreset(6, 320, 20, 6e-4, HALF_M_TOKENS, "ddp", "ESM-2 8M"),
    "35m": SizePreset(12, 480, 20, 6e-4, HALF_M_TOKENS, "ddp", "ESM-2 35M"),
    "85m": SizePreset(12, 768, 12, 5.5e-4, HALF_M_TOKENS, "ddp", "paper grid"),
    "150m": SizePreset(30, 640, 20, 5.5e-4, HALF_M_TOKENS, "ddp", "ESM-2 150M"),
    "470m": SizePreset(24, 1280, 20, 4e-4, HALF_M_TOKENS, "ddp", "paper transfer runs (shape ≈)"),
    "650m": SizePreset(33, 1280, 20, 4e-4, HALF_M_TOKENS, "ddp", "ESM-2 650M"),
    "1b": SizePreset(24, 2048, 32, 3e-4, ONE_M_TOKENS, "fsdp", "paper 1B (N ≈ 1.2B)"),
    "3b": SizePreset(36, 2560, 40, 3e-4, ONE_M_TOKENS, "fsdp", "ESM-2 3B"),
    "7b": SizePreset(36, 4096, 32, 3e-4, ONE_M_TOKENS, "fsdp", "paper CLM validation model (N ≈ 7.2B)"),
    "10b": SizePreset(47, 4352, 34, 3e-4, ONE_M_TOKENS, "fsdp", "paper MLM validation model (N ≈ 10.7B)"),
}


def config_for(size: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a ladder size; unknown sizes fail listing the valid ones."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; valid sizes: {', '.join(SIZES)}")
    p = SIZES[size]
    return ModelConfig(n_layer=p.n_layer, n_embd=p.n_embd, n_head=p.n_head, name=size, **overrides)
