"""The checkpoint record: one reader for exports and Lightning checkpoints, fed at save time.

The transfer tests train a tiny esm2-flavour CausalLM that switches to MLM mid-run and keep a checkpoint
from each side of the switch: every consumer must read the objective the weights were saved under.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

import plm
from plm.cli import main as plm_main
from plm.model.io import CheckpointError, load_with_record, save_pretrained
from plm.model.record import RECORD_FIELDS, RECORD_KEY, read_record
from tests.conftest import tiny_model


# ---- what is written ------------------------------------------------------------------------------
def test_export_record_round_trip(tmp_path):
    model = tiny_model("progen2", rotary_dim=6)
    save_pretrained(model, tmp_path / "w", objective="clm", step=7, tokens_seen=1234, note="kept")
    rec = read_record(tmp_path / "w")
    assert (rec.kind, rec.objective, rec.flavour, rec.step, rec.tokens_seen) == (
        "export",
        "clm",
        "progen2",
        7,
        1234,
    )
    assert rec.config == model.config and rec.objective_recorded and rec.extra == {"note": "kept"}
    loaded, same = plm.load(tmp_path / "w", with_record=True)
    assert same == rec and torch.equal(loaded.embed.weight, model.embed.weight)


def test_final_export_step_keeps_its_key(tmp_path):
    """FinalExport passes Lightning's ``global_step``; config.json has always stored it under that name."""
    save_pretrained(tiny_model(), tmp_path / "w", objective="mlm", global_step=5, tokens_seen=10)
    meta = json.loads((tmp_path / "w" / "config.json").read_text())
    assert meta["global_step"] == 5 and "step" not in meta
    assert read_record(tmp_path / "w").step == 5


def test_legacy_files_still_read(tmp_path):
    """Exports without an objective and checkpoints with the older plm_* keys: the objective is inferred
    (and flagged as such) or read from plm_objective."""
    save_pretrained(tiny_model("esm2"), tmp_path / "w")
    meta = json.loads((tmp_path / "w" / "config.json").read_text())
    del meta["objective"], meta["tokens_seen"]
    (tmp_path / "w" / "config.json").write_text(json.dumps(meta))
    rec = read_record(tmp_path / "w")
    assert rec.objective == "mlm" and not rec.objective_recorded and "inferred" in rec.describe()
    model = tiny_model("esm2")
    ckpt = {
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "plm_model_config": model.config.to_dict(),
        "plm_objective": "clm",
        "plm_tokens_seen": 99,
        "global_step": 3,
    }
    torch.save(ckpt, tmp_path / "old.ckpt")
    loaded, rec = load_with_record(tmp_path / "old.ckpt")
    assert (rec.kind, rec.objective, rec.step, rec.tokens_seen) == ("lightning", "clm", 3, 99)
    assert torch.equal(loaded.embed.weight, model.embed.weight)


# ---- errors name the file and the fix --------------------------------------------------------------
def _export(tmp_path: Path) -> Path:
    return save_pretrained(tiny_model(), tmp_path / "w", objective="mlm")


def _break_config(text: bytes):
    def apply(tmp_path: Path) -> Path:
        d = _export(tmp_path)
        (d / "config.json").write_bytes(text)
        return d

    return apply


def _hf_like(tmp_path: Path) -> Path:
    d = _export(tmp_path)
    (d / "config.json").write_text(json.dumps({"model_type": "esm", "hidden_size": 8}))
    return d


def _no_weights(tmp_path: Path) -> Path:
    d = _export(tmp_path)
    (d / "model.safetensors").unlink()
    return d


def _bad_objective(tmp_path: Path) -> Path:
    d = _export(tmp_path)
    meta = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**meta, "objective": "seq2seq"}))
    return d


def _newer_format(tmp_path: Path) -> Path:
    d = _export(tmp_path)
    meta = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**meta, "format_version": 99}))
    return d


