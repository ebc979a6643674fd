#!/usr/bin/env bash
# The small real IsoFLOP sweep of issue #5: CLM and MLM, 3 budgets × 5 shapes each, on the bundled sample
# (data/sample), on a 2-core CPU. Two single-threaded runs at a time; ≈1–2 h here. Resumable: rerun
# the same command after an interruption (finished runs are skipped, unfinished ones resume).
#   bash evaluation/results/scaling/run.sh [WORK_DIR]      (runs go to WORK_DIR, default /tmp/plm-scaling)
set -euo pipefail
cd "$(dirname "$0")/../../.."
W=${1:-/tmp/plm-scaling}
HERE=evaluation/results/scaling
PLM=${PLM:-.venv/bin/plm}
COMMON=(--out "$W" --row-len 256 --rows-per-batch 16 --val-rows 256 --lr 1e-3 --precision 32-true --min-steps 20
        --parallel 2 --threads 1 --run)
# the shapes move up with the budget, as in Chinchilla's IsoFLOP grids (the optimum grows with C)
for objective in clm mlm; do
  $PLM sweep --objective $objective --budgets 1e12,3e12 --sizes 1x32,2x48,2x64,3x96,4x128 "${COMMON[@]}"
  $PLM sweep --objective $objective --budgets 1e13 --sizes 2x32,2x48,2x64,3x96,4x128 "${COMMON[@]}"
done
# at 1e12 both curves are one-sided with these shapes (smallest best): two smaller shapes try to bracket them
for objective in clm mlm; do
  $PLM sweep --objective $objective --budgets 1e12 --sizes 1x16,1x24 "${COMMON[@]}"
done
cp "$W/results.csv" "$HERE/results.csv"
# at these CPU budgets most curves are one-sided (smallest shape best): fit them anyway, flagged as such
$PLM fit-laws "$HERE/results.csv" --keep-extrapolated --plots "$HERE" --json > "$HERE/fit.json"
$PLM fit-laws "$HERE/results.csv" --keep-extrapolated | tee "$HERE/fit.txt"
