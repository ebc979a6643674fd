"""FineTune modes (frozen / LoRA / full), the `plm evaluate` runner and the DownstreamEval callback."""

from __future__ import annotations

import csv
import re
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from plm.cli import main as plm_main
from plm.evaluation.finetune import FineTune
from plm.evaluation.heads import ResidueHead
from plm.evaluation.runner import fit_head, make_batches
from plm.model.io import save_pretrained
from tests.conftest import tiny_model

SEQS = ["MKTAYIAKQRQISFVKSHFSRQ", "MSIQHFRVALIPFFAAF", "GSHMLEDPVDAFQ"]


def _examples(n_classes: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"seq": s, "labels": torch.randint(0, n_classes, (len(s),), generator=g)} for s in SEQS]


def _backbone_state(module: FineTune) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.backbone.state_dict().items() if "lora_" not in k}


def _changed(before: dict[str, torch.Tensor], module: FineTune) -> list[str]:
    after = module.backbone.state_dict()
    return [k for k, v in before.items() if not torch.equal(v, after[k])]


def test_lora_trains_only_adapters_and_head():
    backbone = tiny_model("esm2")
    module = FineTune(ResidueHead(48, 3), "residue_classification", backbone, "lora", lr=1e-2)
    names = module.trainable_parameter_names()
    assert names and all("lora_" in n or n.startswith("head.") for n in names)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    assert sum("blocks." in n for n in names) == 2 * 4 * 3  # A and B on qkv, out, fc_in, fc_out of 3 blocks
    before = _backbone_state(module)
    lora_b = {n: p.detach().clone() for n, p in module.named_parameters() if "lora_B" in n}
    head = {n: p.detach().clone() for n, p in module.head.named_parameters()}
    fit_head(module, make_batches(_examples(), 3, False, 0), epochs=2, progress=False, use_trainer=False)
    assert _changed(before, module) == []  # backbone weights untouched
    assert any(not torch.equal(p, lora_b[n]) for n, p in module.named_parameters() if "lora_B" in n)
    assert any(not torch.equal(p, head[n]) for n, p in module.head.named_parameters())


def test_frozen_never_updates_backbone_even_with_tokens_and_trainer():
    module = FineTune(ResidueHead(48, 3), "residue_classification", tiny_model("esm2"), "frozen", lr=1e-2)
    assert all(n.startswith("head.") for n in module.trainable_parameter_names())
    before = _backbone_state(module)
    fit_head(module, make_batches(_examples(), 3, True, 0), epochs=1, progress=False, use_trainer=True)
    assert _changed(before, module) == []


