"""FineTune's options for plm finetune: gradient checkpointing changes nothing but memory, class weights,
the schedule, the random-init control, and frozen mode's embedding cache."""

from __future__ import annotations

import pytest
import torch

from plm.evaluation.finetune import FineTune
from plm.evaluation.kinds import balanced_weights
from plm.evaluation.runner import pad_tokens
from plm.model.io import save_pretrained
from tests.conftest import tiny_model
from tests.helpers.toy_tasks import write_residue_task, write_toy_task

SEQS = ["MKVLAAGKRR", "MKKKKAAAAGGGWWWVIL", "ACDEFGHIKL"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("module")
    save_pretrained(tiny_model("esm2", n_layer=2, n_embd=16, n_head=2), root / "mlm", objective="mlm")
    write_toy_task(root)
    write_residue_task(root)
    return root


def _grads(module: FineTune, batch: dict) -> dict[str, torch.Tensor]:
    module.zero_grad()
    module.loss(module(batch), batch["labels"]).backward()
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_gradient_checkpointing_gives_the_same_loss_and_gradients(root, mode):
    batch = {"tokens": pad_tokens(SEQS, 10**9), "labels": torch.tensor([[0, 1, 2] * 6] * 3)}
    batch["labels"][:, 10:] = -100

    def build(checkpointing: bool) -> FineTune:
        torch.manual_seed(0)  # same head and adapter initialisation
        return FineTune(
            backbone=str(root / "mlm"),
            task=str(root / "res.yaml"),
            mode=mode,
            gradient_checkpointing=checkpointing,
        )

    plain, ckpt = _grads(build(False), batch), _grads(build(True), batch)
    assert plain.keys() == ckpt.keys() and len(plain) > 2
    for name in plain:
        torch.testing.assert_close(plain[name], ckpt[name], rtol=1e-5, atol=1e-6, msg=name)


def test_balanced_class_weights_and_their_checks(root):
    w = balanced_weights(
        "residue_classification", [torch.tensor([0, 0, 0, 1, -100]), torch.tensor([0, 2])], 3
    )
    assert w.tolist() == pytest.approx(
        [6 / (3 * 4), 6 / (3 * 1), 6 / (3 * 1)]
    )  # n / (C · count), -100 left out
    pos = balanced_weights(
        "sequence_multilabel",
        [torch.tensor([1.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 0.0])],
        2,
    )
    assert pos.tolist() == pytest.approx([1 / 2, 2 / 1])
    module = FineTune(backbone=str(root / "mlm"), task=str(root / "res.yaml"), class_weights=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"2 weights for 3 classes \['H', 'E', 'C'\]"):
        module._class_weight([torch.tensor([0, 1])])
    with pytest.raises(ValueError, match="apply to classification and multi-label tasks"):
        balanced_weights("sequence_regression", [torch.tensor(1.0)], 1)


def test_class_weights_change_the_loss_as_cross_entropy_weights(root):
    module = FineTune(backbone=str(root / "mlm"), task=str(root / "res.yaml"), seed=0)
    out, labels = torch.randn(1, 4, 3), torch.tensor([[0, 1, 1, -100]])
    module.class_weight = torch.tensor([1.0, 3.0, 1.0])
    want = torch.nn.functional.cross_entropy(out[0, :3], labels[0, :3], weight=module.class_weight)
    torch.testing.assert_close(module.loss(out, labels), want)


def test_cosine_schedule_warms_up_and_ends_at_a_tenth(root):
    module = FineTune(
        backbone=str(root / "mlm"),
        task=str(root / "toy.yaml"),
        mode="frozen",
        lr=0.01,
        schedule="cosine",
        warmup_fraction=0.1,
        total_steps=100,
    )
    sched = module.configure_optimizers()["lr_scheduler"]["scheduler"]
    factor = sched.lr_lambdas[0]
    assert (
        factor(0) == pytest.approx(0.1)
        and factor(9) == pytest.approx(1.0)
        and factor(100) == pytest.approx(0.1)
    )
    with pytest.raises(ValueError, match="needs total_steps"):
        FineTune(
            backbone=str(root / "mlm"), task=str(root / "toy.yaml"), schedule="cosine"
        ).configure_optimizers()


def test_random_init_control_keeps_the_architecture_and_draws_by_seed(root):
    trained = FineTune(backbone=str(root / "mlm"), task=str(root / "toy.yaml"))
    a = FineTune(backbone=str(root / "mlm"), task=str(root / "toy.yaml"), random_init=True, seed=1)
    b = FineTune(backbone=str(root / "mlm"), task=str(root / "toy.yaml"), random_init=True, seed=1)
    c = FineTune(backbone=str(root / "mlm"), task=str(root / "toy.yaml"), random_init=True, seed=2)
    w = lambda m: m.backbone.embed.weight
    assert w(a).shape == w(trained).shape and torch.equal(w(a), w(b)) and not torch.equal(w(a), w(c))
    assert not torch.equal(w(a), w(trained))


def test_frozen_mode_embeds_each_part_once_and_matches_a_direct_pass(root):
    from plm.evaluation.backbone import residue_features

    calls = []

    class DM:
        def sequences(self, part: str) -> list[str]:
            calls.append(part)
            return SEQS

    module = FineTune(backbone=str(root / "mlm"), task=str(root / "res.yaml"), mode="frozen")
    module._datamodule = (
        DM  # stands in for the trainer's datamodule (called, it returns an object with sequences)
    )
    batch = {"tokens": pad_tokens(SEQS[1:], 10**9), "index": torch.tensor([1, 2]), "part": "train"}
    first = module.features(batch)
    again = module.features(batch)
    assert calls == ["train"] and torch.equal(first[0], again[0])
    with torch.no_grad():
        direct, mask = residue_features(module.backbone, batch["tokens"])
    torch.testing.assert_close(first[0][mask], direct[mask], rtol=1e-5, atol=1e-6)
    assert torch.equal(first[1], mask)
