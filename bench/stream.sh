#!/usr/bin/env bash
# Reproduce bench/results/stream_ml-latest-small.json and stream_ml-100k.json (+ PNG plots): the
# prequential replay of increc_ray/prequential.py comparing static, incremental (the live update
# path), periodic full retraining, last-window fine-tuning, recent popularity and the article's
# update rules. One dataset at a time (about 9 and 13 minutes), torch on one thread; see README
# "Incremental vs retraining".
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
# the project venv (deploy/setup.sh) unless PYTHON names another interpreter
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
for f in "$DATA/ml-latest-small/ratings.csv" "$DATA/ml-100k/u.data"; do
  "$PY" -m increc_ray.cli evaluate stream --data "$f" --out bench/results "$@"
done
