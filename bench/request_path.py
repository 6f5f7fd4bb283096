"""What a recommend answer costs a replica beyond Serve's own request path (Ray-free).

The deployed replica class (``increc_ray.serve.recommender.Recommender``, built with stand-in
handles: no cluster) with a scorer of the profile's shape, warmed on synthetic events over
``--items`` items, and its user-history copy holding those events; its FastAPI app is driven
in-process through ASGI by ``--concurrency`` closed-loop clients, for ``--seconds`` at each.
Measured at each concurrency: requests per second of this one process and its CPU per request;
the batch sizes ``@serve.batch`` formed; and, in the same run, two baselines: the same driver
against the do-nothing app (``bench/noop_app.py``'s answer), and the same replica's app with
every recommend call through FastAPI's route (``build_api(..., fast_recommend=False)``, what
the replica ran before plain calls skipped it). Serve's own per-request cost is
what ``bench/serve_load.py --phases profile`` measures on the do-nothing replica; README ("The
0.7x goal is out of reach") sets the two side by side.

The config is the deployed one: ``serve_config.yaml``'s application args (its profile, or
``--profile``, and its ``config``, with ``--override`` merged on top); the replica's metrics
are recorded as deployed when Ray is initialised (``--ray``) and are no-ops otherwise. Writes
``bench/results/request_path.json``.

    .venv/bin/python bench/request_path.py
    .venv/bin/python bench/request_path.py --items 10000 --concurrency 1 4 16 64 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import sys
import threading
import time

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from increc_ray import telemetry  # noqa: E402
from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.evaluate.synthetic import SyntheticStream  # noqa: E402
from increc_ray.ingest.clean import clean_batch  # noqa: E402
from increc_ray.learn.learner import IncrementalLearner  # noqa: E402
from increc_ray.profiles import from_app_args, merge  # noqa: E402
from increc_ray.serve.history import UserHistoryIndex  # noqa: E402
from increc_ray.serve.recommender import Recommender  # noqa: E402
from increc_ray.serve.scorer import Scorer  # noqa: E402
from increc_ray.serve.standin import Handle  # noqa: E402

HERE = os.path.dirname(__file__)


def build(cfg, items: int, users: int, events: int, updates: int):
    """A replica (Ray-free) answering with a version learned on ``events`` synthetic events,
    its history copy holding them; and the users with a history."""
    stream = SyntheticStream(n_users=users, n_items=items, new_item_every=0, drift_every=0, seed=0)
    clean = clean_batch(pa.Table.from_pylist(stream.next_events(events)), cfg.cleaning, "bench").clean
    learner = IncrementalLearner(cfg.model, cfg.trainer)
    learner.observe(clean)
    for _ in range(updates):
        learner.update()
    weights = learner.export_weights(1)
    serving = cfg.serving
    index = UserHistoryIndex(serving.recent_items_per_user, serving.popularity_half_life_s)
    index.append(clean)
    snapshot = pickle.dumps(index)
    stop = threading.Event()

    def follow(sub, epoch, after, timeout_s):  # the first poll: the snapshot; then nothing new
        if epoch is None:
            return {"epoch": "e", "seq": 0, "snapshot": snapshot, "rows": []}
        stop.wait(timeout_s)
        return {"epoch": "e", "seq": 0, "rows": []}

    history = Handle(follow=follow, popular=lambda k, exclude: index.popular(k, exclude),
                     context=lambda user: index.get(user))

    def wait_newer(after, timeout_s):  # nothing newer is published while it runs
        stop.wait(timeout_s)

    trainer = Handle(wait_newer=wait_newer)
    replica = Recommender.func_or_class.__new__(Recommender.func_or_class)
    config = cfg.model_dump()
    config["auth"]["required"] = False
    asyncio.run(replica.__init__(config, Handle(), history, trainer))
    replica._scorer = Scorer.from_published(weights, replica._index, None)
    replica._followed = 1
    known = sorted(set(clean.column("user_id").to_pylist()))
    return replica, known, stop, learner.n_items


def _scope(path: bytes, query: bytes) -> dict:
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
            "path": path.decode(), "raw_path": path, "query_string": query, "root_path": "",
            "headers": [(b"host", b"127.0.0.1:8000")], "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 8000)}


async def drive(app, users: list[str], concurrency: int, seconds: float, check: bool) -> dict:
    """``concurrency`` closed-loop clients for ``seconds``: req/s and CPU ms per request."""
    done = [0]
    bad: list = []
    rng = np.random.default_rng(concurrency)
    picks = [users[i] for i in rng.integers(len(users), size=200_000)]

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def client(c: int, until: float) -> None:
        n = c
        while time.perf_counter() < until:
            user = picks[n % len(picks)]
            n += concurrency
            out: list = []

            async def send(m):
                out.append(m)

            await app(_scope(b"/recommend", f"user_id={user}&k=10".encode()), receive, send)
            done[0] += 1
            if check and len(bad) < 5 and (out[0]["status"] != 200 or b'"source":"model"' not in out[1]["body"]):
                bad.append((out[0]["status"], out[1]["body"][:200]))

    until = time.perf_counter() + 0.5  # warm-up
    await asyncio.gather(*(client(c, until) for c in range(concurrency)))
    done[0] = 0
    cpu, wall = time.process_time(), time.perf_counter()
    until = wall + seconds
    await asyncio.gather(*(client(c, until) for c in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"requests": done[0], "rps": round(done[0] / wall, 1), "cpu_ms_per_request": round(cpu / done[0] * 1e3, 3),
            "not_model_answers": bad}


def encoder_floor(scorer, batch: int = 16, repeat: int = 50) -> dict:
    """The encoder's arithmetic per answer against what this core's matrix product does: its
    multiply-adds for a full-length history (``hidden_at``: every layer's projections and MLP
    over every position but the last layer's, which runs its K/V projection everywhere and the
    rest at the newest position), the time ``Encoder`` takes for a batch of them, and the rate
    of one plain matrix product of the first layer's MLP shape, measured in the same run."""
    import torch

    from increc_ray.learn.model import left_pad

    enc = scorer.encoder
    C, T, L = enc.d_model, enc.max_len, len(enc.layers)
    ff = enc.layers[0][8].shape[1]  # the MLP's inner width
    per_token = 4 * C * C + 2 * C * ff  # QKV + output projection + MLP
    attention = 2 * T * C  # scores and weighted values, per query
    macs = (L - 1) * T * (per_token + attention) + T * 3 * C * C + (C * C + 2 * C * ff + attention)
    rng = np.random.default_rng(0)
    seqs = left_pad([torch.as_tensor(rng.integers(1, len(scorer.vocab) + 1, size=T)) for _ in range(batch)])

    def timed(fn) -> float:
        fn()
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        return (time.perf_counter() - t) / repeat

    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode():
        per_answer = timed(lambda: enc(seqs)) / batch
        x, w = torch.randn(batch * T, C), torch.randn(C, ff)
        mm = timed(lambda: x @ w)
        with profile(activities=[ProfilerActivity.CPU]) as prof:  # where the encoder's time goes, by op
            for _ in range(repeat):
                enc(seqs)
    rate = batch * T * C * ff / mm
    ops = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    addmm_s = ops.get("aten::addmm", 0.0) / 1e6 / repeat / batch  # per answer
    addmm_macs = macs - (L - 1) * T * attention - attention  # the projections and MLPs
    return {"d_model": C, "layers": L, "positions": T, "batch": batch, "macs_per_answer": int(macs),
            "encoder_ms_per_answer": round(per_answer * 1e3, 4),
            "encoder_gmacs": round(macs / per_answer / 1e9, 2), "matmul_gmacs": round(rate / 1e9, 2),
            "floor_ms_per_answer": round(macs / rate * 1e3, 4),
            # torch.profiler: the matrix products' share of the encoder's time, and their rate
            "addmm_share": round(ops.get("aten::addmm", 0.0) / sum(ops.values()), 3),
            "addmm_gmacs": round(addmm_macs / addmm_s / 1e9, 2) if addmm_s else None}


