"""Prediction heads on top of a backbone's residue features (B, T, h) with a residue mask (B, T).

Residue features exclude <cls>/<eos>: position t is residue t of the sequence, so labels line up.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from plm.evaluation import kinds

MIN_CONTACT_SEP = 6


def probe(n_in: int, n_out: int, kind: str = "linear", hidden: int = 256, dropout: float = 0.1) -> nn.Module:
    """A linear probe or a one-hidden-layer MLP."""
    if kind == "linear":
        return nn.Linear(n_in, n_out)
    if kind == "mlp":
        return nn.Sequential(
            nn.Linear(n_in, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_out)
        )
    raise ValueError(f"head {kind!r}: use 'linear' or 'mlp'")


class ResidueHead(nn.Module):
    """Per-residue classification (secondary structure, conservation, topology): (B, T, C) logits."""

    def __init__(self, n_embd: int, n_classes: int, kind: str = "linear") -> None:
        super().__init__()
        self.net = probe(n_embd, n_classes, kind)

    def forward(self, feats: Tensor, mask: Tensor) -> Tensor:
        return self.net(feats)


class SequenceHead(nn.Module):
    """Per-sequence regression/classification on the mean of the residue features: (B, n_out)."""

    def __init__(self, n_embd: int, n_out: int, kind: str = "linear") -> None:
        super().__init__()
        self.net = probe(n_embd, n_out, kind)

    def forward(self, feats: Tensor, mask: Tensor) -> Tensor:
        m = mask.to(feats.dtype).unsqueeze(-1)
        pooled = (feats * m).sum(1) / m.sum(1).clamp(min=1)
        return self.net(pooled)


class PairwiseContactHead(nn.Module):
    """Contact logits from embeddings: project to d, score pairs with [u_i ⊙ u_j, |u_i − u_j|] → 1.

    Symmetric by construction, so it needs no explicit symmetrisation."""

    def __init__(self, n_embd: int, dim: int = 64) -> None:
        super().__init__()
        self.proj = nn.Linear(n_embd, dim)
        self.out = nn.Linear(2 * dim, 1)

    def forward(self, feats: Tensor, mask: Tensor) -> Tensor:
        u = self.proj(feats)  # (B, T, d)
        prod = u.unsqueeze(2) * u.unsqueeze(1)
        diff = (u.unsqueeze(2) - u.unsqueeze(1)).abs()
        return self.out(torch.cat([prod, diff], -1)).squeeze(-1)  # (B, T, T)


def apc(x: Tensor) -> Tensor:
    """Average product correction over the last two dims (removes per-residue background)."""
    a1 = x.sum(-1, keepdim=True)
    a2 = x.sum(-2, keepdim=True)
    a12 = x.sum((-1, -2), keepdim=True)
    return x - a1 * a2 / a12.clamp(min=1e-8)


def attention_features(maps: list[Tensor], length: int) -> Tensor:
    """ESM contact features for one sequence: every layer's every head, <cls>/<eos> dropped,
    symmetrised (A + Aᵀ) and APC-corrected → (L, L, n_layer·n_head)."""
    att = torch.cat([m[0] for m in maps], dim=0)[:, 1 : length + 1, 1 : length + 1].float()  # (LH, L, L)
    att = apc(att + att.transpose(-1, -2))
    return att.permute(1, 2, 0)


class AttentionContactRegression(nn.Module):
    """ESM-style contact head: logistic regression over symmetrised APC-corrected attention maps."""

    def __init__(self, n_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_features, 1)

    def forward(self, features: Tensor) -> Tensor:
        return self.linear(features).squeeze(-1)

    def fit(
        self, x: Tensor, y: Tensor, l1: float = 1e-3, steps: int = 200, lr: float = 0.05
    ) -> AttentionContactRegression:
        """Fit on pair features ``x`` (N, F) and 0/1 labels ``y`` (N,) (ESM used L1-regularised logistic
        regression on 20 structures); full-batch Adam on standardised features is enough for ~100 features."""
        x, y = x.float(), y.float()
        mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad()
                logits = self.linear((x - mu) / sd).squeeze(-1)
                loss = (
                    nn.functional.binary_cross_entropy_with_logits(logits, y)
                    + l1 * self.linear.weight.abs().sum()
                )
                loss.backward()
                opt.step()
        with torch.no_grad():  # fold the standardisation into the weights
            w = self.linear.weight / sd
            self.linear.bias -= (w * mu).sum()
            self.linear.weight.copy_(w)
        return self


def fit_linear_probe(
    linear: nn.Linear, x: Tensor, y: Tensor, loss: str = "cross_entropy", c: float = 1.0, max_iter: int = 200
) -> nn.Linear:
    """Fit a linear probe to convergence on cached features: multinomial logistic regression
    (``cross_entropy``, y = class ids), ridge regression (``mse``, y = targets) or one logistic regression
    per label (``bce``, y = 0/1 rows of a multi-label task), full-batch L-BFGS.

    Why not a few epochs of Adam: a probe that stops early measures the optimiser, not the features.
    With 10 epochs of Adam the SS3 probe on a trained tiny model was still ~4 points below its optimum,
    and by a different amount than on random weights, so the comparison was noise (evaluation/results/
    downstream/README.md). The convex problem has one optimum, reached here in ~100 L-BFGS steps.
    Features are standardised with their training mean/std (folded back into the weights afterwards),
    and the L2 penalty follows scikit-learn's ``LogisticRegression(C=c)``: ||W||² / (2·c·n) on the mean
    loss, so it fades as training rows grow; the bias is not penalised."""
    x, n = x.float(), x.shape[0]
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    z = (x - mu) / sd
    target = y.long() if loss == "cross_entropy" else y.float().reshape(n, -1)
    objective = {
        "cross_entropy": nn.functional.cross_entropy,
        "mse": nn.functional.mse_loss,
        "bce": nn.functional.binary_cross_entropy_with_logits,
    }[loss]
    penalty = 1.0 / (2.0 * c * n)
    with torch.no_grad():
        linear.weight.zero_()
        linear.bias.zero_()
    opt = torch.optim.LBFGS(
        linear.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-9,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        value = objective(linear(z), target) + penalty * linear.weight.pow(2).sum()
        value.backward()
        return value

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():  # fold the standardisation into the weights: W (x - mu)/sd + b
        w = linear.weight / sd
        linear.bias -= (w * mu).sum(-1)
        linear.weight.copy_(w)
    return linear


def contact_pairs(
    features: Tensor, contacts: Tensor, max_pairs: int | None = None, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Training pairs (|i−j| ≥ 6, known truth) of one chain, optionally a random subset of ``max_pairs``."""
    i, j = torch.triu_indices(contacts.shape[0], contacts.shape[0], offset=MIN_CONTACT_SEP)
    keep = contacts[i, j] >= 0
    i, j = i[keep], j[keep]
    if max_pairs is not None and i.numel() > max_pairs:
        pick = torch.randperm(i.numel(), generator=generator)[:max_pairs]
        i, j = i[pick], j[pick]
    return features[i, j], contacts[i, j].float()


def head_for(kind: str, n_embd: int, n_out: int, head_type: str = "linear") -> nn.Module:
    """The head a task kind trains: per residue for residue kinds, on the mean residue embedding otherwise."""
    if kind not in kinds.SUPERVISED_KINDS:
        raise ValueError(
            f"kind {kind!r}: plm finetune trains {', '.join(kinds.SUPERVISED_KINDS)} tasks "
            "(zero_shot and contacts are scored by plm evaluate)"
        )
    return (ResidueHead if kind in kinds.RESIDUE_KINDS else SequenceHead)(n_embd, n_out, head_type)
