"""The commands the README and docs/ show, and every `make help` target, work as written (issue 25).

Every ```bash / ```sh / ```console block of README.md and docs/*.md is read; each `plm …` and `make …` line is
checked against the real parsers, so docs and behaviour cannot drift apart again:

- `plm <command> …`: the command exists and its own argparse parser accepts the line as written (flags,
  choices, required arguments, positionals); the parser is the one the command builds, caught at its first
  ``parse_args`` call, so nothing runs. Arguments `plm train` passes on to `plm fit` are checked by `plm fit`.
- `plm fit|validate|test|finetune …`: LightningCLI parses the line with `--print_config` (nothing is built).
- `plm plan …` and `plm train … --dry-run` run for real (seconds); a line whose comment says it is refused
  must exit 2 with one line on stderr.
- `make <target> VAR=…`: the target exists, every variable is one the Makefile reads (or a `PLM_*`
  environment variable plm reads), and the `plm` line `make -n` prints is checked as above.
- The Python block of the README runs on a tiny export.

Commands that need data a user may not have (checkpoints, FASTA files) are checked for their arguments only;
the slow test runs them in a directory without those inputs and expects a one-line refusal, not a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.runs import REPO

DOC_FILES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(bash|sh|console)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
LIGHTNING = ("fit", "validate", "test", "finetune")
#: what a `make` line may set besides the Makefile's own variables: environment variables plm reads
PLM_ENV = (
    "PLM_DATA_ROOT",
    "PLM_DEBUG",
    "PLM_ATTENTION",
    "PLM_CPU_ATTENTION",
    "PLM_CACHE",
    "PLM_CPU_BF16",
    "PLM_REQUIRE_MMSEQS",
)
#: the repository folders commands name by relative path (configs, bundled data, task YAMLs, scripts)
REPO_DIRS = ("configs", "data", "evaluation", "scripts", "benchmarks")


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    argv: tuple[str, ...]
    comment: str

    def __str__(self) -> str:
        return f"{self.where}: {shlex.join(self.argv)}"


def _lines(text: str) -> list[tuple[int, str]]:
    """Logical lines of a block (backslash continuations joined, `$ ` prompts dropped) with their offsets."""
    out, buf, start = [], "", 0
    for i, raw in enumerate(text.splitlines()):
        line = raw.removeprefix("$ ")
        if not buf:
            start = i
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append((start, buf + line))
        buf = ""
    return out


def commands_in(path: Path) -> list[Command]:
    text = path.read_text()
    found = []
    for m in BLOCK.finditer(text):
        first = text[: m.start(2)].count("\n")
        for offset, line in _lines(m.group(2)):
            code, _, comment = _split_comment(line)
            if not code.strip():
                continue
            argv = shlex.split(code)
            while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
                argv = argv[1:]  # leading environment assignments (SIZE=1b sbatch …)
            if argv[:1] == ["torchrun"] and "plm.cli" in argv:
                argv = ["plm", *argv[argv.index("plm.cli") + 1 :]]
            if argv:
                found.append(Command(f"{path.relative_to(REPO)}:{first + offset + 1}", tuple(argv), comment))
    return found


def _split_comment(line: str) -> tuple[str, str, str]:
    """Code and comment of a shell line (a `#` inside quotes is code)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i], "#", line[i + 1 :].strip()
    return line, "", ""


ALL = [c for p in DOC_FILES for c in commands_in(p)]
PLM = [c for c in ALL if c.argv[0] == "plm"]
MAKE = [c for c in ALL if c.argv[0] == "make"]


# ---- the parsers ----------------------------------------------------------------------------------------


class _Parsed(Exception):
    def __init__(self, namespace: argparse.Namespace, extras: list[str]) -> None:
        self.namespace, self.extras = namespace, extras


