#!/usr/bin/env bash
# Create .venv (if missing) and install increc_ray with its test and bench extras.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is a local CPU build on our machines; an unpinned torch
# would pull a multi-GB CUDA build. GPU machines may install their own CUDA build first.
python -c "import torch" 2>/dev/null || pip install -q "torch==2.13.0"
pip install -q -e ".[test,bench]"
