"""The whole training stack learns: a tiny model memorises a few real sequences under both objectives."""

import numpy as np
import pytest
import torch

from plm.data.packing import StreamPacker, materialize
from plm.data.sampler import MixtureSampler
from plm.data.store import TokenStore
from plm.lit import CausalLM, MaskedLM
from plm.tokenizer import encode_residues


# MLM sees 15% of positions per step, so it memorises more slowly than CLM within the same 300 steps.
@pytest.mark.parametrize("cls,threshold", [(MaskedLM, 2.75), (CausalLM, 1.5)])
def test_tiny_model_memorises_real_sequences(cls, threshold, real_sequences):
    store = TokenStore.from_arrays("s", [encode_residues(s) for s in real_sequences[:4]])
    packer = StreamPacker([store], MixtureSampler([len(store)], [1.0], seed=0), row_len=128, seed=0)
    model = cls(size="tiny", lr=3e-3, total_steps=300)
    opt_cfg = model.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    cursor, losses = 0, []
    for _ in range(300):
        rows, cursor_next = packer.plan(cursor, 4)
        packed = materialize([store], rows, 128)
        batch = {
            "tokens": torch.from_numpy(packed.tokens),
            "doc_ids": torch.from_numpy(packed.doc_ids),
            "cursor_start": torch.tensor(cursor),
        }
        cursor = cursor_next
        loss, _ = model.loss(batch)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert np.mean(losses[:5]) > 2.9
    assert np.mean(losses[-20:]) < threshold, losses[-20:]
