"""Readers for the task data formats a YAML can name.

Per-residue labels: ``residue_fasta`` (FLIP: sequences, labels and mask in three FASTAs sharing ids),
``residue_table`` (one row per chain with sequence, label string and 0/1 mask columns: CB513),
``annotated_fasta`` (header, sequence line, label line per record: TMbed). Per-sequence targets:
``sequence_csv`` (FLIP table) and ``sequence_fasta`` (label in the FASTA header: DeepLoc). Plus DMS
tables and structures.

Each reader returns plain records (sequence + labels + split) and gathers every problem it finds into
one error that names the file and the offending records, because benchmark files are usually edited by
hand and a user should fix them all in one go rather than one per run.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from plm.data.fasta import FastaError, open_binary, read_text_records

IGNORE = -100
MAX_LISTED = 5  # problems named in one error message


@dataclass
class ResidueRecord:
    """One sequence with an integer class per residue (``IGNORE`` where unscored)."""

    id: str
    sequence: str
    labels: np.ndarray
    split: str = ""
    validation: bool = False  # a training record the benchmark sets aside for validation (FLIP's VALIDATION=True)


@dataclass
class SequenceRecord:
    """One sequence with one target (float for regression, class index for classification)."""

    id: str
    sequence: str
    target: float
    split: str = ""
    validation: bool = False  # a training record the benchmark sets aside for validation (FLIP's validation column)


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


def _apply_mask(y: np.ndarray, mask: str) -> None:
    """Residues whose mask character is not '1' are left out of the loss and the metrics."""
    y[np.frombuffer(mask.encode(), dtype=np.uint8) != ord("1")] = IGNORE


def _cropped(record: ResidueRecord, max_len: int | None) -> ResidueRecord:
    if max_len:
        record.sequence, record.labels = record.sequence[:max_len], record.labels[:max_len]
    return record


def _raise_problems(path: Path, records: list[ResidueRecord], problems: list[str], what: str, fix: str, empty: str) -> None:
    """One error listing every bad record, or one saying the file held none."""
    if problems:
        raise _problem_error(path, what, problems, fix)
    if not records:
        raise ValueError(f"{path}: {empty}")


def task_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (check the task YAML's data paths and --data-root)")
    return path


def open_text(path: str | Path) -> io.TextIOBase:
    """Open plain, gzip (decided by magic bytes, the rule of :mod:`plm.data.fasta`) or single-member .zip
    text files."""
    path = task_file(path)
    if path.suffix == ".zip":
        zf = zipfile.ZipFile(path)
        members = [n for n in zf.namelist() if not n.endswith("/")]
        return io.TextIOWrapper(zf.open(members[0]), encoding="utf-8")
    return io.TextIOWrapper(open_binary(path, "file"), encoding="utf-8")


def iter_fasta_text(path: str | Path) -> Iterator[tuple[str, str, str]]:
    """(id, header line, sequence string) for each record. Labels and masks are not residues: they are
    read by :func:`plm.data.fasta.read_text_records` (the FASTA structure, gzip and empty-file rules of
    every reader) without the tokenizer's alphabet."""
    for rec in read_text_records(task_file(path)):
        yield rec.id, rec.header, "".join(rec.lines)


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
    ignore: Sequence[str] = (),
    validation_field: str | None = None,
) -> list[ResidueRecord]:
    """FLIP-style per-residue labels: sequences, labels and an optional 0/1 mask in three FASTA files
    sharing record ids. The split comes from ``split_field=`` in the label header, the validation flag
    (``is_true``) from ``validation_field=``. Residues whose label is in ``ignore`` (e.g. TMbed's ``U`` =
    unresolved) are kept in the sequence but not scored."""
    seqs = {rid: s for rid, _, s in iter_fasta_text(sequences)}
    masks = {rid: m for rid, _, m in iter_fasta_text(mask)} if mask else {}
    records, problems = [], []
    for rid, desc, lab in iter_fasta_text(labels):
        seq = seqs.get(rid)
        if seq is None:
            problems.append(f"record {rid!r} has labels but no sequence in {sequences}")
            continue
        try:
            y = encode_residue_labels(lab, seq, classes, ignore)
        except ValueError as err:
            problems.append(f"record {rid!r}: {err}")
            continue
        if mask:
            m = masks.get(rid)
            if m is None or len(m) != len(seq):
                problems.append(f"record {rid!r}: mask missing or of length {len(m or '')} != {len(seq)} in {mask}")
                continue
            _apply_mask(y, m)
        fields = header_fields(desc)
        records.append(_cropped(ResidueRecord(rid, seq, y, fields.get(split_field, ""),
                                              is_true(fields.get(validation_field or "", ""))), max_len))
    _raise_problems(Path(labels), records, problems, "bad label records",
                    "Labels, sequences and mask must share ids and have one character per residue.",
                    "no label records found (is it a FASTA file?)")
    return records


