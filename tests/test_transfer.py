import csv

import pytest
import torch

from plm.callbacks.transfer import CLMToMLMTransfer, clm_budget
from plm.data.datamodule import ProteinDataModule
from plm.lit import CausalLM, MaskedLM
from plm.model.io import CheckpointError, save_pretrained
from tests.helpers.runs import fit_tiny, quiet_trainer


def test_switch_keeps_weights_and_restarts_optimizer(tmp_path, monkeypatch):
    dm = ProteinDataModule(row_len=128, rows_per_batch=4, val_rows=2)
    model = CausalLM(size="tiny", total_steps=8)
    n = model.config.n_params_non_embedding()
    cb = CLMToMLMTransfer(switch_flops=6 * n * 3 * 4 * 128 * 0.9)  # after ~3 steps of packed rows
    seen = {}
    original = CLMToMLMTransfer.switch

    def spy(self, trainer, pl_module):
        before = {k: v.clone() for k, v in pl_module.model.state_dict().items()}
        assert trainer.optimizers[0].state  # the CLM optimizer has moments
        original(self, trainer, pl_module)
        after = pl_module.model.state_dict()
        seen["equal"] = all(torch.equal(before[k], after[k]) for k in before)
        seen["fresh_optimizer"] = not trainer.optimizers[0].state
        seen["lr"] = trainer.lr_scheduler_configs[0].scheduler.get_last_lr()[0]
        seen["step"] = trainer.global_step

    monkeypatch.setattr(CLMToMLMTransfer, "switch", spy)
    quiet_trainer(tmp_path, 8, [cb]).fit(model, dm)
    assert seen["equal"] and seen["fresh_optimizer"]
    warmup = max(1, round(0.025 * (8 - seen["step"])))
    assert seen["lr"] == pytest.approx(model.peak_lr / warmup)  # fresh warm-up from its first step
    assert model.objective == "mlm" and model.stage_start_step == seen["step"] == 3


def test_default_budget_is_the_compute_optimal_clm_budget():
    n = 85e6
    c = clm_budget(n)
    assert 1.26e-3 * c**0.578 == pytest.approx(n, rel=1e-9)
    with pytest.raises(ValueError, match="not both"):
        CLMToMLMTransfer(switch_flops=1.0, clm_share=0.1)
    with pytest.raises(ValueError, match=r"clm_share=1.5 must be in \(0, 1\)"):
        CLMToMLMTransfer(clm_share=1.5)


@pytest.mark.parametrize("size", ["tiny", "85m", "3b"])
def test_default_budget_and_the_plans_split_are_one_reading_of_the_recipe(size, monkeypatch):
    """The callback's default switch is the transfer plan's clm_flops to the last bit, because both are
    plm.scaling.recipe.transfer_switch_flops: change the recipe and both follow."""
    from types import SimpleNamespace

    from plm.model.config import config_for
    from plm.scaling import recipe

    cfg = config_for(size)
    default = CLMToMLMTransfer().budget(None, SimpleNamespace(config=cfg))
    assert (
        default
        == recipe.plan_for_size(size, "transfer").clm_flops
        == clm_budget(cfg.n_params_non_embedding())
    )
    monkeypatch.setattr(recipe, "transfer_switch_flops", lambda size, flops=None: 123.0)
    assert CLMToMLMTransfer().budget(None, SimpleNamespace(config=cfg)) == 123.0
    assert recipe.plan_for_size(size, "transfer").clm_flops == 123.0


def test_resume_inside_mlm_stage_continues_schedule_and_data(tmp_path):
    extra = tmp_path / "transfer.yaml"
    extra.write_text(
        "trainer:\n  max_steps: 8\n  callbacks:\n    - class_path: plm.callbacks.transfer.CLMToMLMTransfer\n"
        "      init_args:\n        clm_share: 0.3\n"
    )
    model = ["--model.class_path", "plm.lit.CausalLM", "--config", str(extra)]
    full = fit_tiny(tmp_path, "full", *model, "--checkpoint_every", "1", "--keep_checkpoints", "-1")
    ckpt = full / "ckpt" / "step00000005.ckpt"
    state = torch.load(ckpt, weights_only=True)
    assert state["plm_objective"] == "mlm" and 0 < state["plm_stage_start_step"] < 5
    resumed = fit_tiny(tmp_path, "resumed", *model, "--ckpt_path", str(ckpt))

    def rows(run):
        return {
            int(r["step"]): r
            for r in csv.DictReader(open(run / "csv" / "metrics.csv"))
            if r.get("train/loss")
        }

    a, b = rows(full), rows(resumed)
    assert sorted(b) == [5, 6, 7]
    for s in (5, 6, 7):
        assert a[s]["train/loss"] == b[s]["train/loss"]
        assert float(b[s]["train/objective_is_mlm"]) == 1.0
    lr_full = {
        int(r["step"]): r["lr/pg1"]
        for r in csv.DictReader(open(full / "csv" / "metrics.csv"))
        if r.get("lr/pg1")
    }
    lr_res = {
        int(r["step"]): r["lr/pg1"]
        for r in csv.DictReader(open(resumed / "csv" / "metrics.csv"))
        if r.get("lr/pg1")
    }
    assert all(lr_full[s] == lr_res[s] for s in lr_res)


def test_init_from_rejects_other_shapes_before_compute(tmp_path):
    src = CausalLM(size="tiny")
    save_pretrained(src.model, tmp_path / "clm", objective="clm")
    ok = MaskedLM(size="tiny", init_from=str(tmp_path / "clm"))
    assert all(
        torch.equal(a, b) for a, b in zip(ok.model.state_dict().values(), src.model.state_dict().values())
    )
    with pytest.raises(CheckpointError, match=r"n_layer: checkpoint 2 vs run 3"):
        MaskedLM(size="tiny", arch={"n_layer": 3}, init_from=str(tmp_path / "clm"))
    with pytest.raises(CheckpointError, match=r"flavour: checkpoint 'esm2' vs run 'progen2'"):
        MaskedLM(size="tiny", arch={"flavour": "progen2"}, init_from=str(tmp_path / "clm"))
