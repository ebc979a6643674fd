"""Issue 23 item 10: inputs that used to end in a raw exception are one plm line naming the file and the
fix (exit code 2); the traceback only with --debug."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from plm.cli import main as plm_main
from plm.model.io import save_pretrained
from tests.conftest import tiny_model
from tests.helpers.runs import TINY

pytestmark = pytest.mark.reliability


def _fit(tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(TINY), "--run_root", str(tmp_path / "runs"), "--run_name", "r", *extra]


def _one_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("plm ")]
    assert lines and "Traceback" not in err, err[-2000:]
    return lines[-1]


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def _truncated(tmp_path: Path) -> Path:
    path = tmp_path / "truncated.ckpt"
    torch.save({"global_step": 3, "state_dict": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:2000])
    return path


@pytest.mark.parametrize("case", ["truncated", "random bytes", "directory", "code in the pickle"])
def test_a_bad_ckpt_path_is_one_line_naming_the_file(tmp_path, capsys, case):
    if case == "truncated":
        path = _truncated(tmp_path)
    elif case == "random bytes":
        path = tmp_path / "random.ckpt"
        path.write_bytes(os.urandom(5000))
    elif case == "directory":
        path = tmp_path / "old_run"
        (path / "ckpt").mkdir(parents=True)
        (path / "ckpt" / "last.ckpt").write_bytes(b"")
    else:
        path = tmp_path / "evil.ckpt"
        torch.save({"global_step": 1, "state_dict": {}, "x": _Evil()}, path)
    assert plm_main(_fit(tmp_path, "--ckpt_path", str(path))) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"plm fit: {path}")
    assert "weights_only" not in line  # never advise loading a file's code
    if case == "directory":
        assert "a directory, not a checkpoint" in line and str(path / "ckpt" / "last.ckpt") in line
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_debug_adds_the_traceback(tmp_path, capsys, monkeypatch):
    path = _truncated(tmp_path)
    assert plm_main([*_fit(tmp_path, "--ckpt_path", str(path)), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith(f"plm fit: {path}")
    monkeypatch.setenv("PLM_DEBUG", "1")
    assert plm_main(_fit(tmp_path, "--ckpt_path", str(path))) == 2
    assert "Traceback" in capsys.readouterr().err


def test_a_missing_data_source_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nowhere.fasta"
    assert plm_main(_fit(tmp_path, "--data.sources", f"{{x: {missing}}}", "--trainer.max_steps", "1")) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(missing) in line and "data.sources" in line


def test_generate_with_a_damaged_config_is_one_line(tmp_path, capsys):
    export = save_pretrained(tiny_model("progen2", rotary_dim=6), tmp_path / "export", objective="clm")
    (export / "config.json").write_bytes(os.urandom(300))
    assert (
        plm_main(["generate", "--checkpoint", str(export), "--num", "1", "--out", str(tmp_path / "o.fa")])
        == 2
    )
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"plm generate: {export / 'config.json'}") and "re-export" in line


def test_a_safetensors_header_declaring_100_gb_is_one_line(tmp_path, capsys):
    export = save_pretrained(tiny_model("progen2", rotary_dim=6), tmp_path / "export", objective="clm")
    weights = export / "model.safetensors"
    header = b'{"embed.weight":{"dtype":"F32","shape":[25000000000],"data_offsets":[0,100000000000]}}'
    weights.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 1000)
    assert (
        plm_main(["generate", "--checkpoint", str(export), "--num", "1", "--out", str(tmp_path / "o.fa")])
        == 2
    )
    assert _one_line(capsys.readouterr().err).startswith(f"plm generate: {weights}")


def test_a_sound_zip_that_is_no_checkpoint_is_one_line(tmp_path, capsys):
    path = tmp_path / "notes.ckpt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")
    assert plm_main(_fit(tmp_path, "--ckpt_path", str(path))) == 2
    assert _one_line(capsys.readouterr().err).startswith(f"plm fit: {path}")
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)