@contextlib.contextmanager
def _stop_at_first_parse(monkeypatch):
    """A plain command's own parser decides; the command stops right after it, before doing anything."""
    known = argparse.ArgumentParser.parse_known_args

    def parse_args(self, args=None, namespace=None):
        ns, extras = known(self, args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        raise _Parsed(ns, [])

    def parse_known_args(self, args=None, namespace=None):
        raise _Parsed(*known(self, args, namespace))

    with monkeypatch.context() as m:
        m.setattr(argparse.ArgumentParser, "parse_args", parse_args)
        m.setattr(argparse.ArgumentParser, "parse_known_args", parse_known_args)
        yield


def _call(argv: list[str]) -> tuple[int, str, str]:
    """plm.cli.main in this process: (exit code, stdout, stderr); SystemExit counts as its code."""
    from plm.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exit_:
            rc = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    return rc, out.getvalue(), err.getvalue()


def parse_problem(argv: list[str], monkeypatch) -> str | None:
    """None when `plm <argv>` parses as written, else what its parser said."""
    from plm.cli import COMMANDS, LIGHTNING_SUBCOMMANDS

    if not argv:
        return "no command"
    command = argv[0]
    if command in LIGHTNING or command in LIGHTNING_SUBCOMMANDS:
        rc, _, err = _call([*argv, "--print_config"])
        return None if rc == 0 else (err.strip() or f"exit {rc}")
    if command not in COMMANDS:
        return f"no command {command!r}"
    if command == "data":
        from plm.data.cli import SUBCOMMANDS

        if len(argv) < 2 or argv[1] not in SUBCOMMANDS:
            return f"no data subcommand {argv[1:2]}"
    rest = list(argv)
    after = []
    if command == "train" and "--" in rest:
        i = rest.index("--")
        rest, after = rest[:i], rest[i + 1 :]
    parsed = None
    with _stop_at_first_parse(monkeypatch):
        from plm.cli import main

        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                main(rest)
        except _Parsed as p:
            parsed = p
        except SystemExit as exit_:
            return err.getvalue().strip() or f"exit {exit_.code}"
    if parsed is None:
        return "the command finished without parsing its arguments"
    extras = parsed.extras + after
    if command == "train" and extras:  # plm train hands what it does not know to plm fit
        objective = getattr(parsed.namespace, "objective", "mlm")
        return parse_problem(["fit", "--config", f"configs/train/{objective}.yaml", *extras], monkeypatch)
    return None


@pytest.fixture
def repo_like(tmp_path, monkeypatch):
    """A working directory that looks like a fresh checkout: the repo's folders, no checkpoints or outputs."""
    for name in REPO_DIRS:
        (tmp_path / name).symlink_to(REPO / name)
    (tmp_path / "data").unlink()  # commands write under data/ (data/prepared): a real folder, not the repo's
    (tmp_path / "data").mkdir()
    for child in (REPO / "data").iterdir():
        (tmp_path / "data" / child.name).symlink_to(child)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- the tests --------------------------------------------------------------------------------------------


def test_the_docs_show_commands_to_check():
    assert len(PLM) >= 30 and len(MAKE) >= 8, (len(PLM), len(MAKE))
    assert {c.argv[1] for c in PLM} >= {
        "train",
        "plan",
        "fit",
        "evaluate",
        "finetune",
        "predict",
        "generate",
        "score",
        "convert",
        "data",
        "sweep",
        "fit-laws",
    }


@pytest.mark.parametrize("cmd", [c for c in PLM if c.argv[1] not in LIGHTNING], ids=str)
def test_plain_plm_command_parses_as_written(cmd, repo_like, monkeypatch):
    problem = parse_problem(list(cmd.argv[1:]), monkeypatch)
    assert problem is None, f"{cmd}\n{problem}"


LIGHTNING_CMDS = [c for c in PLM if c.argv[1] in LIGHTNING]


def test_lightning_commands_parse_as_written(repo_like, monkeypatch):
    """One test for all of them: the first LightningCLI parse pays the imports, the rest take a second."""
    rc, _, err = _call(
        ["plan", "--flops", "1e20", "--objective", "mlm", "--write", "run.yaml"]
    )  # as the docs do
    assert rc == 0, err
    problems = [f"{c}\n  {p}" for c in LIGHTNING_CMDS if (p := parse_problem(list(c.argv[1:]), monkeypatch))]
    assert LIGHTNING_CMDS and not problems, "\n".join(problems)


#: seconds-long commands that need nothing a fresh checkout lacks (a plan from your own manifest does)
RUNNABLE = [
    c
    for c in PLM
    if (c.argv[1] == "plan" and "--manifest" not in c.argv)
    or (c.argv[1] == "train" and "--dry-run" in c.argv)
]


@pytest.mark.parametrize("cmd", RUNNABLE, ids=str)
def test_fast_commands_run(cmd, repo_like):
    rc, out, err = _call(list(cmd.argv[1:]))
    if "refused" in cmd.comment:
        assert rc == 2 and "Traceback" not in err and "refusing" in err, f"{cmd}\n{err}"
    else:
        assert rc == 0, f"{cmd}\n{err[-2000:]}"
        assert out.strip()


def _makefile_variables() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Z_]+)\s*\?=", text, re.MULTILINE)) | set(
        re.findall(r"\$\(([A-Z_]+)\)", text)
    )


def _make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), re.MULTILINE))


