"""The model side of an evaluation: loading a backbone (trained, or the same architecture re-drawn as the
random-init baseline), tokenising sequences into padded batches, reading residue features of any layer,
and frozen residue embeddings.

Kept apart from the task logic so the CLI, the periodic-evaluation callback, ``plm predict`` and
fine-tuning all load and embed the same way.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from plm.model.transformer import Transformer
from plm.tokenizer import FIRST_RESIDUE, PAD, encode


def read_objective(path: str | Path) -> str:
    """The objective the weights were saved under (plm.model.record), never the run's start-time
    hyper-parameters: a checkpoint taken after a CLM→MLM switch holds an MLM."""
    from plm.model.record import read_record

    return read_record(path).objective


def load_backbone(
    checkpoint: str | Path, random_init: bool = False, objective: str | None = None, seed: int = 0
) -> tuple[Transformer, str]:
    """Load weights and their record; ``random_init`` keeps the architecture and re-draws the weights
    (the baseline a trained model must beat)."""
    from plm.model.io import load_with_record

    model, record = load_with_record(checkpoint)
    objective = objective or record.objective
    if random_init:
        torch.manual_seed(seed)
        model = Transformer(model.config).eval()
    return model, objective


def pad_tokens(seqs: list[str], max_len: int) -> Tensor:
    """<cls> seq <eos> rows padded with <pad>; sequences longer than ``max_len`` are cropped."""
    rows = [encode(s[:max_len], on_unknown="x") for s in seqs]
    out = torch.full((len(rows), max(map(len, rows))), PAD, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r)
    return out


def token_batches(
    sequences: list[str], max_tokens: int, device: torch.device | str = "cpu", progress: bool = False
) -> Iterator[tuple[list[int], Tensor]]:
    """(indices, padded ``<cls> seq <eos>`` tokens) of batches of at most ``max_tokens`` padded tokens,
    longest sequences first (so a budget that is too small fails on the first batch, not the last); a
    sequence longer than the budget goes alone."""
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    bar = tqdm(total=len(sequences), desc="predicting", unit="seq", disable=not progress, file=sys.stderr)
    start = 0
    while start < len(order):
        width = len(sequences[order[start]]) + 2
        n = max(1, max_tokens // width)
        idx = order[start : start + n]
        yield idx, pad_tokens([sequences[i] for i in idx], 10**9).to(device)
        bar.update(len(idx))
        start += n
    bar.close()


@torch.no_grad()
def embed(
    model: Transformer,
    seqs: list[str],
    max_len: int,
    causal: bool,
    batch_size: int = 16,
    progress: bool = True,
    desc: str = "embedding",
    layer: int = -1,
) -> list[Tensor]:
    """Residue embeddings (L, h) of ``layer`` per sequence, computed once for frozen probes (length-sorted
    batches)."""
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out: list[Tensor | None] = [None] * len(seqs)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
        idx = order[start : start + batch_size]
        feats, _ = residue_features(
            model, pad_tokens([seqs[i] for i in idx], max_len).to(device), causal, layer
        )
        for row, i in enumerate(idx):
            out[i] = feats[row, : min(len(seqs[i]), max_len)].float().cpu()
    return out  # type: ignore[return-value]


def resolve_layer(layer: int, n_layer: int) -> int:
    """ESM ``repr_layers`` numbering: 0 = token embeddings, i = residual stream after block i, ``n_layer``
    (or -1) = the last block's output after the final LayerNorm (what ``Transformer.hidden`` returns)."""
    resolved = layer + n_layer + 1 if layer < 0 else layer
    if not 0 <= resolved <= n_layer:
        raise ValueError(
            f"layer {layer}: the model has layers 0..{n_layer} (0 = embeddings, {n_layer} or -1 = final, "
            "after the final norm); set 'layer' in the task's defaults"
        )
    return resolved


def residue_features(
    backbone: Transformer, tokens: Tensor, causal: bool = False, layer: int = -1
) -> tuple[Tensor, Tensor]:
    """(B, T-2, h) features of residues only (drop <cls> and the last column) and the residue mask.

    ``tokens`` are ``<cls> seq <eos> <pad>…`` rows; residue t sits at column t+1. ``layer`` picks the
    representation (``resolve_layer``); intermediate layers are read with forward hooks on the blocks, so
    the backbone's own forward is the only code path."""
    n_layer = len(backbone.blocks)
    resolved = resolve_layer(layer, n_layer)
    captured: list[Tensor] = []
    if resolved == 0:  # the input of block 0 is the embedding (after ESM token-dropout scaling)
        hook = backbone.blocks[0].register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    elif resolved < n_layer:
        hook = backbone.blocks[resolved - 1].register_forward_hook(
            lambda m, args, out: captured.append(out[0])
        )
    try:
        hidden, _ = backbone.hidden(tokens, causal=causal)
    finally:
        if resolved < n_layer:
            hook.remove()
    if resolved < n_layer:
        hidden = captured[0]
    body = tokens[:, 1:-1]
    return hidden[:, 1:-1], body >= FIRST_RESIDUE
