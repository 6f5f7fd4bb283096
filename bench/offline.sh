#!/usr/bin/env bash
# Reproduce bench/results/offline_ml-100k.json and offline_ml-latest-small.json: each dataset's
# profile (deploy/profiles/<dataset>.yaml: its model, trained by its bootstrap settings), measured
# with the leave-one-out full-ranking protocol (increc_ray/evaluate/offline.py). One dataset at a
# time, torch on 2 threads; see README "Offline quality" for the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
# the project venv (deploy/setup.sh) unless PYTHON names another interpreter
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
"$PY" -m increc_ray.cli evaluate offline --data "$DATA/ml-100k/u.data" --profile ml-100k --out bench/results "$@"
"$PY" -m increc_ray.cli evaluate offline --data "$DATA/ml-latest-small/ratings.csv" --profile ml-latest-small \
  --out bench/results "$@"
