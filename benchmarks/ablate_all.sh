#!/usr/bin/env bash
# Every ablation table of docs/ablations.md, resumably, data-parallel on W processes:
# Table 2b (shapes, about 1.5 minutes a run) whole, then seed 0 of the nuclei tables (an early
# look at every row), then their seeds 1 and 2.
#
#   bash benchmarks/ablate_all.sh DSB2018_DIR [OUT_DIR] [W]
#
# DSB2018_DIR holds train.json, val.json and images/; OUT_DIR defaults to runs/ablations,
# W to 2. Kill it at any time and start it again: finished runs are skipped, interrupted ones
# resume from their last checkpoint. Then write the tables:
#   minimaskrcnn ablate --out OUT_DIR --report docs/ablations.md
set -euo pipefail
dsb=${1:?usage: ablate_all.sh DSB2018_DIR [OUT_DIR] [W]}
out=${2:-runs/ablations}
w=${3:-2}
export NUMBA_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
nuclei=(--train-json "$dsb/train.json" --images "$dsb/images" --val-json "$dsb/val.json")
run() {  # table, seeds, first seed
  local data=()
  [ "$1" != 2b ] && data=("${nuclei[@]}")
  mpiexec -n "$w" minimaskrcnn ablate --table "$1" --seeds "$2" --first-seed "$3" \
    "${data[@]}" --out "$out" --no-progress
}
status=0
run 2b 3 0 || { echo "table 2b failed"; status=1; }
for t in 2d 2e 2c; do run "$t" 1 0 || { echo "table $t (seed 0) failed"; status=1; }; done
for t in 2c 2d 2e; do run "$t" 2 1 || { echo "table $t (seeds 1-2) failed"; status=1; }; done
exit $status
