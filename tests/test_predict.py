"""Kept fine-tuned models (final/) and plm predict: the kept model predicts what the trained module did,
the CSVs hold what the docs say, and bad input fails in one line before any model runs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

import plm
from plm.cli import main as plm_main
from plm.evaluation.backbone import residue_features
from plm.evaluation.finetune import FineTune
from plm.evaluation.kept import write_kept
from plm.model.io import save_pretrained
from plm.predict import token_batches
from plm.tokenizer import PAD
from tests.conftest import tiny_model
from tests.helpers.toy_tasks import write_residue_task, write_toy_task

SEQS = ["MKVLAAGKRR", "MKKKKAAAAGGGWWWVIL", "ACDEFGHIKL"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    save_pretrained(tiny_model("esm2", n_layer=2, n_embd=16, n_head=2), root / "mlm", objective="mlm")
    save_pretrained(
        tiny_model("progen2", n_layer=2, n_embd=16, n_head=2, rotary_dim=4), root / "clm", objective="clm"
    )
    write_toy_task(root)
    write_residue_task(root)
    (root / "in.fasta").write_text("".join(f">s{i} some description\n{s}\n" for i, s in enumerate(SEQS)))
    return root


def _module(root, task: str, mode: str, backbone: str = "mlm") -> FineTune:
    torch.manual_seed(0)
    module = FineTune(
        backbone=str(root / backbone), task=str(root / task), mode=mode, lora_dropout=0.0
    ).eval()
    with torch.no_grad():  # LoRA's B starts at zero: give the adapters something to carry
        for name, p in module.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return module


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize(
    ("task", "mode"), [("res.yaml", "lora"), ("toy.yaml", "full"), ("toy.yaml", "frozen")]
)
def test_kept_model_predicts_what_the_module_computes(root, tmp_path, task, mode):
    module = _module(root, task, mode)
    module.target_stats = torch.tensor([2.0, 3.0])
    write_kept(tmp_path / "final", module, step=7)
    kept = plm.load_finetuned(tmp_path / "final")
    from plm.evaluation.runner import pad_tokens

    with torch.no_grad():
        out = module({"tokens": pad_tokens(SEQS, 10**9)})
    preds = kept.predict(SEQS, max_tokens=30)
    for i, s in enumerate(SEQS):
        if module.kind == "residue_classification":
            want = out[i, : len(s)].softmax(-1).numpy()
        else:
            want = out[i, 0].numpy() * 3.0 + 2.0
        np.testing.assert_allclose(preds[i], want, rtol=1e-4, atol=1e-5)
    meta = json.loads((tmp_path / "final" / "finetune.json").read_text())
    assert meta["mode"] == mode and meta["step"] == 7 and (tmp_path / "final" / "task.yaml").is_file()
    assert (tmp_path / "final" / "adapter" / "adapter_model.safetensors").is_file() == (mode == "lora")


def test_lora_adapter_is_peft_format(root, tmp_path):
    from peft import LoraConfig
    from safetensors.torch import load_file

    write_kept(tmp_path / "final", _module(root, "res.yaml", "lora"))
    cfg = LoraConfig.from_pretrained(str(tmp_path / "final" / "adapter"))
    assert sorted(cfg.target_modules) == ["fc_in", "fc_out", "out", "qkv"] and cfg.r == 8
    keys = list(load_file(tmp_path / "final" / "adapter" / "adapter_model.safetensors"))
    assert keys and all(k.startswith("base_model.model.blocks.") and ".lora_" in k for k in keys)


def test_predict_csv_for_a_residue_model(root, tmp_path):
    write_kept(tmp_path / "final", _module(root, "res.yaml", "lora"))
    out = tmp_path / "preds.csv"
    assert (
        plm_main(
            [
                "predict",
                "--checkpoint",
                str(tmp_path / "final"),
                "--in",
                str(root / "in.fasta"),
                "--out",
                str(out),
                "--max-tokens",
                "24",
                "--no-progress",
            ]
        )
        == 0
    )
    rows = _rows(out)
    assert len(rows) == sum(map(len, SEQS))
    assert list(rows[0]) == ["id", "position", "residue", "prediction", "p_H", "p_E", "p_C"]
    first = [r for r in rows if r["id"] == "s1"]
    assert "".join(r["residue"] for r in first) == SEQS[1] and first[-1]["position"] == str(len(SEQS[1]))
    for r in rows:
        p = [float(r[c]) for c in ("p_H", "p_E", "p_C")]
        assert abs(sum(p) - 1) < 1e-4 and r["prediction"] == "HEC"[int(np.argmax(p))]


def test_predict_embeddings_and_logprobs_of_language_models(root, tmp_path):
    out = tmp_path / "emb.csv"
    assert (
        plm_main(
            [
                "predict",
                "--checkpoint",
                str(root / "mlm"),
                "--in",
                str(root / "in.fasta"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    vectors = np.load(tmp_path / "emb.npy")
    assert [r["id"] for r in _rows(out)] == ["s0", "s1", "s2"] and vectors.shape == (3, 16)
    model = plm.load(str(root / "mlm"))
    from plm.evaluation.runner import pad_tokens

    with torch.no_grad():
        feats, _ = residue_features(model, pad_tokens([SEQS[1]], 10**9))
    np.testing.assert_allclose(vectors[1], feats[0].mean(0).numpy(), rtol=1e-4, atol=1e-5)
    for flavour, causal in (("mlm", False), ("clm", True)):
        out = tmp_path / f"lp_{flavour}.csv"
        assert (
            plm_main(
                [
                    "predict",
                    "--checkpoint",
                    str(root / flavour),
                    "--in",
                    str(root / "in.fasta"),
                    "--out",
                    str(out),
                    "--what",
                    "logprobs",
                    "--no-progress",
                ]
            )
            == 0
        )
        rows = [r for r in _rows(out) if r["id"] == "s2"]
        assert len(rows) == len(SEQS[2]) and all(r["logp"] == r[f"logp_{r['residue']}"] for r in rows)
        model = plm.load(str(root / flavour))
        with torch.no_grad():
            lp = model(pad_tokens([SEQS[2]], 10**9), causal=causal).log_softmax(-1)[0]
        from plm.tokenizer import TOKENS

        t = 3  # residue 4 ("E"): the CLM reads it from the column before, the MLM from its own column
        want = lp[t if causal else t + 1, TOKENS.index(SEQS[2][t])]
        assert abs(float(rows[t]["logp"]) - float(want)) < 1e-4


def test_token_batches_keep_the_budget_and_every_sequence():
    seqs = ["A" * n for n in (5, 30, 12, 7, 7, 100)]
    seen = []
    for idx, tokens in token_batches(seqs, max_tokens=40):
        assert tokens.numel() <= 40 or len(idx) == 1
        assert all(int((tokens[r] != PAD).sum()) == len(seqs[i]) + 2 for r, i in enumerate(idx))
        seen += idx
    assert sorted(seen) == list(range(len(seqs)))


def test_bad_input_fails_in_one_line_before_the_model_runs(root, tmp_path, capsys):
    write_kept(tmp_path / "final", _module(root, "toy.yaml", "frozen"))
    base = ["predict", "--in", str(root / "in.fasta"), "--out", str(tmp_path / "o.csv"), "--no-progress"]
    cases = [
        (["--checkpoint", str(tmp_path / "final"), "--what", "embeddings"], "is a fine-tuned model"),
        (["--checkpoint", str(root / "mlm"), "--in", str(tmp_path / "missing.fasta")], "missing.fasta"),
        (["--checkpoint", str(root / "mlm"), "--out", str(tmp_path / "no" / "o.csv")], "does not exist"),
        (["--checkpoint", str(tmp_path / "nothing")], "nothing"),
    ]
    for extra, text in cases:
        assert plm_main([*base, *extra]) == 2, extra
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("plm predict: ") and text in err[-1] and "Traceback" not in "\n".join(err)
    (tmp_path / "long.fasta").write_text(">long\n" + "A" * 1100 + "\n")
    assert (
        plm_main(
            [
                "predict",
                "--checkpoint",
                str(root / "mlm"),
                "--in",
                str(tmp_path / "long.fasta"),
                "--out",
                str(tmp_path / "o.csv"),
            ]
        )
        == 2
    )
    assert "--crop" in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()
