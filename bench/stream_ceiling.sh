#!/usr/bin/env bash
# How far can *retraining* take ml-100k? The replay of bench/stream.sh with the ml-100k profile,
# but a full retrain from scratch after every window (--retrain-every 1: 4x the retraining compute
# of the main run) -> bench/results/stream_ml-100k_retrain-every-window.json (+ PNGs). About 20
# minutes on one core. README "Incremental vs retraining" compares it with the 1.2x-static goal.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
# the project venv (deploy/setup.sh) unless PYTHON names another interpreter
if [ -n "${PYTHON:-}" ]; then PY=$PYTHON; elif [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python; fi
"$PY" -m increc_ray.cli evaluate stream --data "$DATA/ml-100k/u.data" --name ml-100k_retrain-every-window \
  --profile ml-100k --retrain-every 1 --no-variants --out bench/results "$@"
