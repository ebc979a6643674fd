"""The Hugging Face export loads with the lowest transformers that pyproject.toml allows.

The slow test builds a virtual environment in a temporary directory, installs the floor transformers
(and the tokenizers / huggingface_hub it needs) there, and runs the export in a subprocess. The project's
own environment is itself a venv, so ``--system-site-packages`` would expose the base interpreter rather
than torch and numpy; a ``.pth`` file adds the project's site-packages *after* the new venv's own, which
is what ``--system-site-packages`` does for a system install: the floor packages shadow the installed ones
and everything else (torch, numpy, safetensors) is shared.
"""

from __future__ import annotations

import json
import re
import site
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import tiny_model
from tests.helpers.runs import REPO

#: The lowest transformers allowed (pyproject.toml) and what pip needs beside it to install exactly that.
FLOOR = "4.45.0"
FLOOR_PINS = (f"transformers=={FLOOR}", "tokenizers>=0.20,<0.21", "huggingface_hub>=0.23.2,<1.0")
NETWORK_ERRORS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Network is unreachable",
    "Max retries exceeded",
    "ProxyError",
)
MAX_LEN = 40
TOL = 1e-4

FLOOR_SCRIPT = """
import json, sys
import torch, transformers
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

cases = json.loads(sys.argv[1])
for case in cases:
    tok = AutoTokenizer.from_pretrained(case["dir"])
    auto = AutoModelForCausalLM if case["gptj"] else AutoModelForMaskedLM
    model = auto.from_pretrained(case["dir"]).eval()
    enc = tok(case["sequences"], truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits
    torch.save({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "logits": logits,
                "tokenizer": type(tok).__name__, "model_max_length": tok.model_max_length,
                "is_decoder": bool(model.config.is_decoder)}, case["result"])
print(json.dumps({"version": transformers.__version__, "file": transformers.__file__}))
"""


def test_floor_is_the_one_in_pyproject():
    """The slow test must test what pyproject.toml promises (``>=4.45`` means 4.45.0)."""
    floors = set(re.findall(r'"transformers>=([0-9.]+)"', (REPO / "pyproject.toml").read_text()))
    assert floors and {f"{f}.0" if f.count(".") == 1 else f for f in floors} == {FLOOR}, floors


def floor_python(root: Path) -> Path:
    """A venv whose transformers is the floor; skipped only when pip cannot reach the registry."""
    venv = root / "floor-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--no-deps",
            "--quiet",
            "--disable-pip-version-check",
            *FLOOR_PINS,
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if pip.returncode:
        output = pip.stdout + pip.stderr
        if any(marker in output for marker in NETWORK_ERRORS):
            pytest.skip(f"pip cannot reach the package registry to install {' '.join(FLOOR_PINS)}")
        pytest.fail(f"pip install {' '.join(FLOOR_PINS)} failed:\n{output[-3000:]}")
    purelib = subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
    ).strip()
    (Path(purelib) / "zz_project_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def expected_ids(seq: str) -> list[int]:
    """plm's ids, truncated the way a tokenizer truncates: residues cut, <cls> and <eos> kept."""
    from plm.tokenizer import CLS, EOS, encode

    residues = encode(seq, add_special=False)
    return [CLS, *residues[: MAX_LEN - 2], EOS]


@pytest.mark.slow
def test_export_loads_with_the_lowest_supported_transformers(tmp_path, real_sequences):
    from plm.model.convert import Converted, Report, save_hf
    from plm.tokenizer import PAD

    sequences = [real_sequences[0][:30], real_sequences[1] * 3]  # the second is longer than the model
    models, cases = {}, []
    for name, flavour, objective in (
        ("esm2_mlm", "esm2", "mlm"),
        ("esm2_clm", "esm2", "clm"),
        ("progen2_clm", "progen2", "clm"),
    ):
        model = tiny_model(
            flavour, rotary_dim=6 if flavour == "progen2" else None, max_seq_len=MAX_LEN, seed=3
        )
        save_hf(Converted(model, objective, Report("memory", "plm")), tmp_path / name, progress=False)
        models[name] = (model, objective)
        cases.append(
            {
                "dir": str(tmp_path / name),
                "gptj": flavour == "progen2",
                "sequences": sequences,
                "result": str(tmp_path / f"{name}.pt"),
            }
        )
    python = floor_python(tmp_path)
    run = subprocess.run(
        [str(python), "-c", FLOOR_SCRIPT, json.dumps(cases)],
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    info = json.loads(run.stdout.strip().splitlines()[-1])
    assert info["version"] == FLOOR and info["file"].startswith(str(tmp_path)), info
    for name, (model, objective) in models.items():
        got = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        assert got["tokenizer"] == "PreTrainedTokenizerFast" and got["model_max_length"] == MAX_LEN
        assert got["is_decoder"] is (name == "esm2_clm")
        ids = got["input_ids"]
        for row, seq in zip(ids.tolist(), sequences):
            assert [t for t in row if t != PAD] == expected_ids(seq), name
        with torch.no_grad():
            ours = model(ids, causal=objective == "clm")
        real = got["attention_mask"].bool()
        assert (got["logits"][real] - ours[real]).abs().max().item() <= TOL, name
