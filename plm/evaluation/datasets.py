"""Readers for the four task data formats a YAML can name.

Each reader returns plain records (sequence + labels + split) and gathers every problem it finds into
one error that names the file and the offending records, because benchmark files are usually edited by
hand and a user should fix them all in one go rather than one per run.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IGNORE = -100
MAX_LISTED = 5  # problems named in one error message


@dataclass
class ResidueRecord:
    """One sequence with an integer class per residue (``IGNORE`` where unscored)."""

    id: str
    sequence: str
    labels: np.ndarray
    split: str = ""


@dataclass
class SequenceRecord:
    """One sequence with one target (float for regression, class index for classification)."""

    id: str
    sequence: str
    target: float
    split: str = ""


@dataclass
class StructureRecord:
    """A chain's observed sequence and Cβ coordinates (NaN where missing); contacts derive from these."""

    id: str
    sequence: str
    cb: np.ndarray  # (L, 3) float32
    split: str = ""
    meta: dict = field(default_factory=dict)

    def distances(self) -> np.ndarray:
        diff = self.cb[:, None, :] - self.cb[None, :, :]
        return np.sqrt((diff**2).sum(-1))

    def contacts(self, threshold: float = 8.0) -> np.ndarray:
        """(L, L) int8: 1 contact, 0 not, -1 unknown (missing coordinates)."""
        d = self.distances()
        out = (d < threshold).astype(np.int8)
        out[np.isnan(d)] = -1
        return out


def _problem_error(path: Path, what: str, problems: list[str], fix: str) -> ValueError:
    shown = "; ".join(problems[:MAX_LISTED])
    more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    return ValueError(f"{path}: {len(problems)} {what}: {shown}{more}. {fix}")


def open_text(path: str | Path) -> io.TextIOBase:
    """Open plain, .gz or single-member .zip text files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (check the task YAML's data paths and --data-root)")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8")
    if path.suffix == ".zip":
        zf = zipfile.ZipFile(path)
        members = [n for n in zf.namelist() if not n.endswith("/")]
        return io.TextIOWrapper(zf.open(members[0]), encoding="utf-8")
    return open(path, encoding="utf-8")


def iter_fasta_text(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """(id, description, sequence string) for each record; labels/masks are not residues, so this does
    not go through the tokenizer like ``plm.data.fasta.read_fasta``."""
    rid, desc, chunks = None, "", []
    with open_text(path) as fh:
        for line in fh:
            line = line.strip()
            if line.startswith(">"):
                if rid is not None:
                    yield rid, desc, "".join(chunks)
                desc = line[1:]
                rid, chunks = (desc.split() or [""])[0], []
            elif line:
                chunks.append(line)
    if rid is not None:
        yield rid, desc, "".join(chunks)


def header_fields(description: str) -> dict[str, str]:
    """``KEY=value`` tokens of a FASTA header (FLIP writes ``SET=train VALIDATION=False``)."""
    return dict(tok.split("=", 1) for tok in description.split()[1:] if "=" in tok)


def read_residue_fasta(
    sequences: str | Path,
    labels: str | Path,
    classes: list[str],
    mask: str | Path | None = None,
    split_field: str = "SET",
    max_len: int | None = None,
) -> list[ResidueRecord]:
    """FLIP-style per-residue labels: sequences, labels and an optional 0/1 mask in three FASTA files
    sharing record ids. The split comes from ``split_field=`` in the label header."""
    seqs = {rid: s for rid, _, s in iter_fasta_text(sequences)}
    masks = {rid: m for rid, _, m in iter_fasta_text(mask)} if mask else {}
    lookup = {c: i for i, c in enumerate(classes)}
    records, problems = [], []
    for rid, desc, lab in iter_fasta_text(labels):
        seq = seqs.get(rid)
        if seq is None:
            problems.append(f"record {rid!r} has labels but no sequence in {sequences}")
            continue
        if len(lab) != len(seq):
            problems.append(f"record {rid!r}: {len(lab)} labels for a {len(seq)}-residue sequence")
            continue
        bad = sorted(set(lab) - set(lookup))
        if bad:
            problems.append(f"record {rid!r}: labels {bad} not in classes {classes}")
            continue
        y = np.array([lookup[c] for c in lab], dtype=np.int64)
        if mask:
            m = masks.get(rid)
            if m is None or len(m) != len(seq):
                problems.append(f"record {rid!r}: mask missing or of length {len(m or '')} != {len(seq)} in {mask}")
                continue
            y[np.frombuffer(m.encode(), dtype=np.uint8) != ord("1")] = IGNORE
        if max_len:
            seq, y = seq[:max_len], y[:max_len]
        records.append(ResidueRecord(rid, seq, y, header_fields(desc).get(split_field, "")))
    if problems:
        raise _problem_error(Path(labels), "bad label records", problems,
                             "Labels, sequences and mask must share ids and have one character per residue.")
    if not records:
        raise ValueError(f"{labels}: no label records found (is it a FASTA file?)")
    return records


def read_csv_rows(path: str | Path, required: list[str]) -> list[dict[str, str]]:
    """All rows of a CSV, after checking the required columns exist (named in the error if not)."""
    with open_text(path) as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        missing = [c for c in required if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; the file has {columns}. "
                             "Fix the column names in the task YAML.")
        return list(reader)


def read_sequence_csv(
    path: str | Path,
    sequence_column: str = "sequence",
    target_column: str = "target",
    split_column: str | None = "set",
    classes: list[str] | None = None,
    max_len: int | None = None,
) -> list[SequenceRecord]:
    """A sequence/target table (FLIP format). With ``classes`` the target is a class name."""
    rows = read_csv_rows(path, [sequence_column, target_column] + ([split_column] if split_column else []))
    records, problems = [], []
    lookup = {c: i for i, c in enumerate(classes or [])}
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        raw = row[target_column]
        try:
            target = float(lookup[raw]) if classes else float(raw)
        except (KeyError, ValueError):
            problems.append(f"line {i}: target {raw!r} is not " + (f"one of {classes}" if classes else "a number"))
            continue
        seq = row[sequence_column].strip()
        if not seq:
            problems.append(f"line {i}: empty sequence")
            continue
        records.append(SequenceRecord(f"line{i}", seq[:max_len] if max_len else seq, target,
                                      row[split_column] if split_column else ""))
    if problems:
        raise _problem_error(Path(path), "bad rows", problems, f"Check column {target_column!r}.")
    return records


def read_wildtype(path: str | Path, record_id: str) -> str:
    for rid, _, seq in iter_fasta_text(path):
        if rid == record_id:
            return seq
    raise ValueError(f"{path}: no wild-type record {record_id!r}")


@dataclass
class Variant:
    mutant: str
    score: float


def read_dms_csv(path: str | Path, mutant_column: str = "mutant", score_column: str = "DMS_score") -> list[Variant]:
    """DMS table: one mutation string (``A24G:K30R``) and one measured score per row; rows without a
    score (blank/NaN) are dropped because DMS tables mark missing measurements that way."""
    rows = read_csv_rows(path, [mutant_column, score_column])
    out = []
    for row in rows:
        raw = (row[score_column] or "").strip()
        if raw.lower() in ("", "nan", "na"):
            continue
        out.append(Variant(row[mutant_column].strip(), float(raw)))
    if not out:
        raise ValueError(f"{path}: no rows with a score in column {score_column!r}")
    return out


def virtual_cb(n: np.ndarray, ca: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Ideal Cβ from backbone atoms (trRosetta/ESM formula), used for glycine and missing Cβ."""
    b, cc = ca - n, c - ca
    a = np.cross(b, cc)
    return -0.58273431 * a + 0.56802827 * b - 0.54067466 * cc + ca


