#!/usr/bin/env bash
# Set up (if needed) and run the whole default test suite: unit tests of the Ray-free
# core, doctests, and integration tests against a real local Ray cluster + Serve app.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
. .venv/bin/activate
exec python -m pytest -q "$@"