def is_true(value: str | None) -> bool:
    """A validation flag as benchmark files write it (FLIP: ``True`` / ``False`` or empty)."""
    return (value or "").strip().lower() in ("true", "1", "yes")


def encode_residue_labels(labels: str, sequence: str, classes: Sequence[str], ignore: Sequence[str] = ()) -> np.ndarray:
    """One class index per residue (``IGNORE`` for labels in ``ignore``); a length mismatch or a label
    outside ``classes`` + ``ignore`` is a ``ValueError`` saying which."""
    if len(labels) != len(sequence):
        raise ValueError(f"{len(labels)} labels for a {len(sequence)}-residue sequence")
    lookup = {c: i for i, c in enumerate(classes)} | {c: IGNORE for c in ignore}
    bad = sorted(set(labels) - set(lookup))
    if bad:
        raise ValueError(f"labels {bad} not in classes {list(classes)}" + (f" or ignored {list(ignore)}" if ignore else ""))
    return np.array([lookup[c] for c in labels], dtype=np.int64)


def as_paths(paths: str | Path | Sequence[str | Path]) -> list[Path]:
    """One path or a list of them (a task may split its train set over several files: TMbed's folds)."""
    return [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]


def read_ids(path: str | Path) -> set[str]:
    """Record ids, one per line (a leading ``>`` and anything after the first whitespace are ignored)."""
    with open_text(path) as fh:
        return {line.lstrip(">").split()[0] for line in fh if line.strip()}


def read_residue_table(
    path: str | Path,
    classes: list[str],
    sequence_column: str = "sequence",
    label_column: str = "labels",
    mask_columns: Sequence[str] = (),
    id_column: str | None = "id",
    split_column: str | None = None,
    max_len: int | None = None,
    ignore: Sequence[str] = (),
) -> list[ResidueRecord]:
    """One chain per row: a sequence column, a label-string column (one character per residue) and
    optional 0/1 mask columns; a residue is scored only where every mask is ``1`` (CB513: resolved
    *and* inside the original CB513 segment, the NetSurfP-2.0 convention). TSV when the name says so."""
    mask_columns = [mask_columns] if isinstance(mask_columns, str) else list(mask_columns)
    required = [sequence_column, label_column, *mask_columns] + [c for c in (id_column, split_column) if c]
    records, problems = [], []
    for line, row in enumerate(read_csv_rows(path, required), start=2):  # line 1 is the header
        rid = row[id_column] if id_column else f"line{line}"
        seq = (row[sequence_column] or "").strip()
        try:
            y = encode_residue_labels((row[label_column] or "").strip(), seq, classes, ignore)
        except ValueError as err:
            problems.append(f"line {line} (record {rid!r}), column {label_column!r}: {err}")
            continue
        for col in mask_columns:
            m = (row[col] or "").strip()
            if len(m) != len(seq) or set(m) - {"0", "1"}:
                problems.append(f"line {line} (record {rid!r}): mask column {col!r} must be one 0/1 per residue "
                                f"({len(seq)}), got {len(m)} characters")
                break
            _apply_mask(y, m)
        else:
            records.append(_cropped(ResidueRecord(rid, seq, y, row[split_column] if split_column else ""), max_len))
    _raise_problems(Path(path), records, problems, "bad rows",
                    "Each label and mask string must have one character per residue of the sequence column.", "no rows")
    return records


