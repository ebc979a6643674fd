"""Autoregressive sampling from a causal plm Transformer, with a preallocated KV cache.

Token conventions (both flavours, plm ids): a sequence starts with ``<cls>`` (id 0) and ends with
``<eos>`` (id 2). ProGen2 writes the same thing as ``1…2`` (N-terminus ``1``, C-terminus ``2``); the
ProGen2 converter maps ``1 → <cls>`` and ``2 → <eos>``, so a converted ProGen2 model is sampled
exactly like a plm CLM: prompt ``<cls>`` + optional N-terminal residues, stop at ``<eos>``.
Only the 20 standard amino acids and ``<eos>`` may be sampled; every other id is masked out.

Notation: B rows, P prompt tokens, T generated tokens, V vocabulary, nh heads, hd head size.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from plm.model.transformer import Transformer
from plm.tokenizer import CLS, EOS, PAD, STANDARD_AA_IDS, VOCAB_SIZE, decode, encode_residues


class KVCache:
    """Keys and values of every layer in tensors allocated once for ``max_len`` positions.

    Implements the Transformer's KV-cache protocol: ``update(layer, k, v)`` appends the new (B, nh, T, hd)
    keys/values of ``layer`` and returns views over everything stored so far. Allocating once (instead of
    ``torch.cat`` per step, as transformers' DynamicCache does) keeps each decode step free of copies
    that grow with the sequence. Storage is allocated on the first update so it takes the dtype the
    model actually produces (e.g. bf16 under autocast).
    """

    def __init__(self, n_layer: int, max_len: int) -> None:
        self.n_layer, self.max_len = n_layer, max_len
        self.length = 0  # positions filled in every layer
        self.k: list[Tensor] = []
        self.v: list[Tensor] = []

    @classmethod
    def for_model(cls, model: Transformer, max_len: int) -> KVCache:
        return cls(model.config.n_layer, max_len)

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        b, nh, t, hd = k.shape
        if not self.k:
            self.k = [k.new_empty(b, nh, self.max_len, hd) for _ in range(self.n_layer)]
            self.v = [v.new_empty(b, nh, self.max_len, hd) for _ in range(self.n_layer)]
        start, end = self.length, self.length + t
        if end > self.max_len:
            raise ValueError(
                f"KV cache full: {end} positions needed, allocated {self.max_len}; raise max_len"
            )
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        if layer == self.n_layer - 1:  # the last layer closes the step
            self.length = end
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]  # (B, nh, T_past + T, hd)


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick each next token. Defaults follow ProGen2's released example, ``sample.py --t 0.8 --p 0.9``
    (docs/reference.md, "Generation evaluation"); ``plm generate`` and the generation callback read them here."""

    temperature: float = 0.8
    """Divides the logits; < 1 sharpens. Ignored when greedy."""
    top_k: int = 0
    """Keep only the k most likely tokens (0 = off)."""
    top_p: float = 0.9
    """Nucleus sampling: keep the smallest set of tokens whose probability mass reaches top_p (1 = off)."""
    repetition_penalty: float = 1.0
    """CTRL-style penalty (> 1 discourages) on residues already in the sequence, prompt included."""
    min_length: int = 0
    """Residues (prompt included) before <eos> may be sampled."""
    max_length: int = 256
    """Most residues per sequence (prompt included); a sequence reaching it stops without <eos>."""
    greedy: bool = False
    """Take the arg-max instead of sampling (for tests and debugging)."""

    def __post_init__(self) -> None:
        problems = []
        if self.temperature <= 0:
            problems.append(f"temperature={self.temperature} must be > 0 (use greedy for arg-max)")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k} must be >= 0")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p={self.top_p} must be in (0, 1]")
        if self.repetition_penalty <= 0:
            problems.append(f"repetition_penalty={self.repetition_penalty} must be > 0")
        if self.max_length < 1 or self.min_length < 0 or self.min_length > self.max_length:
            problems.append(
                f"need 0 <= min_length ({self.min_length}) <= max_length ({self.max_length}) and max_length >= 1"
            )
        if problems:
            raise ValueError("invalid sampling settings: " + "; ".join(problems))


