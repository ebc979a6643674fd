"""Contact prediction: the ESM attention logistic regression (or a pairwise head) fitted on training
chains, precision at L, L/2, L/5 by sequence separation on the test chains."""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from tqdm.auto import tqdm

from plm.evaluation.backbone import embed, pad_tokens
from plm.evaluation.heads import (
    AttentionContactRegression,
    PairwiseContactHead,
    attention_features,
    contact_pairs,
)
from plm.evaluation.metrics import contact_metrics
from plm.evaluation.prepared import PreparedTask, Row
from plm.evaluation.supervised import fit_head, make_batches, predict
from plm.model.transformer import Transformer

# Training residue pairs drawn per chain for the attention regression (a chain of L residues has ~L²/2),
# bounding its memory on long chains. A constant: it was read as an option no task or caller ever set.
MAX_PAIRS = 20000


@torch.no_grad()
def attention_maps(model: Transformer, seq: str, causal: bool) -> Tensor:
    """One sequence's attention maps of every layer and head, as the contact regression's features."""
    tokens = pad_tokens([seq], 10**9)
    _, maps = model.hidden(tokens.to(next(model.parameters()).device), causal=causal, need_weights=True)
    return attention_features([m.cpu() for m in maps], len(seq))


def run_contacts(
    task: PreparedTask, model: Transformer, objective: str, mode: str, progress: bool
) -> list[Row]:
    """Fit the task's contact head on the training chains and report precision on the test chains (the
    attention head reads frozen attention maps, so its rows say ``frozen`` whatever ``mode`` asked)."""
    spec, opts, train, test = task.spec, task.opts, task.train, task.test
    seed = opts.seed
    causal = objective == "clm"
    truths = [torch.as_tensor(r.contacts()).long() for r in test]
    gen = torch.Generator().manual_seed(seed)
    if spec.head == "attention":
        xs, ys = [], []
        for r in tqdm(train, desc=f"{spec.name}: train maps", disable=not progress):
            x, y = contact_pairs(
                attention_maps(model, r.sequence, causal),
                torch.as_tensor(r.contacts()).long(),
                MAX_PAIRS,
                gen,
            )
            xs.append(x)
            ys.append(y)
        n_feat = xs[0].shape[1]
        reg = AttentionContactRegression(n_feat).fit(torch.cat(xs), torch.cat(ys))
        preds = [
            reg(attention_maps(model, r.sequence, causal)).detach().numpy()
            for r in tqdm(test, desc=f"{spec.name}: test maps", disable=not progress)
        ]
        mode = "frozen"
    else:
        from plm.evaluation.finetune import FineTune

        head = PairwiseContactHead(model.config.n_embd)
        seqs = [r.sequence for r in train + test]
        if mode == "frozen":
            ex = [
                {"feats": f}
                for f in embed(model, seqs, 10**9, causal, batch_size=4, progress=progress, layer=opts.layer)
            ]
            module = FineTune(head, "contacts", None, "frozen", lr=opts.lr)
        else:
            ex = [{"seq": s} for s in seqs]
            module = FineTune(
                head,
                "contacts",
                copy.deepcopy(model),
                mode,
                lr=opts.lr,
                backbone_lr=opts.backbone_lr,
                causal=causal,
                layer=opts.layer,
            )
        for e, r in zip(ex, train + test):
            e["labels"] = torch.as_tensor(r.contacts()).long()
        bs = 2
        fit_head(
            module, make_batches(ex[: len(train)], bs, True, seed), opts.epochs, progress, opts.use_trainer
        )
        outs, _ = predict(module, make_batches(ex[len(train) :], 1, False, seed))
        preds = [o[0, : len(r.sequence), : len(r.sequence)].numpy() for o, r in zip(outs, test)]
    metrics = contact_metrics(preds, [t.numpy() for t in truths])
    return [
        {"task": spec.name, "metric": k, "value": v, "split": "test", "mode": mode, "n": len(test)}
        for k, v in metrics.items()
    ]