def read_structure(path: str | Path, chain: str | None = None) -> StructureRecord:
    """A chain from a PDB / mmCIF / BinaryCIF file (biotite) or a prepared ``.npz`` (keys seq, CB).

    Model 1, standard amino acids (MSE read as M); residues without N/CA/C are skipped; Gly and
    residues without Cβ get the virtual Cβ."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such structure file")
    if path.suffix == ".npz":
        data = np.load(path)
        return StructureRecord(path.stem, str(data["seq"]), data["CB"].astype(np.float32))
    import biotite.structure as struc
    import biotite.structure.io as strucio
    from biotite.sequence import ProteinSequence

    name = path.name
    if name.endswith(".gz"):
        import tempfile

        with gzip.open(path, "rb") as fh, tempfile.TemporaryDirectory() as tmp:
            inner = Path(tmp) / name[:-3]
            inner.write_bytes(fh.read())
            atoms = strucio.load_structure(inner, model=1)
    else:
        atoms = strucio.load_structure(path, model=1)
    atoms = atoms[struc.filter_amino_acids(atoms) & ~atoms.hetero | (atoms.res_name == "MSE")]
    chains = list(dict.fromkeys(atoms.chain_id.tolist()))
    if not chains:
        raise ValueError(f"{path}: no protein chain found")
    chain = chain or chains[0]
    if chain not in chains:
        raise ValueError(f"{path}: no chain {chain!r}; chains present: {chains}")
    atoms = atoms[atoms.chain_id == chain]
    seq, cbs = [], []
    for res in struc.residue_iter(atoms):
        coords = {a.atom_name: a.coord for a in res}
        if not all(k in coords for k in ("N", "CA", "C")):
            continue
        rn = "MET" if res.res_name[0] == "MSE" else res.res_name[0]
        try:
            seq.append(ProteinSequence.convert_letter_3to1(rn))
        except KeyError:
            seq.append("X")
        cb = coords.get("CB")
        if cb is None or rn == "GLY":
            cb = virtual_cb(coords["N"], coords["CA"], coords["C"])
        cbs.append(cb)
    return StructureRecord(f"{path.name.split('.')[0]}_{chain}", "".join(seq), np.asarray(cbs, dtype=np.float32))
