"""Property-based hostile input: every loader either returns something correct or raises one of its
documented errors with a message — never another exception, never a partial result that looks valid.

Loaders: the FASTA reader, the run-config (``plm fit`` YAML through PlmCLI's parser), the task-YAML
loader and the mutation-string parser.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plm.data.datamodule import ProteinDataModule
from plm.data.fasta import FastaError, read_fasta
from plm.evaluation.tasks import load_task
from plm.evaluation.zero_shot import apply_mutations, parse_mutations
from plm.lightning_cli import PlmCLI
from plm.lit.language_model import LanguageModel
from plm.tokenizer import RESIDUE_IDS, encode_residues
from tests.helpers.runs import REPO

pytestmark = pytest.mark.reliability

LETTERS = "LAGVSERTIDPKQNFYMHWCXBUZO"
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _write(data: bytes, suffix: str = ".fasta") -> Path:
    fh = tempfile.NamedTemporaryFile(suffix=suffix, delete=False)
    fh.write(data)
    fh.close()
    return Path(fh.name)


# ---- FASTA ------------------------------------------------------------------------------------------------
ids = st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=12)
descs = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20).map(str.strip)
seqs = st.text(st.sampled_from(LETTERS + LETTERS.lower()), min_size=1, max_size=200)
records = st.lists(st.tuples(ids, descs, seqs), min_size=1, max_size=6)


@st.composite
def fasta_files(draw) -> tuple[bytes, list[tuple[str, str, str]]]:
    """Valid FASTA with the formatting noise the policy accepts: wrapping, CRLF, blank lines, '*'."""
    recs = draw(records)
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    width = draw(st.integers(1, 80))
    out = []
    for rid, desc, seq in recs:
        out.append(f">{rid} {desc}".rstrip() + eol)
        body = seq + ("*" if draw(st.booleans()) else "")
        out += [body[i : i + width] + eol for i in range(0, len(body), width)]
        if draw(st.booleans()):
            out.append(eol)
    return "".join(out).encode(), recs


@FAST
@given(fasta_files(), st.booleans())
def test_valid_fasta_round_trips_exactly(case, gz):
    data, recs = case
    path = _write(gzip.compress(data) if gz else data)
    got = list(read_fasta(path))
    assert [(r.id, r.description) for r in got] == [(rid, desc) for rid, desc, _ in recs]
    for r, (_, _, seq) in zip(got, recs):
        assert np.array_equal(r.tokens, encode_residues(seq.upper().encode()))


def _check_records(path: Path, mode: str) -> None:
    try:
        out = list(read_fasta(path, on_invalid=mode, max_length=500))
    except FastaError as err:
        assert str(path) in str(err)  # the message names the file
        return
    for i, r in enumerate(out):  # whatever comes out is a real record
        assert r.id and not any(c.isspace() for c in r.id)
        assert r.tokens.dtype == np.uint8 and 1 <= len(r.tokens) <= 500
        assert set(np.unique(r.tokens).tolist()) <= set(RESIDUE_IDS)
        assert i == 0 or r.index > out[i - 1].index


fasta_like = st.lists(
    st.one_of(
        st.just(b">"),
        st.just(b"\n"),
        st.just(b"\r\n"),
        st.just(b" "),
        st.just(b"*"),
        st.binary(max_size=8),
        st.text(LETTERS + "acgt>*.- \n", max_size=30).map(str.encode),
        st.text(max_size=10).map(lambda s: s.encode("utf-8")),
    ),
    max_size=30,
).map(b"".join)


@FAST
@given(fasta_like, st.sampled_from(["error", "skip", "x"]))
def test_arbitrary_bytes_give_records_or_fasta_error(data, mode):
    _check_records(_write(data), mode)


_GZ = gzip.compress(b">sp|P1 protein one\nMKVLAAGIT\n>sp|P2 protein two\nMSTNPKPQRKTKRNTNRRPQDVKFPGG\n" * 20)


@pytest.mark.parametrize(
    "blob",
    [_GZ[: len(_GZ) // 2], _GZ[:-4], _GZ[:2] + b"\x07" + _GZ[3:], _GZ[:40] + bytes(20) + _GZ[60:]],
    ids=["truncated-half", "truncated-trailer", "bad-method", "zeroed-block"],
)
def test_truncated_or_corrupt_gzip_is_a_fasta_error(blob, tmp_path):
    path = tmp_path / "bad.fasta.gz"
    path.write_bytes(blob)
    with pytest.raises(FastaError, match="bad.fasta.gz"):
        list(read_fasta(path))


def test_missing_fasta_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="FASTA file not found"):
        list(read_fasta(tmp_path / "nope.fasta"))


# ---- run config (plm fit --config) --------------------------------------------------------------------------
class _ParseOnly(PlmCLI):
    def instantiate_classes(self) -> None:
        pass


TINY = yaml.safe_load((REPO / "configs/train/tiny.yaml").read_text())
KEYS = [
    ("model", "init_args", "size"),
    ("model", "init_args", "lr"),
    ("model", "class_path"),
    ("data", "row_len"),
    ("data", "sources"),
    ("trainer", "max_steps"),
    ("trainer", "devices"),
    ("checkpoint_every",),
    ("max_bad_steps",),
    ("seed_everything",),
    ("loggers",),
    ("bogus_key",),
    ("trainer", "callbacks"),
    ("model",),
    ("data",),
]
values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**12), 10**12),
        st.floats(allow_nan=True),
        st.text(max_size=20),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def run_configs(draw) -> str:
    if draw(st.integers(0, 4)) == 0:  # raw text, often not YAML at all
        return draw(st.text(max_size=80))
    cfg = yaml.safe_load(yaml.safe_dump(TINY))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(KEYS))
        node = cfg
        for k in path[:-1]:
            node = node.setdefault(k, {}) if isinstance(node.get(k), dict) or k not in node else {}
        node[path[-1]] = draw(values)
    return yaml.safe_dump(cfg)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run_configs())
def test_run_config_parses_or_exits_with_a_message(text):
    path = _write(text.encode(), ".yaml")
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            _ParseOnly(
                LanguageModel,
                ProteinDataModule,
                subclass_mode_model=True,
                run=False,
                args=["--config", str(path)],
                parser_kwargs={"parser_mode": "omegaconf"},
                auto_configure_optimizers=False,
            )
    except SystemExit as exc:
        assert exc.code not in (0, None) and "error" in err.getvalue().lower(), err.getvalue()[-500:]


# ---- task YAML ------------------------------------------------------------------------------------------------
TASK = {
    "name": "t",
    "kind": "zero_shot",
    "data": {"table": "x.csv", "wildtype": "wt.fasta"},
    "wildtype_id": "P1",
}
TASK_KEYS = [
    "kind",
    "format",
    "data",
    "small_data",
    "classes",
    "head",
    "defaults",
    "offset",
    "min_contacts",
    "wildtype_id",
    "columns",
    "split",
    "unknown",
]


@st.composite
def task_yamls(draw) -> str:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.text(max_size=60))
    raw = dict(TASK)
    for key in draw(st.lists(st.sampled_from(TASK_KEYS), min_size=1, max_size=3)):
        raw[key] = draw(values)
    return yaml.safe_dump(raw)


@pytest.mark.parametrize(
    "text",
    [
        "kind: []\ndata: {table: x.csv, wildtype: w.fa}\nwildtype_id: P1\n",
        "@",
        "*",
        "kind: zero_shot\ndefaults: [[1]]\ndata: {table: x.csv, wildtype: w.fa}\nwildtype_id: P1\n",
    ],
    ids=["unhashable-kind", "reserved-@", "bare-alias", "list-defaults"],
)
def test_task_yaml_known_hostile_cases(text, tmp_path):
    path = tmp_path / "task.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match="task.yaml"):
        load_task(path)


@FAST
@given(task_yamls())
def test_task_yaml_loads_or_raises_value_error(text):
    path = _write(text.encode(), ".yaml")
    try:
        spec = load_task(path)
    except (ValueError, FileNotFoundError) as err:
        assert str(path) in str(err)
        return
    assert (
        spec.kind
        in (
            "residue_classification",
            "sequence_regression",
            "sequence_classification",
            "zero_shot",
            "contacts",
        )
        and isinstance(spec.data, dict)
        and spec.data
    )


# ---- mutation strings ------------------------------------------------------------------------------------------
mut_text = st.one_of(
    st.text(max_size=30),
    st.lists(
        st.tuples(st.sampled_from(LETTERS + "a*"), st.integers(-5, 80), st.sampled_from(LETTERS + "-")),
        min_size=1,
        max_size=4,
    ).map(lambda ms: ":".join(f"{a}{n}{b}" for a, n, b in ms)),
)


@settings(max_examples=300, deadline=None)
@given(mut_text, st.text(LETTERS, min_size=1, max_size=60), st.integers(-2, 3))
def test_mutation_strings_parse_consistently_or_raise_value_error(text, wildtype, offset):
    try:
        muts = parse_mutations(text, wildtype, offset)
    except ValueError as err:
        assert repr(text) in str(err)
        return
    assert muts and len({m.pos for m in muts}) == len(muts)
    for m in muts:
        assert 0 <= m.pos < len(wildtype) and wildtype[m.pos] == m.wt and len(m.mt) == 1
    mutated = apply_mutations(wildtype, muts)
    assert len(mutated) == len(wildtype) and all(mutated[m.pos] == m.mt for m in muts)
