"""The typed batch (issue #22, "Typed hand-offs"): masks and losses are exactly those of the dict batches
it replaced, the held-out masking seed is explicit, and Lightning moves it like any collection."""

import hashlib
import itertools
import pickle
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.utilities import move_data_to_device
from lightning_utilities.core.apply_func import apply_to_collection

from plm.data.batch import SEED_MASK, Batch, as_batch, heldout_mask_seed
from plm.data.datamodule import ProteinDataModule
from plm.lit import CausalLM, MaskedLM
from tests.helpers.runs import REPO

CATH = str(REPO / "tests/fixtures/identity/cath_s40_sample.fasta")

# Computed with the dict batches (commit 047fa12, before the Batch dataclass), same data module and models
# as below: digest of tokens, of the objective's inputs and labels; training loss and count; masked-only
# validation loss and count.
PINNED = {
    "MaskedLM/train/0": [
        "c7ea9a4059d8394a",
        "fd928ae87b4516f5",
        "ca723da0db498b8b",
        3.51065,
        25,
        3.533154,
        20,
    ],
    "MaskedLM/train/1": [
        "83ab992dd4907270",
        "a82a9def80c9121c",
        "7c00f38aa17e01cb",
        3.572184,
        19,
        3.558977,
        16,
    ],
    "MaskedLM/train/2": [
        "49c9ffcb1f77215c",
        "c4538c50a93bbd20",
        "105549a2244d76f2",
        3.549393,
        19,
        3.529775,
        12,
    ],
    "MaskedLM/val/0": [
        "5a1f8576df9dfbb9",
        "7744e00af8697272",
        "6e6dcfa57ecde436",
        3.509528,
        13,
        3.502206,
        10,
    ],
    "MaskedLM/val/1": ["166b5d602205a3c7", "301b5bb530a96090", "00d78b56f973c87c", 3.467337, 14, 3.48476, 12],
    "MaskedLM/val/2": [
        "7fb9d60fb83edc4c",
        "12fe8456865b705b",
        "0676dc8863596421",
        3.468023,
        16,
        3.466904,
        14,
    ],
    "MaskedLM/val/3": [
        "688f2a660ddf2c2f",
        "02d4a5fa4a0f45be",
        "87568b3b7698cb69",
        3.513723,
        18,
        3.491509,
        15,
    ],
    "CausalLM/train/0": [
        "c7ea9a4059d8394a",
        "c7ea9a4059d8394a",
        "65aa126f22eccf6b",
        3.50606,
        126,
        3.50606,
        126,
    ],
    "CausalLM/train/1": [
        "83ab992dd4907270",
        "83ab992dd4907270",
        "84369431c83f06f9",
        3.525039,
        126,
        3.525039,
        126,
    ],
    "CausalLM/train/2": [
        "49c9ffcb1f77215c",
        "49c9ffcb1f77215c",
        "323c184066162556",
        3.529092,
        126,
        3.529092,
        126,
    ],
    "CausalLM/val/0": [
        "5a1f8576df9dfbb9",
        "5a1f8576df9dfbb9",
        "d8f64edfeef816b0",
        3.502347,
        126,
        3.502347,
        126,
    ],
    "CausalLM/val/1": [
        "166b5d602205a3c7",
        "166b5d602205a3c7",
        "9fa479e4e3b79c94",
        3.508529,
        126,
        3.508529,
        126,
    ],
    "CausalLM/val/2": [
        "7fb9d60fb83edc4c",
        "7fb9d60fb83edc4c",
        "852339cad85f8f81",
        3.508525,
        111,
        3.508525,
        111,
    ],
    "CausalLM/val/3": [
        "688f2a660ddf2c2f",
        "688f2a660ddf2c2f",
        "fd18adadad57860a",
        3.487712,
        126,
        3.487712,
        126,
    ],
}
# rank 1 of 2: its two held-out batches, then its first training batch (tokens, MLM inputs, labels, old cursor_start)
PINNED_RANK1 = [
    ["7cfaf640fcadfe46", "c028a456912f2ece", "ee67ec81fcbb8e85", -2],
    ["818ac864a0b6a135", "6e06dbc3f2e5be94", "f146684ae23b63ea", -1000005],
    ["83ab992dd4907270", "9b291e9d7c175ece", "669b1f34a10be1e8", 0],
]


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def dm():
    dm = ProteinDataModule(
        sources={"a": CATH},
        eval_sets={"b": CATH},
        val_fraction=0.3,
        row_len=64,
        rows_per_batch=2,
        val_rows=4,
        seed=5,
    )
    dm.setup()
    return dm


