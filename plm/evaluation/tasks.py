"""Task definitions as data: ``evaluation/tasks/<name>.yaml`` → ``TaskSpec``.

A YAML names the format, the data files (full files relative to the data root, small in-repo copies
relative to ``evaluation/data``), the columns, the split, the head and the metric defaults, so a new
task of a known kind needs no code. Unknown keys and missing fields are reported together.

Where the full files live: ``--data-root``, else ``$PLM_DATA_ROOT``, else a ``shared/data`` folder next to
the checkout's folder (the layout CI uses). A plain clone has none of these, so without them the bundled subsets
under ``evaluation/data`` are used, and the run says so (``resolve_data``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from plm import paths
from plm.evaluation import kinds
from plm.evaluation.formats import FILES, FORMATS, KINDS
from plm.evaluation.options import EvalOptions, typed_defaults

TASK_DIR = paths.task_dir()
SMALL_DATA_ROOT = paths.task_data()

# The schema's kinds and formats (kind → formats that can feed it, the first the default; format →
# (required, optional) ``data`` roles) are derived from the one registry of readers, never restated here.
# ``train``/``test`` roles split by file and may list several files (TMbed's cross-validation folds).
LIST_ROLES = {"train", "test"}
# keys a format needs (``header_pattern``, ``wildtype_id``) come with their format's registry entry
TOP_KEYS = {
    "name",
    "description",
    "kind",
    "format",
    "data",
    "small_data",
    "columns",
    "classes",
    "split",
    "head",
    "metric",
    "defaults",
    "offset",
    "min_contacts",
    "ignore_labels",
    "label_map",
} | {key for f in FORMATS.values() for key in f.needs}
# ``split`` rules: ``train``/``test`` values of the split column, or ``train_fraction`` of the records
SPLIT_KEYS = ("train", "test", "train_fraction")
DATA_ROOT_ENV = "PLM_DATA_ROOT"
# The CI layout (full task files beside the checkout); users point --data-root / $PLM_DATA_ROOT at theirs.
CI_DATA_ROOT = paths.ci_data_root()  # None when plm runs from an installed wheel
POINT_HINT = (
    f"point --data-root or ${DATA_ROOT_ENV} at the full task data (docs/evaluation.md, 'Task data', "
    "lists where each set comes from)"
)
FULL_DATA_HINT = f"{POINT_HINT}, or pass --small to use the bundled subsets"


@dataclass(frozen=True)
class DataSource:
    """Where a run reads its task files: the full files under ``root``, or the bundled subsets."""

    root: Path
    bundled: bool
    origin: str  # what chose it: --small, --data-root, $PLM_DATA_ROOT, the CI layout, or the fallback
    note: str = ""  # said once per run when the choice was not asked for

    def describe(self) -> str:
        return (
            f"bundled subsets ({self.origin})"
            if self.bundled
            else f"full data under {self.root} ({self.origin})"
        )


def resolve_data(data_root: str | Path | None = None, small: bool = False) -> DataSource:
    """Full data where the user pointed (a missing directory is an error), the CI layout when present,
    else the bundled subsets with a note: a plain clone must run, and must say it ran on subsets."""
    if small:
        return DataSource(SMALL_DATA_ROOT, True, "--small")
    for value, origin in ((data_root, "--data-root"), (os.environ.get(DATA_ROOT_ENV), f"${DATA_ROOT_ENV}")):
        if value:
            if not Path(value).is_dir():
                raise FileNotFoundError(f"{origin} {value}: no such directory; {FULL_DATA_HINT}")
            return DataSource(Path(value), False, origin)
    if CI_DATA_ROOT is not None and CI_DATA_ROOT.is_dir():
        return DataSource(CI_DATA_ROOT, False, "default data root")
    ci = f", nothing at {CI_DATA_ROOT}" if CI_DATA_ROOT is not None else ""
    note = (
        f"no full task data (no --data-root, no ${DATA_ROOT_ENV}{ci}): using the "
        f"bundled subsets in {SMALL_DATA_ROOT}; their numbers are not the full benchmarks'. To run the "
        f"full tasks, {POINT_HINT}"
    )
    return DataSource(SMALL_DATA_ROOT, True, "no full data found", note)


@dataclass
class TaskSpec:
    name: str
    kind: str
    format: str
    data: dict[str, str]
    small_data: dict[str, str]
    source: Path
    columns: dict[str, str] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)
    head: str = "linear"
    metric: str = ""
    defaults: dict[str, Any] = field(
        default_factory=dict
    )  # the options the YAML sets (plm.evaluation.options)
    wildtype_id: str = ""
    offset: int = 1
    min_contacts: int = 1
    description: str = ""
    header_pattern: str = ""
    ignore_labels: list[str] = field(default_factory=list)
    label_map: dict[str, list[str]] = field(default_factory=dict)  # multi-label: label character → classes

    def files(self, data_root: str | Path | None = None, small: bool = False) -> dict[str, Any]:
        """Absolute data paths (a list for ``train``/``test`` roles given as lists) under the data the
        arguments select (:func:`resolve_data`)."""
        return self.files_in(resolve_data(data_root, small))

    def files_in(self, source: DataSource) -> dict[str, Any]:
        """Absolute data paths under ``source``; a missing file is an error naming the YAML, the role, the
        path and how to point at the data."""
        entries, root = (self.small_data, SMALL_DATA_ROOT) if source.bundled else (self.data, source.root)
        if not entries:
            if source.bundled:
                raise FileNotFoundError(
                    f"{self.source}: task {self.name!r} ships no bundled subset (no 'small_data' "
                    f"section) and the run uses them ({source.origin}); {POINT_HINT}, or leave "
                    "this task out"
                )
            raise ValueError(f"{self.source}: no 'data' section")
        resolve = lambda v: root / v if not Path(v).is_absolute() else Path(v)
        paths: dict[str, Any] = {
            k: [resolve(x) for x in v] if isinstance(v, list) else resolve(v) for k, v in entries.items()
        }
        flat = [(k, q) for k, v in paths.items() for q in (v if isinstance(v, list) else [v])]
        missing = [f"{k}: {q}" for k, q in flat if not q.exists()]
        if missing:
            hint = "" if source.bundled else f" (data root {root}, from {source.origin}; {FULL_DATA_HINT})"
            raise FileNotFoundError(f"{self.source}: data file(s) not found: {'; '.join(missing)}{hint}")
        return paths

    def options(self) -> EvalOptions:
        """plm's options with the YAML's ``defaults`` (no overrides, no cap by a model's length)."""
        return EvalOptions(**typed_defaults(self.defaults))


def split_problems(split: dict[str, Any], fmt: str, columns: dict[str, Any]) -> list[str]:
    """Each task has one split rule, because a second one silently won before: ``train_fraction`` over
    separate train and test files pooled them, so test proteins came from the training file."""
    problems = []
    unknown = sorted(map(str, set(split) - set(SPLIT_KEYS)))
    if unknown:
        problems.append(
            f"split: unknown key(s) {unknown} (use train/test values of the split column, or train_fraction)"
        )
    by_value = sorted(str(k) for k in split if k in ("train", "test"))
    if "train" in FILES[fmt][0]:
        if split:
            problems.append(
                f"split: format {fmt} splits by file (data.train / data.test); remove 'split' "
                f"({split}): a second rule would pool or re-cut the two files"
            )
        return problems
    if fmt == "dms_csv" and split:
        problems.append("split: zero-shot scoring uses no training data; remove 'split'")
    if "train_fraction" not in split:
        if fmt == "structures" and by_value:
            problems.append(
                "split: structures are split by train_fraction of the chains, not by train/test values"
            )
        return problems
    fraction = split["train_fraction"]
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        problems.append(f"split: train_fraction must be a number strictly between 0 and 1, got {fraction!r}")
    if by_value:
        problems.append(f"split: train_fraction and {by_value} are two rules for one split; keep one")
    if isinstance(columns, dict) and columns.get("split"):
        problems.append(
            f"split: train_fraction conflicts with the split column columns.split="
            f"{columns['split']!r}; keep one"
        )
    return problems


def load_task(name_or_path: str | Path, task_dir: str | Path | None = None) -> TaskSpec:
    """Load ``<task_dir>/<name>.yaml`` (or a path to a YAML) and validate it."""
    p = Path(name_or_path)
    if p.suffix not in (".yaml", ".yml"):
        p = Path(task_dir or TASK_DIR) / f"{name_or_path}.yaml"
    if not p.is_file():
        known = sorted(x.stem for x in Path(task_dir or TASK_DIR).glob("*.yaml"))
        raise FileNotFoundError(f"task {str(name_or_path)!r}: {p} not found; known tasks: {', '.join(known)}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ValueError(f"{p}: not valid YAML ({str(err).splitlines()[0]}); fix the file") from err
    problems = []
    if not isinstance(raw, dict):
        raise ValueError(f"{p}: a task YAML must be a mapping")  # noqa: TRY004 - bad user file, not a bad call
    # types first: later checks hash and index these fields
    for key in ("kind", "format", "head", "name", "metric", "wildtype_id", "description"):
        if key in raw and not isinstance(raw[key], str):
            problems.append(f"{key!r} must be a string, got {type(raw[key]).__name__}")
    for key in ("data", "small_data", "columns", "split", "defaults"):
        if key in raw and raw[key] is not None and not isinstance(raw[key], dict):
            problems.append(f"{key!r} must be a mapping, got {type(raw[key]).__name__}")
    for key in ("offset", "min_contacts"):
        if key in raw and (isinstance(raw[key], bool) or not isinstance(raw[key], int)):
            problems.append(f"{key!r} must be an integer, got {raw[key]!r}")
    for key in ("classes", "ignore_labels"):
        if key in raw and not isinstance(raw[key], list):
            problems.append(f"{key!r} must be a list, got {type(raw[key]).__name__}")
    if "header_pattern" in raw:
        try:
            if "target" not in re.compile(str(raw["header_pattern"])).groupindex:
                problems.append("'header_pattern' needs a named group (?P<target>...) for the label")
        except re.error as err:
            problems.append(f"'header_pattern' is not a valid regular expression ({err})")
    if problems:
        raise ValueError(f"{p}: invalid task definition: " + "; ".join(problems))
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        problems.append(f"unknown key(s) {unknown} (allowed: {sorted(TOP_KEYS)})")
    kind = raw.get("kind")
    if kind not in KINDS:
        problems.append(f"kind {kind!r} is not one of {sorted(KINDS)}")
    fmt = raw.get("format", KINDS[kind][0] if kind in KINDS else "")
    if fmt not in FILES:
        problems.append(f"format {fmt!r} is not one of {sorted(FILES)}")
    elif kind in KINDS and fmt not in KINDS[kind]:
        problems.append(f"format {fmt!r} cannot feed kind {kind} (use {KINDS[kind]})")
    else:
        required, optional = FILES[fmt]
        for section in ("data", "small_data"):
            entries = raw.get(section) or {}
            if section == "data" and not entries:
                problems.append("'data' section is required")
            if not isinstance(entries, dict):
                problems.append(f"'{section}' must map file roles to paths")
                continue
            if entries:
                miss = [k for k in required if k not in entries]
                extra = [k for k in entries if k not in required + optional]
                if miss:
                    problems.append(f"{section}: missing {miss} for format {fmt}")
                if extra:
                    problems.append(
                        f"{section}: unknown file role(s) {extra} for format {fmt} (use {required + optional})"
                    )
                for role, value in entries.items():
                    ok = isinstance(value, str) or (
                        role in LIST_ROLES
                        and isinstance(value, list)
                        and value
                        and all(isinstance(v, str) for v in value)
                    )
                    if not ok:
                        problems.append(
                            f"{section}: {role!r} must be a path"
                            + (" or a list of paths" if role in LIST_ROLES else "")
                            + f", got {value!r}"
                        )
    if kind in ("residue_classification", "sequence_classification", "residue_multilabel") and not raw.get(
        "classes"
    ):
        problems.append(f"kind {kind} needs 'classes' (the label alphabet / class names)")
    problems += label_map_problems(raw, kind)
    metric_problem = kinds.metric_problem(kind, raw.get("metric", ""), len(raw.get("classes") or []))
    if metric_problem:
        problems.append(metric_problem)
    if raw.get("head", "linear") not in ("linear", "mlp", "attention", "pairwise"):
        problems.append(
            f"head {raw.get('head')!r}: use linear, mlp (probes) or attention, pairwise (contacts)"
        )
    for key, what in (FORMATS[fmt].needs if fmt in FORMATS else {}).items():
        if not raw.get(key):
            problems.append(f"format {fmt} needs '{key}' ({what})")
    if fmt in FILES:
        problems += split_problems(raw.get("split") or {}, fmt, raw.get("columns") or {})
    if problems:
        raise ValueError(f"{p}: invalid task definition: " + "; ".join(problems))
    try:
        defaults = typed_defaults(raw.get("defaults") or {})
    except ValueError as err:
        raise ValueError(f"{p}: {err}") from None
    return TaskSpec(
        name=raw.get("name", p.stem),
        kind=kind,
        format=fmt,
        data=raw.get("data") or {},
        small_data=raw.get("small_data") or {},
        source=p,
        columns=raw.get("columns") or {},
        classes=[str(c) for c in raw.get("classes") or []],
        split=raw.get("split") or {},
        head=raw.get("head", "attention" if kind == "contacts" else "linear"),
        metric=raw.get("metric", ""),
        defaults=defaults,
        wildtype_id=raw.get("wildtype_id", ""),
        offset=int(raw.get("offset", 1)),
        min_contacts=int(raw.get("min_contacts", 1)),
        description=raw.get("description", ""),
        header_pattern=str(raw.get("header_pattern", "")),
        ignore_labels=[str(c) for c in raw.get("ignore_labels") or []],
        label_map={str(k): [str(c) for c in v] for k, v in (raw.get("label_map") or {}).items()},
    )


def label_map_problems(raw: dict[str, Any], kind: Any) -> list[str]:
    """A per-residue multi-label task says which classes each label character switches on; every class it
    names must be declared, and no other kind takes the key."""
    label_map = raw.get("label_map")
    if kind != "residue_multilabel":
        return (
            [f"'label_map' applies to kind residue_multilabel, not {kind}"] if label_map is not None else []
        )
    if not isinstance(label_map, dict) or not label_map:
        return [
            "kind residue_multilabel needs 'label_map' (label character → list of classes it switches on)"
        ]
    classes = {str(c) for c in raw.get("classes") or []}
    problems = []
    for char, on in label_map.items():
        if len(str(char)) != 1:
            problems.append(f"label_map: key {char!r} must be one label character")
        if not isinstance(on, list):
            problems.append(f"label_map: {char!r} must map to a list of classes, got {on!r}")
        elif set(map(str, on)) - classes:
            problems.append(
                f"label_map: {char!r} names {sorted(set(map(str, on)) - classes)}, not in classes {sorted(classes)}"
            )
    return problems