def _truncated_ckpt(tmp_path: Path) -> Path:
    model = tiny_model()
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": model.state_dict(), RECORD_KEY: {"model": model.config.to_dict()}}, path)
    path.write_bytes(path.read_bytes()[:-300])
    return path


def _foreign_ckpt(tmp_path: Path) -> Path:
    torch.save({"state_dict": {"w": torch.zeros(1)}}, tmp_path / "other.ckpt")
    return tmp_path / "other.ckpt"


@pytest.mark.parametrize(
    "make, where, fix",
    [
        (lambda p: p / "missing", "missing", "pass a plm export directory"),
        (lambda p: p, "config.json", "point at the export directory"),
        (_break_config(b'{"model": {'), "config.json", "not valid JSON.*re-export"),
        (
            _break_config(b"\xff\xfe\x00\x81 random bytes \xc3\x28"),
            "config.json",
            "not valid JSON.*re-export",
        ),
        (_break_config(b"[1, 2]"), "config.json", "JSON list, not an object; re-export"),
        (_hf_like, "config.json", "plm convert --from hf-esm"),
        (_no_weights, "model.safetensors", "copy the whole export directory"),
        (_bad_objective, "config.json", "objective='seq2seq'.*set it to the objective"),
        (_newer_format, "config.json", "format_version=99.*upgrade plm"),
        (_truncated_ckpt, "last.ckpt", "truncated or corrupt.*earlier checkpoint"),
        (_foreign_ckpt, "other.ckpt", "not a plm checkpoint"),
    ],
    ids=[
        "missing",
        "no-config",
        "bad-json",
        "random-bytes",
        "json-list",
        "hf-dir",
        "no-weights",
        "bad-objective",
        "newer-format",
        "truncated-ckpt",
        "foreign-ckpt",
    ],
)
def test_errors_name_file_and_fix(tmp_path, make, where, fix):
    path = make(tmp_path)
    for reader in (read_record, plm.load):
        with pytest.raises(CheckpointError, match=fix) as err:
            reader(path)
        assert where in str(err.value)


# ---- the objective at save time (CLM → MLM transfer) -----------------------------------------------
@pytest.fixture(scope="module")
def transfer_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Checkpoints of an esm2-flavour CausalLM (the default CLM recipe) before and after its switch to MLM."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from plm.callbacks.transfer import CLMToMLMTransfer
    from plm.data.datamodule import ProteinDataModule
    from plm.lit import CausalLM

    root = tmp_path_factory.mktemp("transfer")
    model = CausalLM(size="tiny", total_steps=3)
    assert model.config.flavour == "esm2"
    n = model.config.n_params_non_embedding()
    every_step = ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = pl.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        callbacks=[CLMToMLMTransfer(switch_flops=6 * n * 4 * 128 * 1.5), every_step],
        default_root_dir=root,
    )
    trainer.fit(model, ProteinDataModule(row_len=128, rows_per_batch=4, val_rows=2))
    saved = {p: torch.load(p, weights_only=True)[RECORD_KEY]["objective"] for p in root.glob("*.ckpt")}
    found = {
        "clm": [p for p, o in saved.items() if o == "clm"],
        "mlm": [p for p, o in saved.items() if o == "mlm"],
    }
    assert found["clm"] and found["mlm"], saved  # the run switched between two checkpoints
    return {"clm": found["clm"][0], "mlm": found["mlm"][-1]}


def test_checkpoint_and_export_hold_the_same_record(transfer_checkpoints, tmp_path):
    ckpt = torch.load(transfer_checkpoints["mlm"], weights_only=True)
    assert tuple(ckpt[RECORD_KEY]) == RECORD_FIELDS
    assert ckpt["hyper_parameters"]["objective"] == "clm"  # what the run started as: not the answer
    rec = read_record(transfer_checkpoints["mlm"])
    assert (rec.kind, rec.objective, rec.step) == ("lightning", "mlm", ckpt["global_step"])
    assert rec.tokens_seen == ckpt[RECORD_KEY]["tokens_seen"] > 0
    model = plm.load(transfer_checkpoints["mlm"])
    save_pretrained(
        model, tmp_path / "w", objective=rec.objective, step=rec.step, tokens_seen=rec.tokens_seen
    )
    meta = json.loads((tmp_path / "w" / "config.json").read_text())
    assert {k: meta[k] for k in RECORD_FIELDS} == ckpt[RECORD_KEY]