def read_annotated_fasta(
    paths: str | Path | Sequence[str | Path],
    classes: list[str],
    split: str = "",
    max_len: int | None = None,
    ignore: Sequence[str] = (),
    exclude: set[str] | None = None,
) -> list[ResidueRecord]:
    """Records of exactly three lines: ``>header``, the sequence, its per-residue label string (TMbed's
    ``cv_*_annotated.fasta``). Every record of every file gets ``split``; ids in ``exclude`` are skipped
    (TMbed's blacklist of proteins removed from its evaluation)."""
    records, problems = [], []
    for path in as_paths(paths):
        try:
            recs = list(read_text_records(task_file(path)))
        except FastaError as err:
            raise ValueError(f"{path}: not an annotated FASTA ('>header', sequence line, label line): {err}") from None
        file_problems = []
        for rec in recs:
            body, rid = rec.lines, rec.id
            if len(body) != 2:
                file_problems.append(f"record {rid!r}: {len(body)} line(s) after the header, expected 2 (sequence, labels)")
                continue
            if exclude and rid in exclude:
                continue
            seq, lab = body
            try:
                y = encode_residue_labels(lab, seq, classes, ignore)
            except ValueError as err:
                file_problems.append(f"record {rid!r}: {err}")
                continue
            records.append(_cropped(ResidueRecord(rid, seq, y, split), max_len))
        if file_problems:
            problems.append(_problem_error(path, "bad records", file_problems,
                                           "Each record is '>header', one sequence line, one label line of equal length."))
    if problems:
        raise ValueError(" | ".join(str(p) for p in problems))
    return records


def read_sequence_fasta(
    paths: str | Path | Sequence[str | Path],
    header_pattern: str,
    classes: list[str],
    split: str = "",
    max_len: int | None = None,
    ignore: Sequence[str] = (),
    exclude: set[str] | None = None,
) -> list[SequenceRecord]:
    """One class per sequence, read from its FASTA header by ``header_pattern``, a regular expression
    with a named group ``target`` searched in the header line without ``>`` (DeepLoc writes
    ``>Q9H400 Cell.membrane-M test``). Records whose target is in ``ignore`` are skipped (DeepLoc's
    validation set has 23 ``Cytoplasm-Nucleus`` proteins outside the 10 test classes)."""
    pattern = re.compile(header_pattern)
    lookup = {c: i for i, c in enumerate(classes)}
    records, problems = [], []
    for path in as_paths(paths):
        file_problems = []
        for rid, desc, seq in iter_fasta_text(path):
            if exclude and rid in exclude:
                continue
            m = pattern.search(desc)
            if m is None:
                file_problems.append(f"record {rid!r}: header {desc!r} does not match {header_pattern!r}")
                continue
            target = m.group("target")
            if target in ignore:
                continue
            if target not in lookup:
                file_problems.append(f"record {rid!r}: class {target!r} not in classes {classes}")
                continue
            if not seq:
                file_problems.append(f"record {rid!r}: empty sequence")
                continue
            records.append(SequenceRecord(rid, seq[:max_len] if max_len else seq, float(lookup[target]), split))
        if file_problems:
            problems.append(_problem_error(path, "bad records", file_problems,
                                           "Fix the header_pattern or the classes / ignore_labels in the task YAML."))
    if problems:
        raise ValueError(" | ".join(str(p) for p in problems))
    if not records:
        raise ValueError(f"{', '.join(map(str, as_paths(paths)))}: no FASTA records")
    return records


def read_csv_rows(path: str | Path, required: list[str]) -> list[dict[str, str]]:
    """All rows of a CSV (tab-separated when the name contains ``.tsv``), after checking the required
    columns exist (named in the error if not)."""
    with open_text(path) as fh:
        reader = csv.DictReader(fh, delimiter="\t" if ".tsv" in Path(path).name else ",")
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
    validation_column: str | None = None,
) -> list[SequenceRecord]:
    """A sequence/target table (FLIP format). With ``classes`` the target is a class name; rows whose
    ``validation_column`` is true (``is_true``) are the benchmark's validation records."""
    optional = [c for c in (split_column, validation_column) if c]
    rows = read_csv_rows(path, [sequence_column, target_column] + optional)
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
                                      row[split_column] if split_column else "",
                                      is_true(row[validation_column]) if validation_column else False))
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
