#!/usr/bin/env bash
# Reproduce bench/results/stream_ml-latest-small.json and stream_ml-100k.json (+ PNG plots): the
# prequential replay of increc_ray/evaluate/prequential.py comparing static, incremental (the live
# update path), periodic full retraining, last-window fine-tuning, recent popularity and the
# article's update rules, each run reading only its dataset's profile (deploy/profiles/). One
# dataset at a time (about 9 and 13 minutes), torch on one thread; see README "Incremental vs
# retraining".
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
# the project venv (deploy/setup.sh) unless PYTHON names another interpreter
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
"$PY" -m increc_ray.cli evaluate stream --data "$DATA/ml-latest-small/ratings.csv" --profile ml-latest-small \
  --out bench/results "$@"
"$PY" -m increc_ray.cli evaluate stream --data "$DATA/ml-100k/u.data" --profile ml-100k --out bench/results "$@"
