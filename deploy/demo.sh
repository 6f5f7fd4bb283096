#!/usr/bin/env bash
# The main job: set up, start a local Ray cluster, deploy serve_config.yaml (the whole
# loop: ingest, Ray Data cleaning, Ray Train incremental trainer, Serve replicas), stream
# the synthetic event stream over HTTP and print live recommendations as the model learns.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh
. .venv/bin/activate
export RAY_USAGE_STATS_ENABLED=0
# Ray 2.60 protects a cluster with a token; `ray start` and `serve deploy` must both use it.
export RAY_AUTH_MODE=token
[ -s "$HOME/.ray/auth_token" ] || ray get-auth-token --generate >/dev/null
# auth: POST /events and /status need a bearer token; keep one in ~/.increc/token (mode 0600)
# and export it before `ray start`, so the Serve replicas inherit it
if [ -z "${INCREC_TOKEN:-}" ]; then
  mkdir -p "$HOME/.increc"
  [ -s "$HOME/.increc/token" ] || (umask 077 && python -c "import secrets; print(secrets.token_urlsafe(24))" > "$HOME/.increc/token")
  INCREC_TOKEN=$(cat "$HOME/.increc/token")
  export INCREC_TOKEN
fi
ray stop --force >/dev/null 2>&1 || true
rm -rf /tmp/increc_ray   # the data_dir of serve_config.yaml: start from an empty stream
ray start --head --disable-usage-stats
serve deploy serve_config.yaml
increc demo --events "${DEMO_EVENTS:-8000}"
echo
echo "The app keeps running: Ray dashboard at http://127.0.0.1:8265 (Serve, Train, Data and Metrics),"
echo "try: curl 'http://127.0.0.1:8000/recommend?user_id=u1&k=10'   stop with: ray stop"
echo "     curl -H \"Authorization: Bearer \$(cat ~/.increc/token)\" http://127.0.0.1:8000/status"
