"""plm finetune: the DownstreamDataModule's splits and batches, the kept model, and exact resume after SIGKILL.

Everything runs on a toy regression task written here (60 short sequences, target = share of K) and a
one-block backbone, so a whole fine-tuning run takes seconds of compute."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from plm.cli import main as plm_main
from plm.evaluation.downstream_data import DownstreamDataModule, EpochBatches, carve_validation, collate
from plm.model.io import save_pretrained
from plm.reliability.checkpoint_io import sidecar_path
from tests.conftest import tiny_model
from tests.helpers.runs import REPO, losses, run_env
from tests.helpers.toy_tasks import write_toy_task

MAX_STEPS = 12


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    write_toy_task(root)
    save_pretrained(tiny_model("esm2", n_layer=1, n_embd=16, n_head=2), root / "backbone", objective="mlm")
    (root / "run.yaml").write_text(f"""seed_everything: 0
checkpoint_every: 1
early_stopping_patience: 0
loggers: [csv]
model:
  class_path: plm.evaluation.finetune.FineTune
  init_args: {{backbone: {root / "backbone"}, mode: lora, lora_dropout: 0.1, lr: 0.01}}
data: {{task: {root / "toy.yaml"}, data_root: {root}, batch_size: 8}}
trainer: {{accelerator: cpu, devices: 1, max_steps: {MAX_STEPS}, log_every_n_steps: 1, num_sanity_val_steps: 0,
          enable_progress_bar: false}}
""")
    return root


# ---- data ------------------------------------------------------------------------------------------------
def test_task_validation_records_are_used_and_test_is_the_tasks(toy):
    dm = DownstreamDataModule(str(toy / "toy.yaml"), data_root=str(toy), batch_size=8)
    dm.setup("fit")
    assert [len(dm.records[p]) for p in ("train", "val", "test")] == [40, 8, 12]
    assert all(r.validation for r in dm.records["val"]) and not any(r.validation for r in dm.records["train"])
    carved = DownstreamDataModule(
        str(toy / "toy.yaml"), data_root=str(toy), task_validation=False, val_fraction=0.25
    )
    carved.setup("fit")
    assert len(carved.records["train"]) + len(carved.records["val"]) == 48 and carved.records["val"]


def test_carved_validation_keeps_identical_sequences_together_and_is_seeded():
    class R:
        def __init__(self, s: str) -> None:
            self.sequence = s

    recs = [R(s) for s in ["MKV", "MKV", "AAAA", "GGG", "MKV", "PPPP", "WWW", "YYY"] * 5]
    train, val = carve_validation(recs, 0.3, seed=1)
    assert {r.sequence for r in train}.isdisjoint({r.sequence for r in val}) and train and val
    again = carve_validation(recs, 0.3, seed=1)
    assert [r.sequence for r in again[1]] == [r.sequence for r in val]
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        carve_validation(recs, 1.0, seed=1)


def test_epoch_batches_resume_where_the_consumed_count_says():
    consumed = [0]
    sampler = EpochBatches(10, 3, seed=5, consumed=lambda: consumed[0])
    assert len(sampler) == 4
    epoch0 = list(sampler)
    assert sorted(i for b in epoch0 for i in b) == list(range(10))
    consumed[0] = 4
    epoch1 = list(sampler)
    consumed[0] = 6  # two batches of epoch 1 consumed before the interruption
    assert list(sampler) == epoch1[2:] and epoch1 != epoch0


def test_collate_pads_residue_labels_with_ignore():
    batch = collate(
        "residue_classification",
        [
            {"seq": "MKV", "labels": torch.tensor([0, 1, 2]), "index": 0, "part": "train"},
            {"seq": "MK", "labels": torch.tensor([1, 1]), "index": 1, "part": "train"},
        ],
    )
    assert batch["labels"].tolist() == [[0, 1, 2], [1, 1, -100]] and batch["tokens"].shape == (2, 5)
    multi = collate(
        "residue_multilabel",
        [
            {"seq": "MKV", "labels": torch.ones(3, 2), "index": 0, "part": "val"},
            {"seq": "M", "labels": torch.zeros(1, 2), "index": 1, "part": "val"},
        ],
    )
    assert multi["labels"].shape == (2, 3, 2) and multi["labels"][1, 1:].eq(-100).all()


# ---- a run ---------------------------------------------------------------------------------------------
def _cmd(toy: Path, root: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "plm.cli",
        "finetune",
        "--config",
        str(toy / "run.yaml"),
        "--run_root",
        str(root),
        "--run_name",
        name,
        *extra,
    ]


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    assert (
        plm_main(
            ["finetune", "--config", str(toy / "run.yaml"), "--run_root", str(root), "--run_name", "ref"]
        )
        == 0
    )
    return root / "ref"


@pytest.mark.slow
def test_run_keeps_a_model_scored_on_test_and_rerun_is_refused_as_done(reference, toy, capsys):
    final = reference / "final"
    assert sorted(p.name for p in final.iterdir()) == [
        "adapter",
        "backbone",
        "finetune.json",
        "head.safetensors",
        "task.yaml",
    ]
    import json

    meta = json.loads((final / "finetune.json").read_text())
    assert meta["mode"] == "lora" and meta["kind"] == "sequence_regression" and meta["metric"] == "spearman"
    assert set(meta["metrics"]["test"]) == {"loss", "rmse", "spearman"}
    assert (
        plm_main(
            [
                "finetune",
                "--config",
                str(toy / "run.yaml"),
                "--run_root",
                str(reference.parent),
                "--run_name",
                "ref",
            ]
        )
        == 0
    )
    assert "already trained" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted_run(reference, toy, tmp_path):
    kill_after = random.randint(2, 9)  # 5 batches per epoch: often mid-epoch
    proc = subprocess.Popen(
        _cmd(toy, tmp_path, "killed"),
        cwd=REPO,
        env=run_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    target = tmp_path / "killed" / "ckpt" / f"step{kill_after:08d}.ckpt"
    deadline = time.monotonic() + 300
    while not sidecar_path(target).exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    res = subprocess.run(
        _cmd(toy, tmp_path, "killed", "--ckpt_path", "last"),
        check=False,
        cwd=REPO,
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    want, got = losses(reference), losses(tmp_path / "killed")
    resumed = [s for s in got if s >= kill_after]
    assert resumed and max(got) == MAX_STEPS - 1, f"killed after step {kill_after}"
    assert all(got[s] == want[s] for s in got), f"killed after step {kill_after}"
    a = torch.load(reference / "ckpt" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "ckpt" / "last.ckpt", weights_only=True)
    assert a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    for name in ("head.safetensors", "adapter/adapter_model.safetensors"):
        x, y = load_file(reference / "final" / name), load_file(tmp_path / "killed" / "final" / name)
        assert all(torch.equal(x[k], y[k]) for k in x), name


def test_finetune_and_predict_are_plm_commands_and_lightning_predict_is_gone(capsys):
    from plm.cli import COMMANDS, LIGHTNING_SUBCOMMANDS

    assert "predict" not in LIGHTNING_SUBCOMMANDS and COMMANDS["predict"] == "plm.predict:main"
    with pytest.raises(SystemExit) as done:
        plm_main(["finetune", "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "--early_stopping_patience" in out and "--data.task" in out
