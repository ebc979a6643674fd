"""The Hugging Face export of a LoRA fine-tune loads with transformers + peft and predicts what plm predicts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import plm
from plm.cli import main as plm_main
from plm.evaluation.finetune import FineTune
from plm.evaluation.kept import write_kept
from plm.model.io import save_pretrained
from tests.conftest import tiny_model
from tests.helpers.toy_tasks import write_residue_task, write_toy_task

SEQS = ["MKVLAAGKRR", "MKKKKAAAAGGGWWWVIL", "ACDEFGHIKL"]


@pytest.mark.slow  # transformers' import and two exports: ~45 s each on a busy 2-core machine
@pytest.mark.parametrize("task", ["res.yaml", "toy.yaml"])
def test_hf_export_with_peft_adapter_predicts_like_plm(tmp_path, task):
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    save_pretrained(tiny_model("esm2", n_layer=2, n_embd=16, n_head=2), tmp_path / "mlm", objective="mlm")
    write_toy_task(tmp_path)
    write_residue_task(tmp_path)
    torch.manual_seed(0)
    module = FineTune(backbone=str(tmp_path / "mlm"), task=str(tmp_path / task), mode="lora").eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    write_kept(tmp_path / "final", module)
    assert (
        plm_main(
            [
                "convert",
                "--from",
                "plm",
                "--to",
                "hf",
                str(tmp_path / "final"),
                str(tmp_path / "hf"),
                "--no-progress",
            ]
        )
        == 0
    )

    hf = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "hf")
    hf = peft.PeftModel.from_pretrained(hf, tmp_path / "hf" / "finetuned" / "adapter").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    head = load_file(tmp_path / "hf" / "finetuned" / "head.safetensors")
    want = plm.load_finetuned(str(tmp_path / "final")).predict(SEQS)
    for seq, expected in zip(SEQS, want):
        enc = tok(seq, return_tensors="pt")
        with torch.no_grad():
            hidden = hf.base_model.model.esm(**enc).last_hidden_state[0, 1:-1]
        if module.kind == "residue_classification":  # per residue: the head on each residue's features
            got = (hidden @ head["net.weight"].T + head["net.bias"]).softmax(-1).numpy()
        else:  # per sequence: the head on the mean over residues (target scale 0, 1 here)
            got = (hidden.mean(0) @ head["net.weight"].T + head["net.bias"]).numpy()[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # the adapter matters: without it the predictions differ
    base = transformers.EsmForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        plain = base.esm(**tok(SEQS[0], return_tensors="pt")).last_hidden_state[0, 1:-1]
        adapted = hf.base_model.model.esm(**tok(SEQS[0], return_tensors="pt")).last_hidden_state[0, 1:-1]
    assert not torch.allclose(plain, adapted, atol=1e-4)