@dataclass
class Sample:
    """One generated protein; ``logprob`` sums the model's unmodified log-probabilities of the generated
    tokens (residues and the final <eos>), so ``perplexity`` is the CLM's own, not the sampler's."""

    sequence: str
    prompt: str
    stop: str  # "eos" or "length"
    logprob: float
    n_scored: int
    tokens: list[int] = field(repr=False, default_factory=list)

    @property
    def perplexity(self) -> float:
        return math.exp(-self.logprob / self.n_scored) if self.n_scored else float("nan")


def _allowed_mask(device: torch.device) -> Tensor:
    allowed = torch.zeros(VOCAB_SIZE, dtype=torch.bool, device=device)
    allowed[list(STANDARD_AA_IDS)] = True
    allowed[EOS] = True
    return allowed


def process_logits(
    logits: Tensor, seen: Tensor, n_residues: Tensor, cfg: SamplingConfig, allowed: Tensor
) -> Tensor:
    """Turn raw next-token logits (B, V) into the logits actually sampled from.

    Order as in transformers' generate: repetition penalty, length constraints, temperature, top-k, top-p.
    ``seen`` (B, V) marks tokens already in each row; ``n_residues`` (B,) counts residues so far.
    """
    logits = logits.float()
    if cfg.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    neg_inf = torch.finfo(logits.dtype).min
    logits = logits.masked_fill(~allowed, neg_inf)
    too_short = n_residues < cfg.min_length
    logits[:, EOS] = torch.where(too_short, neg_inf, logits[:, EOS])
    if cfg.greedy:
        return logits
    logits = logits / cfg.temperature
    if cfg.top_k and cfg.top_k < logits.shape[1]:
        kth = logits.topk(cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, neg_inf)
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of strictly more likely tokens
        drop_sorted = mass_before >= cfg.top_p  # the first token always survives (mass_before = 0)
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, neg_inf)
    return logits


def _next_logits(model: Transformer, tokens: Tensor, positions: Tensor, cache: KVCache | None) -> Tensor:
    hidden, _ = model.hidden(tokens, positions=positions, causal=True, kv_cache=cache)
    return model.head(hidden[:, -1]).float()  # (B, V)


