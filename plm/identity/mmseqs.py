"""A thin, typed wrapper over the ``mmseqs`` executable (MMseqs2, Steinegger & Söding 2017).

MMseqs2 is the field's standard for identity search and clustering (UniRef, ColabFoldDB and the
paper's held-out sets are built with it), so plm calls the real tool instead of re-implementing it.
Only the workflows plm needs are wrapped: ``createdb``, ``easy-search``, ``easy-cluster`` and
``easy-linclust``. Every run gets its own temporary directory (removed afterwards) and its output is
streamed to a progress display and a log whose tail is shown if the run fails.

The executable is found, in order, from the ``executable`` argument, the ``PLM_MMSEQS`` environment
variable, then ``PATH``.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "PLM_MMSEQS"
INSTALL_HINT = (
    "install it with `apt-get install mmseqs2` (Debian/Ubuntu) or `conda install -c bioconda mmseqs2`, "
    f"or point {ENV_VAR}=/path/to/mmseqs (or --mmseqs) at an existing binary"
)
# Columns we ask easy-search for; ``fident`` is identity over the alignment length (MMseqs2's default
# --seq-id-mode 0), the definition UniRef and the paper's held-out bins use.
SEARCH_COLUMNS = ("query", "target", "fident", "alnlen", "evalue", "bits", "qcov", "tcov")


class MMseqsNotFoundError(FileNotFoundError):
    """No usable ``mmseqs`` executable; the message says how to install or point to one."""


class MMseqsError(RuntimeError):
    """An ``mmseqs`` run failed; the message holds the command and the tail of its log."""


@dataclass(frozen=True)
class Hit:
    """One alignment of ``query`` against ``target``; identity and coverages are fractions in [0, 1]."""

    query: str
    target: str
    identity: float
    aln_len: int
    evalue: float
    bits: float
    qcov: float
    tcov: float


def find_mmseqs(executable: str | os.PathLike | None = None) -> Path | None:
    """Return the mmseqs executable to use, or ``None`` if there is none (explicit > env > PATH)."""
    candidate = executable or os.environ.get(ENV_VAR)
    if candidate:
        path = Path(candidate)
        found = shutil.which(str(path)) if path.name == str(path) else (str(path) if path.is_file() else None)
        return Path(found) if found and os.access(found, os.X_OK) else None
    found = shutil.which("mmseqs")
    return Path(found) if found else None


def require_mmseqs(executable: str | os.PathLike | None = None) -> Path:
    """Like :func:`find_mmseqs` but raise a message naming the install command when missing."""
    path = find_mmseqs(executable)
    if path is None:
        given = executable or os.environ.get(ENV_VAR)
        where = (
            f"{given!r} (from {'--mmseqs' if executable else ENV_VAR}) is not an executable"
            if given
            else "no `mmseqs` on PATH"
        )
        raise MMseqsNotFoundError(f"MMseqs2 not found: {where}; {INSTALL_HINT}")
    return path


def read_search_tsv(path: str | os.PathLike) -> list[Hit]:
    """Parse an easy-search result written with :data:`SEARCH_COLUMNS`."""
    hits = []
    with open(path, newline="") as fh:
        for row in csv.reader(fh, delimiter="\t"):
            if not row:
                continue
            q, t, fid, alnlen, ev, bits, qcov, tcov = row
            hits.append(Hit(q, t, float(fid), int(alnlen), float(ev), float(bits), float(qcov), float(tcov)))
    return hits


@dataclass
class MMseqs:
    """Runs mmseqs workflows.

    Args:
        executable: path or name of the binary (default: ``$PLM_MMSEQS`` then ``PATH``).
        threads: ``--threads`` for every run; keep it small on shared machines.
        tmp_root: parent of the per-run temporary directories (default: the system temp dir). MMseqs2
            writes indices several times the input size there, so point it at a roomy local disk.
        sensitivity: ``-s`` for searches (1 fast … 7.5 sensitive; MMseqs2's default is 5.7).
        progress: show a live status line with the current mmseqs step.
    """

    executable: str | None = None
    threads: int = 1
    tmp_root: str | None = None
    sensitivity: float = 5.7
    progress: bool = True

    def __post_init__(self) -> None:
        if self.threads < 1:
            raise ValueError(f"threads={self.threads}: must be >= 1")
        self.path = require_mmseqs(self.executable)

    def version(self) -> str:
        return subprocess.run(
            [str(self.path), "version"], capture_output=True, text=True, check=True
        ).stdout.strip()

    @contextmanager
    def workdir(self) -> Iterator[Path]:
        """A temporary directory for one workflow, removed afterwards even on failure."""
        if self.tmp_root:
            Path(self.tmp_root).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="plm-mmseqs-", dir=self.tmp_root) as tmp:
            yield Path(tmp)

    def run(self, args: list[str], what: str) -> None:
        """Run ``mmseqs *args``, streaming its output to a status line; raise MMseqsError on failure."""
        cmd = [str(self.path), *args]
        tail: deque[str] = deque(maxlen=25)
        start = time.monotonic()
        status = None
        if self.progress:
            from rich.console import Console

            status = Console(stderr=True).status(f"mmseqs {what} …")
            status.start()
        try:
            proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
            )
            assert proc.stdout is not None
            for line in proc.stdout:
                line = line.rstrip()
                if line:
                    tail.append(line)
                    if status is not None:
                        status.update(f"mmseqs {what} [{time.monotonic() - start:.0f}s]: {line[:90]}")
            rc = proc.wait()
        finally:
            if status is not None:
                status.stop()
        if rc != 0:
            log = "\n".join(tail)
            raise MMseqsError(
                f"mmseqs {what} failed (exit {rc}): {' '.join(cmd)}\n--- last output ---\n{log}"
            )
        if self.progress:
            print(f"mmseqs {what}: done in {time.monotonic() - start:.1f}s", file=sys.stderr)

    def createdb(self, fasta: str | os.PathLike, db: str | os.PathLike) -> Path:
        """Convert a FASTA(.gz) file into an MMseqs2 sequence database at ``db``."""
        self.run(["createdb", str(fasta), str(db), "-v", "2"], f"createdb {Path(fasta).name}")
        return Path(db)

    def easy_search(
        self,
        query: str | os.PathLike,
        target: str | os.PathLike,
        out: str | os.PathLike | None = None,
        min_identity: float = 0.0,
        coverage: float = 0.0,
        cov_mode: int = 0,
        evalue: float = 1e-3,
        max_seqs: int = 300,
        exhaustive: bool = False,
    ) -> list[Hit]:
        """Search every query sequence against the targets; returns all hits passing the filters.

        ``min_identity`` filters on alignment identity (``fident``), computed from a full backtrace
        (``--alignment-mode 3``) so the value is exact rather than estimated. ``exhaustive`` skips the
        k-mer prefilter (all-vs-all alignment): slow, but misses nothing; good for independent checks.
        """
        if not 0.0 <= min_identity <= 1.0:
            raise ValueError(f"min_identity={min_identity}: must be a fraction in [0, 1]")
        with self.workdir() as tmp:
            result = Path(out) if out else tmp / "hits.tsv"
            args = [
                "easy-search",
                str(query),
                str(target),
                str(result),
                str(tmp / "tmp"),
                "--format-output",
                ",".join(SEARCH_COLUMNS),
                "--threads",
                str(self.threads),
                "-s",
                str(self.sensitivity),
                "--min-seq-id",
                str(min_identity),
                "--alignment-mode",
                "3",
                "-c",
                str(coverage),
                "--cov-mode",
                str(cov_mode),
                "-e",
                str(evalue),
                "--max-seqs",
                str(max_seqs),
                "-v",
                "2",
            ]
            if exhaustive:
                args += ["--exhaustive-search", "1"]
            self.run(args, f"easy-search {Path(query).name} vs {Path(target).name}")
            return read_search_tsv(result)

    def easy_cluster(
        self,
        fasta: str | os.PathLike,
        out_tsv: str | os.PathLike,
        min_identity: float,
        coverage: float = 0.8,
        cov_mode: int = 0,
        linclust: bool = False,
    ) -> Path:
        """Cluster ``fasta`` at ``min_identity``; writes ``representative<TAB>member`` rows to ``out_tsv``.

        ``linclust`` uses the linear-time algorithm (for hundreds of millions of sequences; slightly
        less sensitive). Coverage defaults to MMseqs2's 0.8 of both sequences, as UniRef does.
        """
        if not 0.0 < min_identity <= 1.0:
            raise ValueError(f"min_identity={min_identity}: must be a fraction in (0, 1]")
        workflow = "easy-linclust" if linclust else "easy-cluster"
        with self.workdir() as tmp:
            prefix = tmp / "clu"
            self.run(
                [
                    workflow,
                    str(fasta),
                    str(prefix),
                    str(tmp / "tmp"),
                    "--min-seq-id",
                    str(min_identity),
                    "-c",
                    str(coverage),
                    "--cov-mode",
                    str(cov_mode),
                    "--threads",
                    str(self.threads),
                    "-v",
                    "2",
                ],
                f"{workflow} {Path(fasta).name} at {min_identity:.0%}",
            )
            out_tsv = Path(out_tsv)
            out_tsv.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(prefix) + "_cluster.tsv", out_tsv)
        return out_tsv