def _make_n(args: list[str]) -> list[list[str]]:
    """The plm command lines `make -n` would run (the prerequisites' set-up lines left out)."""
    res = subprocess.run(
        ["make", "-n", "--no-print-directory", "-o", ".venv/.installed", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    lines = []
    for line in res.stdout.replace("\\\n", " ").splitlines():  # recipe lines continued with a backslash
        words = shlex.split(line.split(" #", 1)[0]) if "/plm " in line else []
        if words and words[0].endswith("/plm") and "=" not in words[0]:
            lines.append(["plm", *words[1:]])
    return lines


def _help_targets() -> list[str]:
    res = subprocess.run(["make", "-s", "help"], cwd=REPO, capture_output=True, text=True, timeout=60)
    return re.findall(r"^  make (\S+)", res.stdout, re.MULTILINE)


def test_make_lines_name_real_targets_and_variables():
    targets, variables = _make_targets(), _makefile_variables()
    bad = []
    for cmd in MAKE:
        for word in cmd.argv[1:]:
            if "=" in word:
                name = word.split("=", 1)[0]
                if name not in variables and name not in PLM_ENV:
                    bad.append(f"{cmd}: variable {name} is not read by the Makefile")
            elif word not in targets:
                bad.append(f"{cmd}: no target {word!r}")
    assert not bad, "\n".join(bad)
    assert set(_help_targets()) <= targets and "test" in _help_targets()


def test_make_lines_and_help_targets_expand_to_plm_commands_that_parse(repo_like, monkeypatch):
    runs = [(str(c), list(c.argv[1:])) for c in MAKE]
    runs += [(f"make help: {t}", [t]) for t in _help_targets() if t not in ("help", "clean-runs")]
    problems, checked = [], 0
    for label, args in runs:
        for plm_argv in _make_n(args):
            checked += 1
            if (p := parse_problem(plm_argv[1:], monkeypatch)) is not None:
                problems.append(f"{label} → {shlex.join(plm_argv)}\n  {p}")
    assert not problems, "\n".join(problems)
    assert checked >= len(runs) // 2, "make -n printed no plm lines: the Makefile's recipes changed shape"


def test_the_checker_catches_a_made_up_flag(monkeypatch, repo_like):
    assert parse_problem(["plan", "--flops", "1e21", "--objective", "clm"], monkeypatch) is None
    assert "--no-such-flag" in parse_problem(["plan", "--flops", "1e21", "--no-such-flag"], monkeypatch)
    assert "invalid choice" in parse_problem(
        ["convert", "--from", "esm3", "--to", "plm", "a", "b"], monkeypatch
    )
    assert parse_problem(["data", "prepare-all"], monkeypatch).startswith("no data subcommand")
    assert parse_problem(["frobnicate"], monkeypatch) == "no command 'frobnicate'"
    fake = Command("x:1", ("plm", "generate", "--checkpoint", "c", "--out", "o", "--tasks", "ss3"), "")
    assert "--tasks" in parse_problem(list(fake.argv[1:]), monkeypatch)
    assert parse_problem(["train", "--size", "8m", "--", "--trainer.no_such_field", "1"], monkeypatch)
    assert "no_such_field" in parse_problem(
        ["fit", "--config", "configs/train/tiny.yaml", "--model.init_args.no_such_field", "1"], monkeypatch
    )
    assert "BOGUS" in "\n".join(_bad_make("make train BOGUS=1"))


def _bad_make(line: str) -> list[str]:
    variables = _makefile_variables()
    return [w for w in shlex.split(line)[1:] if "=" in w and w.split("=")[0] not in variables | set(PLM_ENV)]


def test_the_python_example_runs(tmp_path):
    import torch

    from plm.model.config import config_for
    from plm.model.io import save_pretrained
    from plm.model.transformer import Transformer

    export = tmp_path / "final"
    save_pretrained(Transformer(config_for("tiny"), init_seed=0), export, objective="mlm")
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert blocks
    for code in blocks:
        scope: dict = {}
        exec(compile(code.replace("checkpoints/mlm/final", str(export)), "README.md", "exec"), scope)  # noqa: S102 - the README's own code
        assert scope["logits"].shape[:2] == scope["tokens"].shape and torch.isfinite(scope["logits"]).all()


def test_fit_laws_on_the_shipped_sweep_names_keep_extrapolated(repo_like):
    rc, _, err = _call(["fit-laws", "evaluation/results/scaling/results.csv", "--bootstrap", "10"])
    assert rc == 2 and "--keep-extrapolated" in err and len(err.strip().splitlines()) == 1


#: subcommands that read inputs a fresh checkout does not have (checkpoints, your FASTA files)
NEEDS_INPUTS = ("evaluate", "predict", "generate", "score", "convert", "data", "finetune", "fit-laws")


@pytest.mark.slow
@pytest.mark.parametrize("cmd", [pytest.param(c, id=str(c)) for c in PLM if c.argv[1] in NEEDS_INPUTS])
def test_commands_without_their_inputs_fail_in_one_line(cmd, repo_like):
    rc, _, err = _call(list(cmd.argv[1:]))
    assert rc == 2, f"{cmd}: exit {rc}\n{err[-3000:]}"
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, f"{cmd}\n{err}"


if __name__ == "__main__":  # pragma: no cover - list what is checked
    for c in ALL:
        print(c)
    sys.exit(0)
