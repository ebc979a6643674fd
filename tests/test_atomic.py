"""plm.utils.atomic: a reader sees the complete old output or the complete new one; a failure leaves the old
one and no temporaries; new files and directories get the umask's permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from plm.utils import atomic
from plm.utils.atomic import (
    TMP_MARK,
    atomic_directory,
    atomic_file,
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temporaries,
)


class Boom(Exception):
    pass


def temporaries(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if TMP_MARK in p.name)


def tree(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


@pytest.fixture
def umask():
    """Set the process umask for a test; the previous one is restored after it."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---- files -----------------------------------------------------------------------------------------------
def test_atomic_file_replaces_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "out.json"  # the parent is made
    assert atomic_write_text(target, "old") == target and target.read_text() == "old"
    with atomic_file(target, "w", encoding="utf-8") as fh:
        fh.write("new, ")
        assert target.read_text() == "old"  # nothing of the new one is visible before the end
        fh.write("complete")
    assert target.read_text() == "new, complete"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert temporaries(tmp_path) == []


@pytest.mark.parametrize("existed", [True, False])
def test_a_failed_atomic_file_leaves_the_old_file_or_none(tmp_path, existed):
    target = tmp_path / "scores.csv"
    if existed:
        target.write_text("the old table\n")
    with pytest.raises(Boom), atomic_file(target, "w") as fh:
        fh.write("half of the new")
        fh.flush()
        raise Boom
    assert (target.read_text() == "the old table\n") if existed else not target.exists()
    assert temporaries(tmp_path) == []


def test_a_failed_rename_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "summary.json"
    target.write_text("{}")

    def refuse(src, dst):
        raise OSError("rename refused")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="rename refused"):
        atomic_write_text(target, '{"new": 1}')
    assert target.read_text() == "{}" and temporaries(tmp_path) == []


def test_atomic_file_takes_only_write_modes(tmp_path):
    with pytest.raises(ValueError, match="mode must be 'w' or 'wb'"), atomic_file(tmp_path / "x", "a"):
        pass
    assert list(tmp_path.iterdir()) == []


# ---- directories -----------------------------------------------------------------------------------------
def fill(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_text(text)


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "rename-aside"])
def test_atomic_directory_replaces_an_existing_directory_completely(tmp_path, monkeypatch, exchange):
    """The new directory holds exactly what was written into it: no file of the old one survives."""
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)  # systems without RENAME_EXCHANGE
    target = tmp_path / "final"
    fill(target, {"model.safetensors": "old weights", "old_only.txt": "gone after", "sub/a.txt": "old a"})
    with atomic_directory(target) as tmp:
        assert tmp.parent == target.parent and tmp.is_dir() and list(tmp.iterdir()) == []
        fill(tmp, {"model.safetensors": "new weights", "sub/b.txt": "new b"})
        assert tree(target)["model.safetensors"] == b"old weights"  # the old one until the end
    assert tree(target) == {"model.safetensors": b"new weights", "sub/b.txt": b"new b"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["final"]  # no temporaries, no renamed-aside old one


def test_atomic_directory_makes_a_new_directory(tmp_path):
    target = tmp_path / "a" / "new"
    with atomic_directory(target) as tmp:
        fill(tmp, {"x": "1"})
    assert tree(target) == {"x": b"1"} and temporaries(tmp_path) == []


@pytest.mark.parametrize("existed", [True, False])
def test_a_failed_atomic_directory_leaves_the_old_directory_untouched(tmp_path, existed):
    target = tmp_path / "final"
    if existed:
        fill(target, {"config.json": "{}", "sub/w.bin": "old"})
    before = tree(target) if existed else None
    with pytest.raises(Boom), atomic_directory(target) as tmp:
        fill(tmp, {"config.json": '{"new": 1}'})
        raise Boom
    assert (tree(target) == before) if existed else not target.exists()
    assert temporaries(tmp_path) == []


def test_a_failed_swap_puts_the_old_directory_back(tmp_path, monkeypatch):
    """Without RENAME_EXCHANGE the old directory is renamed aside first; if the new one then cannot take its
    place, the old one is renamed back and the new one removed."""
    target = tmp_path / "final"
    fill(target, {"w": "old"})
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if (
            Path(dst) == target
            and TMP_MARK in Path(src).name
            and Path(src).joinpath("w").read_text() == "new"
        ):
            raise OSError("rename refused")
        return real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", rename)
    with pytest.raises(OSError, match="rename refused"), atomic_directory(target) as tmp:
        fill(tmp, {"w": "new"})
    assert tree(target) == {"w": b"old"} and temporaries(tmp_path) == []


# ---- permissions -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_new_files_and_directories_follow_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    """As open() and mkdir() would make them (mkstemp / mkdtemp would make them owner-only)."""
    umask(mask)
    assert mode(atomic_write_text(tmp_path / "f.txt", "x")) == file_mode
    with atomic_file(tmp_path / "g.bin") as fh:
        fh.write(b"x")
    assert mode(tmp_path / "g.bin") == file_mode
    with atomic_directory(tmp_path / "d") as tmp:
        fill(tmp, {"inner.txt": "x"})
    assert mode(tmp_path / "d") == dir_mode and mode(tmp_path / "d" / "inner.txt") == file_mode


# ---- temporaries a crash left ----------------------------------------------------------------------------
def test_remove_stale_temporaries_clears_only_temporaries(tmp_path):
    stale_file = tmp_path / f".last.ckpt{TMP_MARK}123-abcd0123"
    stale_dir = tmp_path / f".final{TMP_MARK}456-0123abcd"
    stale_file.write_text("half a checkpoint")
    fill(stale_dir, {"model.safetensors": "half"})
    kept = [tmp_path / "last.ckpt", tmp_path / ".lock", tmp_path / "final" / "config.json"]
    for p in kept:
        fill(p.parent, {p.name: "keep"})
    assert remove_stale_temporaries(tmp_path, "final") == [stale_dir]  # by name: only the final/ ones
    assert stale_file.exists() and not stale_dir.exists()
    assert remove_stale_temporaries(tmp_path) == [stale_file]
    assert all(p.exists() for p in kept) and temporaries(tmp_path) == []
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_temporaries_are_hidden_siblings(tmp_path):
    a, b = atomic.temporary_sibling(tmp_path / "x.json"), atomic.temporary_sibling(tmp_path / "x.json")
    assert a != b and a.parent == tmp_path and a.name.startswith(f".x.json{TMP_MARK}{os.getpid()}-")
