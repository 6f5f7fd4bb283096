"""Recommend-endpoint throughput against a do-nothing Serve deployment, measured in one run.

Starts a local Ray cluster, deploys a do-nothing deployment (the ceiling of the proxy on
this machine) and the increc_ray app, streams synthetic events until a model version is
served, then drives each with the same closed-loop load (C concurrent clients on loopback,
for a fixed time) and reports requests/s, latency percentiles and the ratio to the ceiling.

    python bench/serve_bench.py [--seconds 10] [--clients 4 16] [--port 8765] [--out bench/results/serve.json]

The load starts once the trainer has applied every event (and the replica serves that
version), so no update competes with the measured requests for the 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import tempfile
import threading
import time

import httpx
import numpy as np


def drive(url: str, params_for, seconds: float, clients: int) -> dict:
    """Closed-loop load: ``clients`` threads, each sending one request after another."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    stop_at = time.perf_counter() + seconds

    def client(i: int) -> None:
        with httpx.Client(timeout=30.0) as c:
            n = 0
            while time.perf_counter() < stop_at:
                t0 = time.perf_counter()
                try:
                    r = c.get(url, params=params_for(i, n))
                    ok = r.status_code == 200
                except httpx.TransportError:
                    ok = False
                latencies[i].append((time.perf_counter() - t0) * 1000)
                errors[i] += not ok
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    lat = np.concatenate([np.asarray(x) for x in latencies]) if any(latencies) else np.zeros(1)
    return {"clients": clients, "requests": int(lat.size), "errors": int(sum(errors)),
            "rps": round(lat.size / elapsed, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2)}


def _settled(status: dict) -> bool:
    """Every posted event cleaned and applied, and the newest version served."""
    lag = status["lag"]
    return (status["served_version"] >= 1 and status["served_version"] == status["model_version"]
            and lag["pending_files"] == 0 and lag["clean_parts_behind"] == 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--events", type=int, default=4000)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", default="bench/results/serve.json")
    args = parser.parse_args()

    import ray
    from ray import serve
    from starlette.responses import JSONResponse

    from increc_ray.serve.app import app_builder
    from increc_ray.evaluate.synthetic import SyntheticStream

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("INCREC_TOKEN", secrets.token_urlsafe(24))  # auth: the cluster's workers inherit it
    ray.init(address="local", include_dashboard=False, log_to_driver=False)  # a cluster of our own
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})

    @serve.deployment(ray_actor_options={"num_cpus": 0.1})
    class Noop:
        async def __call__(self, request):
            return JSONResponse({"ok": True})

    serve.run(Noop.bind(), name="noop", route_prefix="/noop")
    data_dir = tempfile.mkdtemp(prefix="increc_bench_")
    serve.run(app_builder({"config": {"data_dir": data_dir, "trainer": {"min_new_events": 50, "max_new_events": 500}}}),
              name="increc", route_prefix="/")
    base = f"http://127.0.0.1:{args.port}"
    stream = SyntheticStream(n_users=1000, n_items=1000, seed=0)
    with httpx.Client(base_url=base, timeout=60, headers={"Authorization": f"Bearer {os.environ['INCREC_TOKEN']}"}) as c:
        for _ in range(args.events // 200):
            c.post("/events", content=json.dumps(stream.next_events(200))).raise_for_status()
        deadline = time.time() + 300
        while not _settled(c.get("/status").json()) and time.time() < deadline:
            time.sleep(1)
        status = c.get("/status").json()
    users = sorted({f"u{i}" for i in range(1000)})

    results = []
    for clients in args.clients:
        noop = drive(f"{base}/noop", lambda i, n: None, args.seconds, clients)
        rec = drive(f"{base}/recommend", lambda i, n: {"user_id": users[(i * 7919 + n) % len(users)], "k": 10},
                    args.seconds, clients)
        row = {"clients": clients, "noop": noop, "recommend": rec, "ratio_rps": round(rec["rps"] / noop["rps"], 3)}
        results.append(row)
        print(f"{clients:3d} clients  do-nothing {noop['rps']:7.1f} req/s p50 {noop['p50_ms']:6.1f} ms | "
              f"recommend {rec['rps']:7.1f} req/s p50 {rec['p50_ms']:6.1f} ms p99 {rec['p99_ms']:6.1f} ms "
              f"errors {rec['errors']} | ratio {row['ratio_rps']:.2f}", flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"results": results, "seconds": args.seconds, "model_version": status["served_version"],
                   "items": status["trainer"]["progress"].get("n_items"), "machine": {
                       "cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}},
                  f, indent=1)
    print(f"wrote {args.out}")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
