"""Retention in the deployed app, over HTTP (``ingest.retention_s``; ``bench/retention.py`` is the
Ray-free run of the same code over a longer stream, with and without it).

Deploys what ``serve deploy serve_config.yaml`` runs (its profile, or ``--profile``) on a local
cluster with a short retention (``--retention-days``, the serving ttls set to match, as the config
requires, and a prune every 2 s instead of 300 s: the bench-only settings, written into the
result file), posts a synthetic stream spanning ``--days`` days of event time over HTTP, and
waits until the trainer has learned it and checkpointed past the old parts and the ingest has
pruned them. Then it records, from ``/status`` and the data_dir: the parts, landing, quarantine
and ledger files left against what was written; the ledger's identity over every event posted;
what a client's retry of the first event gets (a ``retention`` refusal, not a second copy); and
that ``/recommend`` still answers from the model.

    python bench/retention_deployed.py [--events 30000] [--days 60] [--retention-days 14]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import sys
import tempfile
import time

import httpx
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.ingest.landing import CleanStore  # noqa: E402
from retention import folder  # noqa: E402
from serve_load import _merge, status, wait  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAY = 86400


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=30_000)
    ap.add_argument("--days", type=float, default=60.0, help="event time the stream spans")
    ap.add_argument("--batch", type=int, default=500, help="events per POST")
    ap.add_argument("--retention-days", type=float, default=14.0)
    ap.add_argument("--profile", default=None)
    ap.add_argument("--port", type=int, default=8767)
    ap.add_argument("--timeout-s", type=float, default=900.0)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "retention_deployed.json"))
    args = ap.parse_args()

    token = secrets.token_urlsafe(24)
    os.environ.update({"INCREC_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"})
    import ray
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    from increc_ray.evaluate.synthetic import SyntheticStream

    keep = args.retention_days * DAY
    bench_config = {"ingest": {"retention_s": keep, "prune_interval_s": 2.0},
                    "serving": {"user_ttl_s": keep, "item_ttl_s": keep},
                    "bootstrap": {"epochs": 1, "eval_every": 1, "max_minutes": 3.0}}
    data_dir = os.path.join(tempfile.mkdtemp(prefix="increc_ret_"), "data")
    with open(os.path.join(ROOT, "serve_config.yaml")) as f:
        config = yaml.safe_load(f)
    config["http_options"] = {**config.get("http_options", {}), "port": args.port}
    app = config["applications"][0]
    app["args"]["config"] = _merge(app["args"].get("config", {}), {**bench_config, "data_dir": data_dir})
    if args.profile:
        app["args"]["profile"] = args.profile
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    client = serve_start(http_options=config["http_options"])
    client.deploy_apps(ServeDeploySchema.model_validate(config))
    base, auth = f"http://127.0.0.1:{args.port}", {"Authorization": f"Bearer {token}"}
    stream = SyntheticStream(n_users=500, n_items=2000, new_item_every=0, drift_every=0, seed=0,
                             seconds_per_event=args.days * DAY / args.events)
    result: dict = {"bench": "retention_deployed", "profile": app["args"].get("profile"), "bench_config": bench_config,
                    "events": args.events, "days": args.days, "batch": args.batch,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version()}}
    t0 = time.time()
    first = None
    with httpx.Client(base_url=base, timeout=120, headers=auth) as c:
        wait(lambda: c.get("/healthz").status_code == 200, 300, "the app up", interval_s=1.0)
        accepted = 0
        for i in range(0, args.events, args.batch):
            batch = stream.next_events(min(args.batch, args.events - i))
            first = first or batch[0]
            r = c.post("/events", content=json.dumps(batch))
            r.raise_for_status()
            accepted += r.json()["accepted"]
        result["posted"] = {"events": args.events, "accepted": accepted, "seconds": round(time.time() - t0, 1)}
        print(f"posted {args.events} events ({accepted} accepted) in {result['posted']['seconds']} s", flush=True)

        def pruned():
            s = status(c)
            p = s["ingest"]["pruned"]
            print(f"  t={time.time() - t0:.0f}s served v{s['served_version']}, parts behind "
                  f"{s['lag']['clean_parts_behind']}, pruned parts {p['parts']}", flush=True)
            # caught up, and a prune has run since the trainer's last checkpoint moved far enough
            return s if p["parts"] and s["lag"]["clean_parts_behind"] == 0 and s["served_version"] >= 1 else None

        wait(pruned, args.timeout_s, "the trainer caught up and old parts pruned", interval_s=5.0)
        time.sleep(10)  # a few more prune rounds (every 2 s) with the trainer's newest checkpoint
        s = status(c)
        retry = c.post("/events", content=json.dumps([first])).json()
        rec = c.get("/recommend", params={"user_id": first["user_id"], "k": 10}).json()
        s_after = status(c)
    ingest = s["ingest"]
    written_parts = ingest["clean_parts"]
    result.update({
        "seconds": round(time.time() - t0, 1),
        "clean_parts_written": written_parts, "pruned": ingest["pruned"],
        "disk": {k: folder(os.path.join(data_dir, k), digits=3) for k in ("clean", "landing", "quarantine", "ledger")},
        "seen_keys": ingest["seen_keys"], "retention_horizon": ingest["retention_horizon"],
        "ledger": s["ingest"]["ledger"], "ledger_after_retry": s_after["ingest"]["ledger"],
        "ledger_accounts_for_every_event": s["ingest"]["ledger"]["balanced"] and s["ingest"]["ledger"]["received"] == args.events,
        "retry_of_first_event": {"accepted": retry["accepted"], "duplicates": retry["duplicates"],
                                 "rejected": [r["reason"] for r in retry["rejected"]]},
        "recommend_after": {"source": rec.get("source"), "items": len(rec.get("items", [])),
                            "model_version": rec.get("model_version")},
        "trainer_offset": CleanStore(os.path.join(data_dir, "clean")).consumed(),
        "last_error": ingest.get("last_error"),
    })
    print(json.dumps({k: v for k, v in result.items() if k not in ("machine",)}, indent=1))
    print("written", write_result(result, os.path.dirname(args.out), os.path.basename(args.out)))
    from ray import serve

    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