def test_full_mode_updates_backbone_and_bad_modes_fail():
    module = FineTune(
        ResidueHead(48, 3), "residue_classification", tiny_model("esm2"), "full", lr=1e-2, backbone_lr=1e-2
    )
    before = _backbone_state(module)
    fit_head(module, make_batches(_examples(), 3, False, 0), epochs=1, progress=False, use_trainer=False)
    assert len(_changed(before, module)) > 10
    with pytest.raises(ValueError, match="mode 'lora' needs a backbone"):
        FineTune(ResidueHead(48, 3), "residue_classification", None, "lora")
    with pytest.raises(ValueError, match="mode 'half'"):
        FineTune(ResidueHead(48, 3), "residue_classification", None, "half")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_export(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "tiny"
    save_pretrained(tiny_model("esm2", n_layer=2, n_embd=32), path, objective="mlm")
    return path


def _read(out):
    with open(out / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {(r["task"], r["metric"]): r for r in rows}, rows


def test_plm_evaluate_contacts_and_zero_shot_fast(tiny_export, tmp_path):
    out = tmp_path / "fast"
    assert (
        plm_main(
            [
                "evaluate",
                "--checkpoint",
                str(tiny_export),
                "--tasks",
                "contacts,dms_blat",
                "--out",
                str(out),
                "--small",
                "--max-test",
                "40",
                "--no-progress",
            ]
        )
        == 0
    )
    got, _ = _read(out)
    assert (
        0.0 <= float(got[("contacts", "P@L/5_long")]["value"]) <= 1.0
        and got[("contacts", "P@L/5_long")]["n"] == "6"
    )
    assert got[("dms_blat", "spearman")]["n"] == "40"


@pytest.mark.slow
def test_plm_evaluate_all_kinds_on_small_subsets(tiny_export, tmp_path):
    out = tmp_path / "out"
    rc = plm_main(
        [
            "evaluate",
            "--checkpoint",
            str(tiny_export),
            "--tasks",
            "ss3,gb1,dms_blat,contacts,contacts_pairwise",
            "--out",
            str(out),
            "--small",
            "--epochs",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    got, rows = _read(out)
    assert list(rows[0]) == [
        "task",
        "metric",
        "value",
        "split",
        "mode",
        "n",
        "weights",
        "step",
        "seed",
        "objective",
        "data",
        "checkpoint",
    ]
    for key in [
        ("ss3", "accuracy"),
        ("gb1", "spearman"),
        ("dms_blat", "spearman"),
        ("contacts", "P@L/5_long"),
        ("contacts_pairwise", "P@L/5_long"),
    ]:
        v = float(got[key]["value"])
        assert -1.0 <= v <= 1.0, key
    assert (
        got[("dms_blat", "spearman")]["mode"] == "zero_shot_mlm"
        and got[("dms_blat", "spearman")]["n"] == "150"
    )
    assert 0.2 < float(got[("ss3", "accuracy")]["value"])
    md = (out / "results.md").read_text()
    assert "| ss3 | accuracy |" in md and "| contacts | P@L/5_long |" in md


def test_plm_evaluate_lora_and_random_init(tiny_export, tmp_path):
    out = tmp_path / "lora"
    assert (
        plm_main(
            [
                "evaluate",
                "--checkpoint",
                str(tiny_export),
                "--tasks",
                "ss3",
                "--out",
                str(out),
                "--small",
                "--mode",
                "lora",
                "--epochs",
                "1",
                "--max-train",
                "8",
                "--max-test",
                "4",
                "--random-init",
                "--no-progress",
            ]
        )
        == 0
    )
    got, _ = _read(out)
    assert got[("ss3", "accuracy")]["mode"] == "lora"


def test_plm_evaluate_missing_full_data_names_yaml(tiny_export, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert (
        plm_main(
            [
                "evaluate",
                "--checkpoint",
                str(tiny_export),
                "--tasks",
                "gb1",
                "--out",
                str(tmp_path),
                "--data-root",
                str(tmp_path / "empty"),
            ]
        )
        == 2
    )
    assert re.match(
        r"plm evaluate: .*gb1\.yaml: data file\(s\) not found: table: .*flip_gb1", capsys.readouterr().err
    )


def test_downstream_callback_logs_metrics_every_k_steps():
    from plm.callbacks.downstream import DownstreamEval

    logged = []
    logger = SimpleNamespace(log_metrics=lambda values, step: logged.append((step, values)))
    cb = DownstreamEval(
        tasks=["ss3", "dms_blat"], every_n_steps=2, small=True, max_train=6, max_test=4, epochs=1
    )
    module = SimpleNamespace(model=tiny_model("esm2", n_layer=2, n_embd=32).train(), objective="mlm")
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    for step in (1, 2, 3):
        cb.on_train_batch_end(SimpleNamespace(global_step=step, loggers=[logger]), module, None, None, 0)
    assert [s for s, _ in logged] == [2]
    assert {"downstream/ss3/accuracy", "downstream/dms_blat/spearman"} <= set(logged[0][1])
    assert module.model.training  # train mode restored
    assert all(torch.equal(v, module.model.state_dict()[k]) for k, v in before.items())
    cb.on_train_end(SimpleNamespace(global_step=3, loggers=[logger]), module)
    assert [s for s, _ in logged] == [2, 3]


# ---- representation layer and the converged linear probe ----------------------------------------------------
def test_residue_features_layers_follow_esm_numbering():
    from plm.evaluation.backbone import residue_features
    from plm.evaluation.runner import pad_tokens
    from plm.tokenizer import FIRST_RESIDUE, PAD

    model = tiny_model("esm2", n_layer=3, n_embd=32).eval()
    tokens = pad_tokens(SEQS, 100)
    with torch.no_grad():
        final, mask = residue_features(model, tokens)
        assert torch.equal(residue_features(model, tokens, layer=3)[0], final)
        hidden, _ = model.hidden(tokens)
        assert torch.equal(final, hidden[:, 1:-1]) and torch.equal(mask, tokens[:, 1:-1] >= FIRST_RESIDUE)
        doc = (tokens == PAD).long()
        x = model.embed_tokens(tokens, doc)
        assert torch.allclose(residue_features(model, tokens, layer=0)[0], x[:, 1:-1])
        captured = []
        h = model.blocks[1].register_forward_hook(lambda m, a, out: captured.append(out[0]))
        model.hidden(tokens)
        h.remove()
        assert torch.equal(residue_features(model, tokens, layer=2)[0], captured[0][:, 1:-1])
        assert torch.equal(residue_features(model, tokens, layer=-2)[0], captured[0][:, 1:-1])
        assert not torch.allclose(residue_features(model, tokens, layer=2)[0], final)
    assert all(not b._forward_hooks and not b._forward_pre_hooks for b in model.blocks)  # hooks removed
    with pytest.raises(
        ValueError, match=r"layer 4: the model has layers 0\.\.3 .*set 'layer' in the task's defaults"
    ):
        residue_features(model, tokens, layer=4)


def test_linear_probe_converges_on_badly_scaled_features():
    """Features with a large offset and a tiny scale (as a LayerNorm bias or a residual stream gives):
    the standardised L-BFGS fit finds the separating direction; raw predictions use the folded weights."""
    from plm.evaluation.heads import fit_linear_probe

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 8, generator=g) * 1e-3 + 5.0
    y = ((x[:, 0] - 5.0) + 0.3 * (x[:, 1] - 5.0) > 0).long()  # linearly separable, off-axis
    lin = fit_linear_probe(nn.Linear(8, 2), x, y, "cross_entropy")
    assert (lin(x).argmax(-1) == y).float().mean() > 0.98
    # ridge with a weak penalty = least squares
    t = x @ torch.arange(1.0, 9.0) + 0.5
    reg = fit_linear_probe(nn.Linear(8, 1), x, t, "mse", c=1e6)
    assert torch.allclose(reg(x).squeeze(-1), t, atol=1e-3 * t.std())


def test_frozen_linear_probe_reads_the_chosen_layer(tiny_export):
    from plm.evaluation.runner import load_backbone, run_task
    from plm.evaluation.tasks import load_task

    model, objective = load_backbone(tiny_export)
    spec = load_task("ss3")
    rows = {
        layer: {
            r["metric"]: r
            for r in run_task(
                spec,
                model,
                objective,
                small=True,
                progress=False,
                overrides={"layer": layer, "max_train": 20, "max_test": 10},
            )
        }
        for layer in (0, -1)
    }
    assert rows[0]["accuracy"]["n"] == rows[-1]["accuracy"]["n"] > 500
    assert rows[0]["accuracy"]["value"] != rows[-1]["accuracy"]["value"]
    assert 0.3 < rows[-1]["accuracy"]["value"] < 1.0
