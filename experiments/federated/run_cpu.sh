#!/usr/bin/env bash
# The CPU-sized runs recorded in README.md, one after another (one intra-op thread: the two cores
# are shared). Results are copied from runs/ (ignored by git) to results/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} TOKENIZERS_PARALLELISM=false
PY=${PY:-.venv/bin/python}   # another interpreter: PY=/path/to/python bash experiments/federated/run_cpu.sh
mkdir -p experiments/federated/results experiments/federated/runs
[ -f experiments/federated/results/base.json ] || $PY experiments/federated/base_scores.py experiments/federated/cpu/fedit-hom.yaml
for name in ${RUNS:-fedalora-hom fedsa-hom fedit-hom feddpa-hom fedalora-het fedalora-het-product fedsa-het zeropadding-het flora-het}; do
  start=$(date +%s)
  code=0
  $PY -m asymlora federate experiments/federated/cpu/$name.yaml --engine local > experiments/federated/runs/$name.log 2>&1 || code=$?
  mkdir -p experiments/federated/results/$name
  # a run that stopped (exit 1: a round without a valid update) still leaves its rounds so far
  cp experiments/federated/runs/$name/results.{json,md} experiments/federated/runs/$name/scores.png experiments/federated/results/$name/ 2>/dev/null || true
  echo "$name done in $(( $(date +%s) - start )) s, exit $code" | tee -a experiments/federated/results/wall_times.txt
done
