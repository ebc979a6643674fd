#!/usr/bin/env bash
# Real-data runs of issue 11 on the full pretraining sources and task sets (~30 min on 2 threads).
# Usage: [PLM_DATA_ROOT=DIR] evaluation/results/identity/run_shared.sh [WORK_DIR]
#   DIR holds pretrain/, eval/ and tasks/ (the data root plm evaluate reads; default /work/shared/data, the
#   development machine's); big outputs go to WORK_DIR, default /tmp/plm-identity.
set -euo pipefail
D=${PLM_DATA_ROOT:-/work/shared/data}
[[ -d $D/pretrain && -d $D/eval && -d $D/tasks ]] || {
  echo "run_shared.sh: $D has no pretrain/, eval/ and tasks/; set PLM_DATA_ROOT to a data root with that layout" >&2
  exit 2
}
W=${1:-/tmp/plm-identity}
HERE=$(cd "$(dirname "$0")" && pwd)
PLM="nice -n 10 ${PLM:-.venv/bin/plm}"
T=(--threads 2 --tmp-dir "$W/tmp")
mkdir -p "$W"
# Every task set with sequences, in its own format (TMbed 3-line FASTA, CSV/TSV sequence columns are read directly).
TASKS=(
  $D/tasks/ec_deepfri/nrPDB-EC_2020.04_test_sequences.fasta
  $D/tasks/flip_bind/sequences.fasta
  $D/tasks/flip_conservation/sequences.fasta.gz
  $D/tasks/flip_secondary_structure/sequences.fasta.gz
  $D/tasks/flip_gb1/sampled.csv.gz $D/tasks/flip_gb1/5LDE_1.fasta
  $D/tasks/dms/ProteinGym_DMS_substitutions.csv $D/tasks/dms/ProteinGym_DMS_indels.csv $D/tasks/dms/wildtype.fasta
  $D/tasks/dms/BLAT_ECOLX_Jacquier_2013.csv $D/tasks/dms/P62593_TEM1_Envision_fitness.fasta.gz
  $D/tasks/scl_deeploc/deeploc_test_set.fasta $D/tasks/scl_deeploc/deeploc_our_val_set.fasta $D/tasks/scl_deeploc/setHARD.fasta
  $D/tasks/ss8_cb513/CB513_ss.tsv
  $D/tasks/structures/sequences.fasta
  $D/tasks/tm_tmbed/cv_0{0,1,2,3,4}_annotated.fasta.gz
)
for src in uniprot metagenomic; do
  $PLM data decontaminate --train $D/pretrain/$src/${src}_mix.fasta.gz --against "${TASKS[@]}" \
    --min-identity 0.5 --out "$W/decontaminate_$src" "${T[@]}"
done
.venv/bin/python "$HERE/check_overlaps.py" "$W" > "$HERE/overlaps_check.json"
# Held-out bins: CATH S40 vs both pretraining sources (decontaminated against CATH first would be stricter).
$PLM data split-by-identity --source $D/eval/cath_s40/cath-dataset-nonredundant-S40.v4_1_0.fa.gz \
  --train $D/pretrain/uniprot/uniprot_mix.fasta.gz $D/pretrain/metagenomic/metagenomic_mix.fasta.gz \
  --bins 0.5,0.9 --out "$W/cath_bins" "${T[@]}"
for id in 0.5 0.9; do
  $PLM data cluster --in $D/pretrain/metagenomic/metagenomic_mix.fasta.gz --min-identity $id \
    --out "$W/clusters/metagenomic_${id}.tsv" "${T[@]}"
done
# Small copies of the summaries for the repo.
for src in uniprot metagenomic; do cp "$W/decontaminate_$src/summary.json" "$HERE/decontaminate_$src.json"; done
cp "$W/cath_bins/summary.json" "$HERE/cath_s40_bins.json"
for id in 0.5 0.9; do cp "$W/clusters/metagenomic_${id}.tsv.json" "$HERE/cluster_metagenomic_${id}.json"; done
# prepare consumes the cluster TSVs (cluster first, member second); its manifest counts matched members.
for id in 0.5 0.9; do
  $PLM data prepare --source metagenomic=$D/pretrain/metagenomic/metagenomic_mix.fasta.gz \
    --clusters metagenomic="$W/clusters/metagenomic_${id}.tsv" --out "$W/prepared_$id" --quiet
  .venv/bin/python -c "import json, sys; m = json.load(open(sys.argv[1])); json.dump(m['train']['clusters'], open(sys.argv[2], 'w'), indent=2)" \
    "$W/prepared_$id/metagenomic/manifest.json" "$HERE/prepare_clusters_metagenomic_$id.json"
done
