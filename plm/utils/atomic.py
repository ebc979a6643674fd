"""Atomic writes: one for files, one for directories, with the same guarantee everywhere.

The guarantee: a reader sees either the complete old output or the complete new one, never a mix and
never nothing; on any failure (an exception, a full disk) the temporaries are removed and the old output
is untouched. New files and directories get the permissions the umask gives (``tempfile.mkstemp`` would
make them owner-only, which a lab sharing a checkpoint folder cannot read).

Temporaries are hidden siblings named ``.<name>.tmp-<pid>-<token>``, so a crash (SIGKILL, power loss)
leaves at worst a hidden temporary, which :func:`remove_stale_temporaries` clears on the next run.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

TMP_MARK = ".tmp-"


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A fresh hidden name next to ``path`` (same filesystem, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def fsync_directory(directory: str | os.PathLike) -> None:
    """Make a rename inside ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it is flushed, fsynced and renamed
    over ``path``. ``mode`` is ``"wb"`` or ``"w"`` (text, with ``open_kwargs`` such as ``encoding``)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_file: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0o666 & ~umask, like open()
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_file(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    with atomic_file(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary sibling directory to fill; on a clean exit it replaces ``path``.

    An existing ``path`` is swapped out in one step where the OS can (Linux), else renamed aside first
    and deleted only once the new directory is in place; either way the old output is never deleted
    before the new one is complete, and a failure leaves it as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    os.mkdir(tmp, 0o777)  # 0o777 & ~umask, like mkdir
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        if not path.exists():
            os.rename(tmp, path)
        elif path.is_dir() and _exchange(tmp, path):
            shutil.rmtree(tmp, ignore_errors=True)  # now holds the old directory
        else:
            old = temporary_sibling(path)
            os.rename(path, old)
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_directory(path.parent)


def remove_stale_temporaries(directory: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Delete temporaries a crashed or killed writer left in ``directory`` (those of ``name`` only, if given).

    Only call this where no other process writes the same outputs at the same time (a run holds its
    directory; ``prepare`` holds its output directory)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    prefix = f".{name}{TMP_MARK}" if name else "."
    removed = []
    for p in directory.iterdir():
        if p.name.startswith(prefix) and TMP_MARK in p.name:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed
