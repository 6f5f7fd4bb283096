#!/usr/bin/env bash
# Reproduce bench/results/offline_ml-100k.json and offline_ml-latest-small.json: the product's
# model, trained and measured with the leave-one-out full-ranking protocol (increc_ray/offline.py).
# One dataset at a time, torch on 2 threads; see README "Offline quality" for the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data}
for f in "$DATA/ml-100k/u.data" "$DATA/ml-latest-small/ratings.csv"; do
  python -m increc_ray.cli evaluate offline --data "$f" --out bench/results
done
