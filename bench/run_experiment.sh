#!/usr/bin/env bash
# XITE vs zero-shot on chatterbot-corpus, English -> Korean / Japanese (experiments/driver.py).
#   CONFIG=e5s12 (default): full 12-layer e5-small, embeddings + bottom 10 layers frozen, top 2 trained;
#                           also the OT pre-alignment (ot-align, xite-sentence+ot) and EAR (ear,
#                           xite-sentence+ear) stage-1 variants
#   CONFIG=e5s6           : e5-small truncated to 6 layers, embeddings + bottom 4 layers frozen
# Writes bench/results/experiment_<CONFIG>.md / .csv (+ raw runs in experiment_<CONFIG>_runs*.jsonl).
# Finished runs are cached in the jsonl files and stage 1 is checkpointed under
# ~/.cache/xite_fast/experiment/, so rerunning the same command continues where it stopped.
# No flock: this is an accuracy experiment (not a timing benchmark) and runs for tens of minutes.
# Measured wall time on the shared 2-core box (3 seeds in parallel, load ~8): e5s6 32 min, e5s12 ~60 min.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
CONFIG=${CONFIG:-e5s12}
OUT=bench/results/experiment_${CONFIG}
case "$CONFIG" in
  e5s12) ARGS=(--num-layers 12 --freeze-layers 10 --hidden-layer 10 --stage1-epochs 4 --lr 1e-4 --head-lr 5e-3
               --stage2-epochs 2 --stage2-lr 5e-5 --stage2-head-lr 1e-3
               --stage1-variants plain ot ear --aligned-variants xite-sentence) ;;
  e5s6)  ARGS=(--num-layers 6 --freeze-layers 4 --hidden-layer 4 --stage1-epochs 3 --stage2-epochs 1) ;;
  *) echo "unknown CONFIG=$CONFIG (e5s12 | e5s6)" >&2; exit 2 ;;
esac
COMMON=(--langs korean japanese --out "$OUT" --max-length 32 --threads 1 "${ARGS[@]}")

if [[ "${PARALLEL:-1}" == "1" ]]; then
  # one single-threaded process per seed, then merge all runs into one table
  for s in 0 1 2; do
    "$PY" -m experiments.driver "${COMMON[@]}" --seeds "$s" --runs-file "${OUT}_runs_s$s.jsonl" \
      > "${OUT}_s$s.log" 2>&1 &
  done
  wait
fi
# sequential form (PARALLEL=0 runs everything here); after the parallel runs this only merges the tables
# (TABLES_ONLY=1: merge whatever finished, never train)
"$PY" -m experiments.driver "${COMMON[@]}" --seeds 0 1 2 ${TABLES_ONLY:+--tables-only}