def test_masks_and_losses_are_those_of_the_dict_batches(dm):
    train = list(itertools.islice(iter(dm.train_dataloader()), 3))
    val = [b for loader in dm.val_dataloader() for b in loader]
    assert all(isinstance(b, Batch) for b in train + val)
    for cls in (MaskedLM, CausalLM):
        torch.manual_seed(0)
        model = cls(size="tiny", seed=11)
        for kind, batches in (("train", train), ("val", val)):
            for i, b in enumerate(batches):
                tokens, inputs, labels, loss, count, vloss, vcount = PINNED[f"{cls.__name__}/{kind}/{i}"]
                got_inputs, got_labels = model.objective_inputs(b)
                assert [_digest(b.tokens), _digest(got_inputs), _digest(got_labels)] == [
                    tokens,
                    inputs,
                    labels,
                ]
                with torch.no_grad():
                    got_loss, got_count = model.loss(b)
                    got_vloss, got_vcount, _ = model.scored_loss(b, masked_only=True)
                assert float(got_loss) == pytest.approx(loss, abs=2e-6) and int(got_count) == count
                assert float(got_vloss) == pytest.approx(vloss, abs=2e-6) and int(got_vcount) == vcount


def test_rank_batches_keep_their_masking_seeds(dm):
    dm.trainer = SimpleNamespace(global_rank=1, world_size=2)
    try:
        batches = [b for loader in dm.val_dataloader() for b in loader] + list(
            itertools.islice(iter(dm.train_dataloader()), 1)
        )
    finally:
        dm.trainer = None
    torch.manual_seed(0)
    model = MaskedLM(size="tiny", seed=11)
    for b, (tokens, inputs, labels, cursor_start) in zip(batches, PINNED_RANK1, strict=True):
        got_inputs, got_labels = model.objective_inputs(b)
        assert [_digest(b.tokens), _digest(got_inputs), _digest(got_labels)] == [tokens, inputs, labels]
        assert b.mask_seed == cursor_start & SEED_MASK and b["cursor_start"] == cursor_start


def test_heldout_seeds_are_the_old_negative_cursors_and_never_meet_training_cursors():
    for i, first_row, world, rank in [(0, 0, 1, 0), (1, 8, 2, 1), (3, 64, 8, 7)]:
        old = -(1 + i * 1_000_003 + first_row * world + rank)
        assert heldout_mask_seed(i, first_row, world, rank) == old & ((1 << 62) - 1)
    assert heldout_mask_seed(50, 10**6, 1024, 1023) > 10**15  # far above any sample cursor
    with pytest.raises(ValueError, match="mask_seed"):
        Batch(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long), 0, mask_seed=-1)


def test_dict_batches_still_work_with_the_same_masks():
    tokens = torch.randint(4, 24, (2, 50), generator=torch.Generator().manual_seed(0))
    docs = torch.zeros_like(tokens)
    model = MaskedLM(size="tiny")
    for cursor in (7, -3):
        typed = Batch(tokens, docs, n_real=100, mask_seed=cursor & SEED_MASK, set="x")
        old = {"tokens": tokens, "doc_ids": docs, "cursor_start": torch.tensor(cursor), "set": "x"}
        assert torch.equal(model.objective_inputs(typed)[1], model.objective_inputs(old)[1])
        assert as_batch(old).n_real == 100 and as_batch(typed) is typed


def test_lightning_moves_the_batch_and_keeps_its_type():
    b = Batch(
        torch.zeros(2, 8, dtype=torch.long),
        torch.zeros(2, 8, dtype=torch.long),
        n_real=16,
        mask_seed=5,
        set="train",
        cursor_end=9,
    )
    moved = move_data_to_device(b, torch.device("cpu"))
    assert isinstance(moved, Batch) and (moved.n_real, moved.mask_seed, moved.set, moved.cursor_end) == (
        16,
        5,
        "train",
        9,
    )
    cast = apply_to_collection(
        b, torch.Tensor, lambda t: t.to(torch.int32)
    )  # what a strategy's transfer does
    assert cast.tokens.dtype == torch.int32 and b.tokens.dtype == torch.long and cast.cursor_end == 9
    assert pickle.loads(pickle.dumps(b)).mask_seed == 5  # data-loader workers send batches pickled


def test_the_data_module_provides_what_the_callbacks_call(dm):
    from plm.data.protocol import TrainingData, training_data

    assert isinstance(dm, TrainingData) and dm.is_set_up
    assert not ProteinDataModule(sources={"a": CATH}).is_set_up
    assert training_data(SimpleNamespace(datamodule=dm)) is dm
    assert training_data(SimpleNamespace(datamodule=object())) is None and training_data(None) is None
    assert set(dm.heldout_names) == {"a"} and dm.planned_tokens(1) == 2 * 64