@torch.inference_mode()
def sample_batch(
    model: Transformer,
    prompts: Tensor,
    cfg: SamplingConfig,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Extend equal-length prompts (B, P) — each starting with ``<cls>`` — until ``<eos>`` or ``max_length``.

    Rows stop independently: a finished row is fed ``<pad>`` and its outputs are ignored; the loop ends
    when every row is finished. ``use_cache=False`` recomputes the whole prefix every step (the
    reference the cached path is tested against).

    Returns:
        tokens (B, P + T) with ``<pad>`` after each row's end, raw log-probs (B, T) of the chosen tokens
        (0 where a row had finished), and a bool (B,) that is True where the row ended with ``<eos>``.
    """
    if prompts.dim() != 2 or not bool((prompts[:, 0] == CLS).all()):
        raise ValueError(
            f"prompts must be (B, P) token ids starting with <cls>={CLS}; got shape {tuple(prompts.shape)}"
        )
    b, p = prompts.shape
    device = prompts.device
    max_new = cfg.max_length - (p - 1)  # steps left: residues up to max_length (or an earlier <eos>)
    if max_new < 1:
        raise ValueError(
            f"prompt has {p - 1} residues; max_length={cfg.max_length} leaves nothing to generate"
        )
    n_residues = torch.full((b,), p - 1, device=device)
    allowed = _allowed_mask(device)
    seen = torch.zeros(b, VOCAB_SIZE, dtype=torch.bool, device=device).scatter_(1, prompts, True)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    ended = torch.zeros(b, dtype=torch.bool, device=device)
    out = torch.full((b, max_new), PAD, dtype=prompts.dtype, device=device)
    logps = torch.zeros(b, max_new, device=device)

    cache = KVCache.for_model(model, p + max_new) if use_cache else None
    logits = _next_logits(model, prompts, torch.arange(p, device=device).expand(b, p), cache)  # prefill
    n_steps = 0
    while True:
        processed = process_logits(logits, seen, n_residues, cfg, allowed)
        if cfg.greedy:
            nxt = processed.argmax(dim=-1)
        else:
            nxt = torch.multinomial(processed.softmax(dim=-1), 1, generator=generator).squeeze(1)
        nxt = torch.where(done, torch.full_like(nxt, PAD), nxt)
        lp = logits.log_softmax(dim=-1).gather(1, nxt[:, None]).squeeze(1)
        logps[:, n_steps] = torch.where(done, 0.0, lp)
        out[:, n_steps] = nxt
        n_steps += 1
        is_eos = (nxt == EOS) & ~done
        ended |= is_eos
        n_residues += (~done & ~is_eos).long()
        seen.scatter_(1, nxt[:, None], True)
        done |= is_eos | (n_residues >= cfg.max_length)  # a full-length row stops without <eos>
        if n_steps == max_new or bool(done.all()):
            break
        if use_cache:
            logits = _next_logits(
                model, nxt[:, None], torch.full((b, 1), p + n_steps - 1, device=device), cache
            )
        else:
            tokens = torch.cat([prompts, out[:, :n_steps]], dim=1)
            logits = _next_logits(
                model, tokens, torch.arange(tokens.shape[1], device=device).expand(b, -1), None
            )
    return torch.cat([prompts, out[:, :n_steps]], dim=1), logps[:, :n_steps], ended


def encode_prompt(prompt: str) -> list[int]:
    """``<cls>`` followed by the N-terminal residues (the ProGen2 ``1`` + prompt convention)."""
    return [CLS, *encode_residues(prompt, where="prompt").tolist()]


def generate(
    model: Transformer,
    num: int,
    cfg: SamplingConfig = SamplingConfig(),
    prompts: Iterable[str] | str = "",
    seed: int = 0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> list[Sample]:
    """Sample ``num`` proteins; reproducible for a given (seed, batch_size, prompts, device).

    ``prompts`` is one N-terminal prompt for all samples or one per sample. Samples are grouped by
    prompt length so each batch shares positions and needs no padding mask. Batch ``i`` draws from a
    ``torch.Generator`` seeded with ``seed + i``, so results never depend on global RNG state.
    """
    from tqdm.auto import tqdm

    prompt_list = [prompts] * num if isinstance(prompts, str) else list(prompts)
    if len(prompt_list) != num:
        raise ValueError(f"got {len(prompt_list)} prompts for num={num}: give one prompt or one per sample")
    encoded = [encode_prompt(p) for p in prompt_list]
    groups: dict[int, list[int]] = defaultdict(list)
    for i, ids in enumerate(encoded):
        groups[len(ids)].append(i)
    model = model.to(device).eval()
    results: list[Sample | None] = [None] * num
    bar = tqdm(total=num, desc="generate", unit="seq", disable=not progress)
    batch_no = 0
    for length in sorted(groups):
        idx = groups[length]
        for start in range(0, len(idx), batch_size):
            rows = idx[start : start + batch_size]
            gen = torch.Generator(device=device).manual_seed(seed + batch_no)
            batch_no += 1
            prompt_t = torch.tensor([encoded[i] for i in rows], device=device)
            tokens, logps, ended = sample_batch(model, prompt_t, cfg, gen)
            for r, i in enumerate(rows):
                ids = [t for t in tokens[r, 1:].tolist() if t not in (PAD, EOS)]
                n_scored = int((tokens[r, length:] != PAD).sum())
                results[i] = Sample(
                    sequence=decode(ids),
                    prompt=prompt_list[i],
                    stop="eos" if bool(ended[r]) else "length",
                    logprob=float(logps[r].sum()),
                    n_scored=n_scored,
                    tokens=tokens[r].tolist(),
                )
            bar.update(len(rows))
    bar.close()
    return [s for s in results if s is not None]
