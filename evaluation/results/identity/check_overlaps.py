"""Check that decontamination removed every exact overlap listed in overlaps_eval_vs_pretrain.tsv.

Two independent checks per pretraining source: (1) every listed pretraining id is in removed.tsv;
(2) every training record whose sequence sha1 is listed (for that source) is in removed.tsv.
Usage: python check_overlaps.py WORK_DIR  (the directory run_shared.sh wrote to). Prints JSON.
"""

from __future__ import annotations

import csv
import hashlib
import json
import sys
from pathlib import Path

from plm.identity.seqio import read_train

DATA = Path("/work/shared/data")
SOURCES = {"uniprot": "pretrain_uniprot", "metagenomic": "pretrain_metagenomic"}


def main(work: Path) -> dict:
    rows = list(csv.DictReader(open(DATA / "overlaps_eval_vs_pretrain.tsv"), delimiter="\t"))
    result = {}
    for src, tag in SOURCES.items():
        listed = [r for r in rows if r["pretrain_set"] == tag]
        ids = {i for r in listed for i in r["pretrain_ids"].split(",")}
        shas = {r["seq_sha1"] for r in listed}
        removed = {
            r["record_id"]
            for r in csv.DictReader(open(work / f"decontaminate_{src}" / "removed.tsv"), delimiter="\t")
        }
        recs = read_train(DATA / f"pretrain/{src}/{src}_mix.fasta.gz")
        by_sha = {r.id for r in recs if hashlib.sha1(r.seq.encode()).hexdigest() in shas}
        summary = json.load(open(work / f"decontaminate_{src}" / "summary.json"))
        result[src] = {
            "overlap_rows": len(listed),
            "listed_pretrain_ids": len(ids),
            "records_with_listed_sha1": len(by_sha),
            "listed_ids_not_removed": sorted(ids - removed),
            "sha1_records_not_removed": sorted(by_sha - removed),
            "removed_total": len(removed),
            "removed_exact": summary["removed_exact"],
            "removed_beyond_listed": len(removed - ids - by_sha),
        }
    return result


if __name__ == "__main__":
    out = main(Path(sys.argv[1]))
    print(json.dumps(out, indent=2))
    bad = any(v["listed_ids_not_removed"] or v["sha1_records_not_removed"] for v in out.values())
    sys.exit(1 if bad else 0)
