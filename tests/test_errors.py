"""plm.errors: expected failures print one line with exit code 2; tracebacks only under --debug / PLM_DEBUG."""

from __future__ import annotations

import argparse

import pytest

from plm.errors import EXIT_CODE, PlmError, add_debug_argument, debug_requested, one_line_errors


def _command(exc: BaseException):
    @one_line_errors("plm demo", expected=(FileNotFoundError,))
    def main(argv: list[str]) -> int:
        parser = argparse.ArgumentParser()
        add_debug_argument(parser)
        parser.parse_args(argv)
        raise exc

    return main


def test_expected_error_is_one_line_with_exit_code_2(capsys, monkeypatch):
    monkeypatch.delenv("PLM_DEBUG", raising=False)
    assert _command(FileNotFoundError("tasks/x.yaml: not found; pass --data-root"))([]) == EXIT_CODE == 2
    assert capsys.readouterr().err == "plm demo: tasks/x.yaml: not found; pass --data-root\n"
    assert _command(PlmError("bad column 'score' in t.csv"))([]) == 2
    assert capsys.readouterr().err == "plm demo: bad column 'score' in t.csv\n"


@pytest.mark.parametrize("argv, env", [(["--debug"], None), ([], "1"), ([], "yes")])
def test_debug_flag_or_env_adds_the_traceback(capsys, monkeypatch, argv, env):
    if env is None:
        monkeypatch.delenv("PLM_DEBUG", raising=False)
    else:
        monkeypatch.setenv("PLM_DEBUG", env)
    assert _command(PlmError("broken file"))(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("Traceback") and err.endswith("plm demo: broken file\n")


def test_unexpected_errors_keep_their_traceback(monkeypatch):
    monkeypatch.delenv("PLM_DEBUG", raising=False)
    with pytest.raises(KeyError):
        _command(KeyError("a bug"))([])


def test_debug_requested_reads_options_only(monkeypatch):
    monkeypatch.setenv("PLM_DEBUG", "0")
    assert not debug_requested(["--out", "x"]) and debug_requested(["--debug"])
    assert not debug_requested(["--", "--debug"])  # after '--' it is a positional argument
