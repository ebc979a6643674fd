"""Rebuild the small in-repo subsets of ss8, scl (and setHARD), tmbed, conservation, bind, ec and three DMS assays from the full files.

    .venv/bin/python evaluation/data/make_subsets.py [--data-root DIR]   # DIR: your copy of the full task files (docs/evaluation.md, "Task data")

Seeded (random.Random(0) per subset) and deterministic, so rerunning reproduces the committed files
byte for byte (gzip without timestamps). The older ss3 / gb1 / dms / structures subsets are described
in SOURCE.md.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from plm.evaluation.datasets import iter_fasta_text, open_text


def write_gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as fh:
        fh.write(text.encode())


def ss8(root: Path) -> None:
    """40 CB513 chains of length <= 200 (the task splits them itself with train_fraction)."""
    with open_text(root / "tasks/ss8_cb513/CB513_ss.tsv") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    pick = random.Random(0).sample([r for r in rows if len(r["sequence"]) <= 200], 40)
    pick.sort(key=lambda r: int(r["id"].split("_")[1]))
    cols = list(rows[0])
    text = "\t".join(cols) + "\n" + "".join("\t".join(r[c] for c in cols) + "\n" for r in pick)
    write_gz(HERE / "ss8/CB513_ss.tsv.gz", text)


def scl(root: Path) -> None:
    """DeepLoc: 60 validation-set (train) and 40 test-set proteins of length <= 400, headers unchanged;
    the validation sample includes one ignored Cytoplasm-Nucleus record."""
    d = root / "tasks/scl_deeploc"
    for name, out, n in (
        ("deeploc_our_val_set.fasta", "train.fasta.gz", 60),
        ("deeploc_test_set.fasta", "test.fasta.gz", 40),
    ):
        recs = [r for r in iter_fasta_text(d / name) if len(r[2]) <= 400]
        rng = random.Random(0)
        pick = rng.sample(recs, n)
        if name.startswith("deeploc_our_val") and not any("Cytoplasm-Nucleus" in r[1] for r in pick):
            pick[-1] = rng.choice([r for r in recs if "Cytoplasm-Nucleus" in r[1]])
        write_gz(HERE / "scl" / out, "".join(f">{desc}\n{seq}\n" for _, desc, seq in pick))


def tmbed(root: Path) -> None:
    """TMbed: from fold 0 (test) and fold 1 (train) 30 / 15 globular + 10 / 5 transmembrane records of
    length <= 400, three-line records unchanged; blacklist.txt: the blacklisted ids among them."""
    d = root / "tasks/tm_tmbed"
    black = {ln.strip().lstrip(">") for ln in open_text(d / "blacklist.txt") if ln.strip()}
    chosen = []
    for fold, out, n_glob, n_tm in (
        (1, "cv_01_annotated.fasta.gz", 30, 10),
        (0, "cv_00_annotated.fasta.gz", 15, 5),
    ):
        with open_text(d / f"cv_0{fold}_annotated.fasta.gz") as fh:
            lines = [ln.rstrip("\n") for ln in fh if ln.strip()]
        recs = [(lines[i], lines[i + 1], lines[i + 2]) for i in range(0, len(lines), 3)]
        short = [r for r in recs if len(r[1]) <= 400]
        is_tm = lambda r: any(c in r[2] for c in "HhBb")
        rng = random.Random(0)
        pick = rng.sample([r for r in short if not is_tm(r)], n_glob) + rng.sample(
            [r for r in short if is_tm(r)], n_tm
        )
        if fold == 0:  # make sure the exclude list has something to exclude
            listed = [r for r in short if r[0][1:] in black and is_tm(r)]
            if listed and not any(r[0][1:] in black for r in pick):
                pick[-1] = listed[0]
        chosen += pick
        write_gz(HERE / "tmbed" / out, "".join(f"{h}\n{s}\n{lab}\n" for h, s, lab in pick))
    ids = sorted(h[1:] for h, _, _ in chosen if h[1:] in black)
    (HERE / "tmbed/blacklist.txt").write_text("".join(f">{i}\n" for i in ids))


def conservation(root: Path) -> None:
    """FLIP conservation: 60 SET=train + 30 SET=test label records of length <= 250 and their sequences."""
    d = root / "tasks/flip_conservation"
    labels = [r for r in iter_fasta_text(d / "sampled.fasta.gz") if len(r[2]) <= 250]
    rng = random.Random(0)
    pick = rng.sample([r for r in labels if "SET=train" in r[1]], 60) + rng.sample(
        [r for r in labels if "SET=test" in r[1]], 30
    )
    ids = {r[0] for r in pick}
    seqs = [r for r in iter_fasta_text(d / "sequences.fasta.gz") if r[0] in ids]
    write_gz(HERE / "conservation/labels.fasta.gz", "".join(f">{desc}\n{s}\n" for _, desc, s in pick))
    write_gz(HERE / "conservation/sequences.fasta.gz", "".join(f">{desc}\n{s}\n" for _, desc, s in seqs))


def scl_hard(root: Path) -> None:
    """DeepLoc setHARD (the Light-Attention authors' low-redundancy test set): 40 proteins of length <= 400,
    headers unchanged."""
    recs = [r for r in iter_fasta_text(root / "tasks/scl_deeploc/setHARD.fasta") if len(r[2]) <= 400]
    pick = random.Random(0).sample(recs, 40)
    write_gz(HERE / "scl/hard.fasta.gz", "".join(f">{desc}\n{seq}\n" for _, desc, seq in pick))


def dms(root: Path) -> None:
    """The three DMS assays without a subset yet: 150 scored rows each (random, kept in file order), only the
    mutant and score columns the task YAML reads, under the assay's file name."""
    d = root / "tasks/dms"
    for name, score in (
        ("BLAT_ECOLX_Ranganathan2015.csv.gz", "2500"),
        ("DLG4_RAT_Ranganathan2012.csv", "CRIPT"),
        ("PABP_YEAST_Fields2013-singles.csv", "log"),
    ):
        with open_text(d / name) as fh:
            rows = [
                r for r in csv.DictReader(fh) if (r[score] or "").strip().lower() not in ("", "nan", "na")
            ]
        keep = sorted(random.Random(0).sample(range(len(rows)), 150))
        out = HERE / "dms" / name.removesuffix(".gz")
        out.write_text(f"mutant,{score}\n" + "".join(f"{rows[i]['mutant']},{rows[i][score]}\n" for i in keep))


def bind(root: Path) -> None:
    """FLIP bind, from_publication split: 50 SET=train VALIDATION=False + 10 VALIDATION=True + 30 SET=test
    label records of length <= 300 whose residues bind something, and their sequences; headers unchanged."""
    d = root / "tasks/flip_bind"
    labels = [
        r for r in iter_fasta_text(d / "from_publication.fasta") if len(r[2]) <= 300 and r[2].strip("0")
    ]
    rng = random.Random(0)
    pick = (
        rng.sample([r for r in labels if "SET=train" in r[1] and "VALIDATION=False" in r[1]], 50)
        + rng.sample([r for r in labels if "SET=train" in r[1] and "VALIDATION=True" in r[1]], 10)
        + rng.sample([r for r in labels if "SET=test" in r[1]], 30)
    )
    ids = {r[0] for r in pick}
    seqs = [r for r in iter_fasta_text(d / "sequences.fasta") if r[0] in ids]
    write_gz(HERE / "bind/labels.fasta.gz", "".join(f">{desc}\n{s}\n" for _, desc, s in pick))
    write_gz(HERE / "bind/sequences.fasta.gz", "".join(f">{desc}\n{s}\n" for _, desc, s in seqs))


def ec(root: Path) -> None:
    """DeepFRI nrPDB-EC: only the 1,920 test chains have sequences in the snapshot, so the subset re-splits
    150 of them (length <= 300, annotated with one of the 10 EC numbers most frequent among those chains)
    into 100 train / 50 test at random; annotations are the chains' full rows, and the vocabulary line lists
    the EC numbers they use (in the order of DeepFRI's vocabulary)."""
    d = root / "tasks/ec_deepfri"
    with open_text(d / "nrPDB-EC_2020.04_annot.tsv") as fh:
        lines = [ln.rstrip("\n") for ln in fh]
    vocabulary = lines[1].split("\t")
    rows = dict(ln.split("\t", 1) for ln in lines[3:] if ln.strip())
    seqs = {
        rid: s for rid, _, s in iter_fasta_text(d / "nrPDB-EC_2020.04_test_sequences.fasta") if len(s) <= 300
    }
    counts: dict[str, int] = {}
    for rid in seqs:
        for label in rows[rid].split(","):
            counts[label] = counts.get(label, 0) + 1
    top = set(sorted(counts, key=lambda c: (-counts[c], c))[:10])
    rng = random.Random(0)
    pick = rng.sample(sorted(r for r in seqs if top & set(rows[r].split(","))), 150)
    used = {c for r in pick for c in rows[r].split(",")}
    header = ["### EC-numbers", "\t".join(c for c in vocabulary if c in used), "### PDB-chain\tEC-numbers"]
    write_gz(HERE / "ec/annot.tsv.gz", "\n".join(header + [f"{r}\t{rows[r]}" for r in sorted(pick)]) + "\n")
    write_gz(HERE / "ec/sequences.fasta.gz", "".join(f">{r} nrPDB_test\n{seqs[r]}\n" for r in sorted(pick)))
    (HERE / "ec/train.txt").write_text("".join(f"{r}\n" for r in sorted(pick[:100])))
    (HERE / "ec/test.txt").write_text("".join(f"{r}\n" for r in sorted(pick[100:])))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", type=Path, default=HERE.parents[1].parent / "shared" / "data")
    args = p.parse_args()
    for make in (ss8, scl, tmbed, conservation, bind, ec, scl_hard, dms):
        make(args.data_root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
