"""A disk that fills up in the middle of a write, for tests of what a failed write leaves behind."""

from __future__ import annotations

import builtins
import errno
import io
import os
from typing import Any

import pytest


class _FillingFile:
    """A file that takes ``room`` more characters, then raises ENOSPC (part of the data is written)."""

    def __init__(self, fh: Any, room: int) -> None:
        self._fh, self._room = fh, room

    def write(self, data: Any) -> int:
        if len(data) > self._room:
            self._fh.write(data[: self._room])
            self._fh.flush()
            self._room = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self._room -= len(data)
        return self._fh.write(data)

    def __enter__(self) -> Any:  # itself
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()

    def __iter__(self) -> Any:
        return iter(self._fh)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def _target(file: Any) -> str:
    """The file's path, also for an open descriptor (``os.fdopen``: ``/proc/self/fd``)."""
    if isinstance(file, int):
        try:
            return os.readlink(f"/proc/self/fd/{file}")
        except OSError:
            return ""
    return os.fspath(file)


def fill_disk_on(monkeypatch: pytest.MonkeyPatch, name_part: str, room: int = 8) -> None:
    """From now on, a file opened for writing whose path contains ``name_part`` (also a temporary sibling
    of it) gets ``room`` characters written and then a full disk, whichever way it is opened: ``open``,
    ``Path.write_text`` or ``os.fdopen`` (the atomic writers)."""
    real_open = io.open

    def opener(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        fh = real_open(file, mode, *args, **kwargs)
        if any(c in mode for c in "wax+") and name_part in os.path.basename(_target(file)):
            return _FillingFile(fh, room)
        return fh

    monkeypatch.setattr(io, "open", opener)
    monkeypatch.setattr(builtins, "open", opener)