async def noop_app(scope, receive, send):
    from starlette.responses import JSONResponse

    await JSONResponse({"ok": True})(scope, receive, send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=None, help="deploy/profiles/NAME.yaml (default: serve_config.yaml's)")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--override", default="{}", help="JSON merged into the profile (written into the result)")
    parser.add_argument("--ray", action="store_true", help="record the replica's metrics in a local Ray (as deployed)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "request_path.json"))
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from ray.serve import batching

    # outside a replica there is no deployment config to warn against
    batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None
    if args.ray:
        import ray

        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    else:
        telemetry.observe = telemetry.inc = lambda *a, **k: None  # noqa: E731
    app_args = _deployed_app_args()  # what `serve deploy serve_config.yaml` builds its config from
    if args.profile:
        app_args["profile"] = args.profile
    app_args["config"] = merge(app_args.get("config") or {}, json.loads(args.override))
    profile = app_args.get("profile")
    t = time.perf_counter()
    replica, users, stop, n_items = build(from_app_args(app_args), args.items, args.users, args.events, args.updates)
    print(f"built in {time.perf_counter() - t:.1f} s: {n_items} items, {len(users)} users, profile {profile}")
    app = replica.__serve_build_asgi_app__()
    # the baseline of the plain-call path, in the same run: every recommend call through FastAPI
    from increc_ray.serve.api import build_api

    routed = build_api(replica, replica.cfg, None, fast_recommend=False)
    rows = []

    async def run_all():
        for c in args.concurrency:
            base = await drive(noop_app, users, c, args.seconds, False)
            fastapi = await drive(routed, users, c, args.seconds, True)
            passes, answers = replica.batches, replica.batched  # the replica's own count of its forward passes
            got = await drive(app, users, c, args.seconds, True)
            passes, answers = replica.batches - passes, replica.batched - answers
            row = {"concurrency": c, "noop": base, "recommend": got, "recommend_fastapi_route": fastapi,
                   "cpu_ms_over_noop": round(got["cpu_ms_per_request"] - base["cpu_ms_per_request"], 3),
                   "plain_path_saves_ms": round(fastapi["cpu_ms_per_request"] - got["cpu_ms_per_request"], 3),
                   "mean_batch": round(answers / passes, 1) if passes else None}
            rows.append(row)
            print(f"{c:>3} clients: recommend {got['rps']:>7} req/s, {got['cpu_ms_per_request']:.3f} ms CPU a request "
                  f"(every call through FastAPI {fastapi['cpu_ms_per_request']:.3f}, do-nothing "
                  f"{base['cpu_ms_per_request']:.3f}); mean batch {row['mean_batch']}; "
                  f"not from the model: {got['not_model_answers'][:1]}")

    asyncio.run(run_all())
    stop.set()
    replica._stop.set()
    floor = encoder_floor(replica._scorer)
    print(f"encoder: {floor['macs_per_answer'] / 1e6:.2f} M multiply-adds an answer, {floor['encoder_ms_per_answer']} ms "
          f"({floor['encoder_gmacs']} G/s) at batch {floor['batch']}, its matrix products {floor['addmm_share']:.0%} of "
          f"it at {floor['addmm_gmacs']} G/s; this core's matrix product {floor['matmul_gmacs']} G/s, so "
          f"{floor['floor_ms_per_answer']} ms an answer at best")
    result = {"profile": profile, "override": json.loads(args.override), "items": n_items, "users": len(users), "seconds": args.seconds,
              "metrics": "ray" if args.ray else "off", "rows": rows, "encoder": floor}
    write_result(result, os.path.dirname(args.out), os.path.basename(args.out))
    print(json.dumps({r["concurrency"]: r["cpu_ms_over_noop"] for r in rows}))


def _deployed_app_args() -> dict:
    import yaml

    with open(os.path.join(HERE, "..", "serve_config.yaml")) as f:
        return dict(yaml.safe_load(f)["applications"][0]["args"])


if __name__ == "__main__":
    main()
