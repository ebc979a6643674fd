"""Held-out numbers you can trust: external eval sets validate, the MLM validation loss scores only
positions the input hides, and ``last.ckpt`` is the final step (issue 24, items 1–3)."""

import csv
import subprocess
import sys

import torch
import torch.nn.functional as F

from plm.lit.language_model import MaskedLM
from plm.lit.objectives import IGNORE
from plm.tokenizer import MASK
from tests.helpers.runs import REPO, fit_tiny

CATH = REPO / "tests/fixtures/identity/cath_s40_sample.fasta"


def _val_rows(run):
    return [r for r in csv.DictReader(open(run / "csv" / "metrics.csv")) if r.get("val/loss")]


def test_mlm_validation_scores_only_masked_inputs():
    torch.manual_seed(0)
    model = MaskedLM(size="tiny")
    tokens = torch.randint(4, 24, (2, 200))
    tokens[:, 0] = 0
    batch = {
        "tokens": tokens,
        "doc_ids": torch.zeros_like(tokens),
        "cursor_start": torch.tensor(7),
        "set": "x",
    }
    model.trainer = None
    loss, count, _ = model.scored_loss(batch, masked_only=True)
    inputs, all_labels = model.objective_inputs(batch)
    hidden, _ = model.model.hidden(inputs, batch["doc_ids"], causal=False)
    hidden_positions = (all_labels != IGNORE) & (inputs == MASK)
    expected = F.cross_entropy(
        model.model.head(hidden[hidden_positions]).float(), all_labels[hidden_positions]
    )
    assert torch.allclose(loss, expected) and int(count) == int(hidden_positions.sum())
    shown = (all_labels != IGNORE) & (inputs == all_labels)  # unchanged positions: the answer is the input
    assert shown.any() and int(count) < int((all_labels != IGNORE).sum())
    _, train_count = model.loss(batch)  # the training objective still covers every selected position
    assert int(train_count) == int((all_labels != IGNORE).sum())


def test_eval_sets_validate_in_fit_with_their_own_loss_and_baseline(tmp_path):
    run = fit_tiny(
        tmp_path,
        "eval_sets",
        "--data.eval_sets",
        f"{{cath: {CATH}}}",
        "--trainer.max_steps",
        "4",
        "--trainer.val_check_interval",
        "4",
    )
    (row,) = _val_rows(run)
    for key in (
        "val/cath/masked_loss",
        "val/cath/masked_ppl",
        "val/cath/unigram_masked_loss",
        "val/unigram_loss",
    ):
        assert row[key], key
    # the external set is reported alone, not pooled into the in-distribution val/loss
    held = [k for k in row if k.endswith("/masked_loss") and "cath" not in k]
    assert held and row["val/loss"] != row["val/cath/masked_loss"]


def test_validate_an_existing_checkpoint_on_an_eval_set(tmp_path):
    run = fit_tiny(tmp_path, "v", "--trainer.max_steps", "3", "--checkpoint_every", "10")
    ckpt = run / "ckpt" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert state["global_step"] == 3  # last.ckpt is the final step even when no step checkpoint was due
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "plm.cli",
            "validate",
            "--config",
            str(REPO / "configs/train/tiny.yaml"),
            "--run_root",
            str(tmp_path),
            "--run_name",
            "v",
            "--ckpt_path",
            str(ckpt),
            "--data.eval_sets",
            f"{{cath: {CATH}}}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert "val/cath/masked_loss" in res.stdout and "val/cath/masked_ppl" in res.stdout


def test_shipped_demo_configs_validate_on_the_bundled_cath_set_from_any_directory(tmp_path, monkeypatch):
    import yaml

    from plm.data.sources import load_eval_set

    monkeypatch.chdir(tmp_path)  # the configs name data/sample/… relative to the checkout
    for name in ("mlm", "clm", "transfer"):
        sets = yaml.safe_load((REPO / f"configs/train/{name}.yaml").read_text())["data"]["eval_sets"]
        store = load_eval_set("cath_s40", sets["cath_s40"], "skip")
        assert len(store) == 500 and store.n_residues == 77_754