def test_evaluate_scores_a_switched_checkpoint_as_mlm(transfer_checkpoints, tmp_path, capsys):
    """Bug: ``plm evaluate`` read the start-of-run hyper-parameters and scored the MLM as a CLM."""
    from plm.evaluation.runner import load_backbone, read_objective

    assert read_objective(transfer_checkpoints["mlm"]) == "mlm"
    assert load_backbone(transfer_checkpoints["mlm"])[1] == "mlm"
    assert load_backbone(transfer_checkpoints["clm"])[1] == "clm"
    out = tmp_path / "eval"
    assert (
        plm_main(
            [
                "evaluate",
                "--checkpoint",
                str(transfer_checkpoints["mlm"]),
                "--tasks",
                "dms_blat",
                "--out",
                str(out),
                "--small",
                "--max-test",
                "6",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "objective mlm" in capsys.readouterr().out
    assert {r["mode"] for r in csv.DictReader((out / "results.csv").open())} == {"zero_shot_mlm"}


def test_generate_refuses_a_switched_checkpoint(transfer_checkpoints, tmp_path, capsys):
    """Bug: ``plm generate`` sampled from a .ckpt without asking its objective, so an MLM was decoded as a CLM."""
    from plm.generate.cli import main as generate_main

    out = tmp_path / "s.fasta"
    assert generate_main(["--checkpoint", str(transfer_checkpoints["mlm"]), "--out", str(out)]) == 2
    assert re.search(r"step=\d+\.ckpt: an MLM checkpoint .*before the switch", capsys.readouterr().err)
    assert not out.exists()
    args = [
        "--checkpoint",
        str(transfer_checkpoints["clm"]),
        "--out",
        str(out),
        "--num",
        "2",
        "--max-length",
        "8",
    ]
    assert generate_main(args) == 0 and out.read_text().count(">sample_") == 2


def test_score_refuses_the_other_objective(transfer_checkpoints):
    from plm.generate.score import load_scorer

    with pytest.raises(CheckpointError, match="an MLM checkpoint .*--clm needs a causal LM"):
        load_scorer(str(transfer_checkpoints["mlm"]), "clm", "--clm")
    with pytest.raises(CheckpointError, match="a CLM checkpoint .*--mlm needs a masked LM"):
        load_scorer(str(transfer_checkpoints["clm"]), "mlm", "--mlm")


@pytest.mark.parametrize("side, is_decoder", [("clm", True), ("mlm", False)])
def test_convert_to_hf_follows_the_checkpoint_objective(transfer_checkpoints, tmp_path, side, is_decoder):
    """An esm2-flavour .ckpt used to be exported by flavour (always bidirectional), whatever it was."""
    from plm.model.convert import convert

    convert("plm", "hf", transfer_checkpoints[side], tmp_path / "hf", progress=False)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["is_decoder"] is is_decoder


def test_init_from_checks_the_record_before_reading_weights(tmp_path, monkeypatch):
    from plm.lit import MaskedLM
    from plm.lit import init as init_module

    save_pretrained(tiny_model("esm2", n_layer=2, n_embd=64), tmp_path / "w", objective="clm")
    monkeypatch.setattr(
        init_module, "load_with_record", lambda *a: pytest.fail("weights read before the check")
    )
    with pytest.raises(CheckpointError, match=r"n_layer: checkpoint 2 vs run 3"):
        MaskedLM(size="tiny", arch={"n_layer": 3}, init_from=str(tmp_path / "w"))
