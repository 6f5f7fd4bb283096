"""Live replay: the deployed system's own quality, measured over HTTP against a real deployment.

    python bench/live_replay.py --data ../shared/data/ml-100k/u.data --deploy --serve-config serve_config.yaml
    python bench/live_replay.py --data FILE --url http://127.0.0.1:8000     # a running app

Protocol (the stream harness's, ``increc evaluate stream``, where HTTP allows):

1. The file is read and cleaned as the harness does (``offline.load_interactions``: every
   rating a positive), then stably sorted by timestamp. Ratings are posted as ``click`` events
   without a value, so the deployment's own rule (ratings below 3.5 are not positives) does not
   apply and both see the same positives; other event types are posted as they are.
2. The first ``--warmup-fraction`` of the time span is posted as a burst, ``--batch`` events per
   POST; then the benchmark polls ``/status`` until the trainer has applied all of it.
3. The rest is test-then-train: for each scored event (a user with an earlier event; ``--sample``
   of them, evenly spread), ``GET /recommend?user_id=..&k=10``; the target's position in the
   list gives HR@10 and NDCG@10. Then the events up to the next scored one are posted, in time
   order. Popularity (all-time counts of the events posted so far, the user's items excluded)
   is scored locally on the same events.

Writes ``<out>/live_<dataset>.json`` and prints a table. Only loopback URLs are accepted.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from urllib.parse import urlparse

import numpy as np

from increc_ray.evaluate import live
from increc_ray.evaluate.ranking import K

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
RETRIES = 4  # per request; POSTs are safe to retry (the service de-duplicates by content)


class Client:
    """A bounded HTTP client for one deployment on loopback: retries, latency per route."""

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        import httpx

        host = urlparse(url).hostname
        if host not in LOOPBACK:
            raise SystemExit(f"--url {url}: only loopback hosts ({', '.join(sorted(LOOPBACK))}) are allowed")
        from increc_ray.cli import client_token

        token = client_token()  # INCREC_TOKEN (a --deploy run sets one for its cluster), else ~/.increc/token
        self.http = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
        self.latency_ms: dict[str, list[float]] = {"recommend": [], "events": [], "status": []}
        self.retries = 0

    def _call(self, route: str, method: str, path: str, **kw) -> dict:
        import httpx

        for attempt in range(RETRIES):
            t0 = time.perf_counter()
            try:
                r = self.http.request(method, path, **kw)
                if r.status_code < 500:
                    self.latency_ms[route].append((time.perf_counter() - t0) * 1000)
                    if r.status_code != 200:
                        raise SystemExit(f"{method} {path}: HTTP {r.status_code}: {r.text[:500]}")
                    return r.json()
                why = f"HTTP {r.status_code}: {r.text[:200]}"
            except httpx.TransportError as e:
                why = f"{type(e).__name__}: {e}"
            self.retries += 1
            time.sleep(0.5 * 2 ** attempt)
        raise SystemExit(f"{method} {path} failed {RETRIES} times, last: {why}")

    def post(self, records: list[dict]) -> dict:
        answer = self._call("events", "POST", "/events", content=json.dumps(records),
                            headers={"content-type": "application/json"})
        if answer.get("rejected_count"):
            raise SystemExit(f"the deployment rejected {answer['rejected_count']} events: {answer.get('rejected')}")
        return answer

    def recommend(self, user_id: str, k: int) -> dict:
        return self._call("recommend", "GET", "/recommend", params={"user_id": user_id, "k": k})

    def status(self) -> dict:
        return self._call("status", "GET", "/status")


# ---- deploying -------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy_config(serve_config: str, data_dir: str, port: int, profile: str | None = None) -> tuple[dict, dict]:
    """(the Serve config to deploy, its application's args): ``serve_config``'s first application
    with ``data_dir`` in a temp dir and HTTP on a free loopback port, and ``profile`` (a named
    profile of it) in place of the file's, everything else as written."""
    import yaml

    with open(serve_config, encoding="utf-8") as f:
        doc = yaml.safe_load(f)
    doc = copy.deepcopy(doc)
    apps = doc.get("applications") or []
    assert apps, f"{serve_config}: no applications"
    app = apps[0]
    args = dict(app.get("args") or {})
    if "config_file" in args:  # inline the file, so data_dir can be overridden
        path = args.pop("config_file")
        path = path if os.path.isabs(path) else os.path.join(os.path.dirname(os.path.abspath(serve_config)), path)
        with open(path, encoding="utf-8") as f:
            args["config"] = yaml.safe_load(f) or {}
    args["config"] = {**(args.get("config") or {}), "data_dir": data_dir}  # merged over a profile, if any
    if profile:
        args["profile"] = profile
    app["args"] = args
    doc["applications"] = [app]
    doc["http_options"] = {**(doc.get("http_options") or {}), "host": "127.0.0.1", "port": port}
    return doc, args


class Deployment:
    """A private local Ray cluster running ``serve_config``'s first application, as
    ``serve deploy`` would run it (the controller applies the config: args through the app
    builder, the ``deployments:`` overrides too)."""

    def __init__(self, serve_config: str, startup_timeout_s: float = 300.0, profile: str | None = None) -> None:
        self.serve_config = serve_config
        self.startup_timeout_s = startup_timeout_s
        self.data_dir = tempfile.mkdtemp(prefix="increc_live_")
        self.port = _free_port()
        self.doc, self.args = deploy_config(serve_config, self.data_dir, self.port, profile)
        self.url = f"http://127.0.0.1:{self.port}"
        self.name = self.doc["applications"][0].get("name", "default")

    def __enter__(self) -> "Deployment":
        import ray
        from ray import serve
        from ray.serve._private import api as serve_api
        from ray.serve.schema import ServeDeploySchema

        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        os.environ.setdefault("INCREC_TOKEN", secrets.token_urlsafe(24))  # the private cluster's workers inherit it
        try:
            for attempt in range(2):  # on a loaded machine the first start can time out
                try:
                    # the driver's PYTHONPATH reaches the workers of a cluster it starts itself
                    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
                    break
                except Exception as e:
                    ray.shutdown()
                    if attempt:
                        raise
                    print(f"ray.init failed ({e}); once more", file=sys.stderr)
                    time.sleep(10)
            self._deploy(serve, serve_api, ServeDeploySchema)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _deploy(self, serve, serve_api, ServeDeploySchema) -> None:
        schema = ServeDeploySchema.model_validate(self.doc)
        client = serve_api.serve_start(http_options=schema.http_options.model_dump(),
                                       proxy_location=schema.proxy_location)
        t0 = time.perf_counter()
        client.deploy_apps(schema)
        while True:
            app = serve.status().applications.get(self.name)
            state = str(app.status) if app else "NOT_STARTED"
            if state.endswith("RUNNING"):
                break
            if state.endswith("DEPLOY_FAILED") or time.perf_counter() - t0 > self.startup_timeout_s:
                raise SystemExit(f"application {self.name} is {state}: {app.message if app else ''}")
            time.sleep(1.0)
        self.startup_seconds = round(time.perf_counter() - t0, 1)

    def __exit__(self, *exc) -> None:
        import ray
        from ray import serve

        try:
            if ray.is_initialized():
                serve.shutdown()
        finally:
            ray.shutdown()
            shutil.rmtree(self.data_dir, ignore_errors=True)


def resolved_config(args: dict) -> dict | None:
    """The app config as the product resolves it (defaults filled in), if it can say."""
    try:
        from increc_ray.profiles import from_app_args

        return from_app_args(args).to_dict()  # what app_builder deploys
    except Exception as e:  # the raw args are recorded anyway
        print(f"note: could not resolve the app config ({type(e).__name__}: {e})", file=sys.stderr)
        return None


# ---- the replay ------------------------------------------------------------------------------

class Stream:
    """The cleaned positives in time order, as plain lists."""

    def __init__(self, path: str, limit: int) -> None:
        from increc_ray import profiles
        from increc_ray.evaluate.offline import dataset_name, load_interactions

        # the harness's reading of the file: the cleaning rules of the profile named like the
        # dataset (as `increc evaluate` picks it), else the default one
        name = dataset_name(path)
        profile = name if name in profiles.profile_names() else profiles.DEFAULT_PROFILE
        events = live.time_ordered(load_interactions(path, profiles.load(profile).cleaning))
        if limit:
            events = events.slice(0, limit)
        self.n = events.num_rows
        self.users = events["user_id"].to_pylist()
        self.items = events["item_id"].to_pylist()
        self.ts = events["timestamp"].cast("int64").to_numpy(zero_copy_only=False)
        types = events["event_type"].to_pylist()
        values = events["value"].to_pylist()
        # ratings as value-less clicks: every rating a positive of weight 1, as offline_cleaning makes it
        self.types = ["click" if t == "rating" else t for t in types]
        self.values = [None if t == "rating" else v for t, v in zip(types, values)]

    def records(self, a: int, b: int) -> list[dict]:
        return [rec | ({"event_type": t} if t else {})
                for rec, t in zip(live.event_records(self.users[a:b], self.items[a:b], self.ts[a:b], None,
                                                     self.values[a:b]), self.types[a:b])]


class Replayer:
    """Posts events in time order and keeps the local view of what was posted."""

    def __init__(self, stream: Stream, client: Client, batch: int) -> None:
        self.s, self.c, self.batch = stream, client, batch
        self.posted = 0
        self.posts = 0
        self.pop = live.PopularityCounts()
        self.seen: dict[str, set[str]] = {}

    def post_until(self, end: int, batch: int | None = None) -> None:
        batch = batch or self.batch
        while self.posted < end:
            b = min(end, self.posted + batch)
            answer = self.c.post(self.s.records(self.posted, b))
            if answer.get("duplicates"):
                print(f"warning: {answer['duplicates']} duplicates: the deployment already had these events",
                      file=sys.stderr)
            self.pop.add(self.s.items[self.posted:b])
            for u, i in zip(self.s.users[self.posted:b], self.s.items[self.posted:b]):
                self.seen.setdefault(u, set()).add(i)
            self.posted = b
            self.posts += 1


def wait_caught_up(client: Client, posted: int, min_new_events: int, timeout_s: float, log) -> tuple[float, dict]:
    t0 = time.perf_counter()
    last_log = 0.0
    while True:
        status = client.status()
        ok, why = live.catch_up_state(status, posted, min_new_events)
        elapsed = time.perf_counter() - t0
        if ok:
            return elapsed, status
        if elapsed > timeout_s:
            raise SystemExit(f"not caught up after {timeout_s:.0f} s: {why}")
        if elapsed - last_log > 10:
            log(f"  waiting {elapsed:.0f} s: {why}")
            last_log = elapsed
        time.sleep(1.0)


def lag_sample(status: dict, posted: int, scored: int) -> dict:
    progress = (status.get("trainer") or {}).get("progress") or {}
    return {"scored": scored, "posted": posted, "events_seen": progress.get("events_seen"),
            "events_behind": posted - progress.get("events_seen", 0),
            "clean_parts_behind": status.get("lag", {}).get("clean_parts_behind"),
            "model_version": status.get("model_version"), "phase": status.get("phase")}


def run(opts, client: Client, stream: Stream, deployed_args: dict | None, log=print) -> dict:
    loadavg_start = os.getloadavg()  # the machine is shared: how busy it was
    n_warm = live.warmup_count(stream.ts, opts.warmup_fraction)
    candidates = live.scorable(stream.users, n_warm)
    scored = live.spread(candidates, opts.sample)
    log(f"{stream.n} events, warm-up {n_warm}, scorable {len(candidates)}, scoring {len(scored)}")
    cfg = (resolved_config(deployed_args) if deployed_args else None) or {}
    min_new = (cfg.get("trainer") or {}).get("min_new_events") or opts.min_new_events
    rep = Replayer(stream, client, opts.batch)

    t0 = time.perf_counter()
    rep.post_until(n_warm)
    burst_s = time.perf_counter() - t0
    log(f"burst: {n_warm} events in {rep.posts} POSTs, {burst_s:.1f} s")
    wait_s, status_warm = wait_caught_up(client, n_warm, min_new, opts.wait_timeout, log)
    log(f"caught up after {wait_s:.1f} s more: model v{status_warm.get('model_version')}")

    live_ranks, pop_ranks, versions, sources, lags = [], [], [], [], []
    t_replay = time.perf_counter()
    posts_before = rep.posts
    stopped_early = False
    for j, e in enumerate(scored):
        rep.post_until(int(e), opts.replay_batch)
        user, target = stream.users[e], stream.items[e]
        pop_ranks.append(rep.pop.rank(target, rep.seen.get(user, ())))
        answer = client.recommend(user, K)
        live_ranks.append(live.list_rank([x["item_id"] for x in answer["items"]], target))
        versions.append(int(answer.get("model_version") or 0))
        sources.append(answer.get("source"))
        if opts.status_every and j % opts.status_every == 0:
            lags.append(lag_sample(client.status(), rep.posted, j))
        if (j + 1) % 500 == 0:
            el = time.perf_counter() - t_replay
            lh = np.mean(np.asarray(live_ranks) < K)
            ph = np.mean(np.asarray(pop_ranks) < K)
            log(f"  {j + 1}/{len(scored)} scored, {el:.0f} s, HR@10 live {lh:.4f} popularity {ph:.4f}, "
                f"v{versions[-1]}, behind {lags[-1]['events_behind'] if lags else '?'} events")
        if time.perf_counter() - t_replay > opts.time_limit:
            stopped_early = True
            log(f"time limit {opts.time_limit:.0f} s reached after {j + 1} scored events")
            break
    replay_s = time.perf_counter() - t_replay
    final = client.status()
    lags.append(lag_sample(final, rep.posted, len(live_ranks)))
    replayed = rep.posted - n_warm
    return {"n_events": stream.n, "n_warm": n_warm, "candidates": len(candidates), "planned": len(scored), "burst_s": burst_s,
            "burst_posts": posts_before, "wait_s": wait_s, "status_warm": status_warm, "replay_s": replay_s,
            "replayed": replayed, "replay_posts": rep.posts - posts_before, "live": live_ranks, "pop": pop_ranks,
            "versions": versions, "sources": sources, "lags": lags, "stopped_early": stopped_early,
            "min_new_events": min_new, "resolved": cfg or None, "loadavg_start": loadavg_start,
            "status_final": final}


def run_burst(opts, client: Client, stream: Stream, deployed_args: dict | None, log=print) -> dict:
    """The burst check: post the first ``--burst`` events as fast as the service takes them, wait
    until the deployment has caught up (at most ``--burst-deadline`` s after the last POST), then
    ask ``/recommend`` for every user whose next event is an item new to them: HR@10 of that item,
    beside popularity counted over the same events (the user's items excluded)."""
    n = min(opts.burst, stream.n)
    targets = live.next_new_items(stream.users, stream.items, n)
    cfg = (resolved_config(deployed_args) if deployed_args else None) or {}
    min_new = (cfg.get("trainer") or {}).get("min_new_events") or opts.min_new_events
    rep = Replayer(stream, client, opts.batch)
    t0 = time.perf_counter()
    rep.post_until(n)
    t_last_post = time.perf_counter()
    log(f"burst: {n} events in {rep.posts} POSTs, {t_last_post - t0:.1f} s; {len(targets)} users to probe")
    caught_up, why, status, samples = False, "", {}, []
    while time.perf_counter() - t_last_post < opts.burst_deadline:
        status = client.status()
        caught_up, why = live.catch_up_state(status, n, min_new)
        samples.append({"s": round(time.perf_counter() - t_last_post, 1), "phase": status.get("phase"),
                        "model_version": status.get("model_version"), "why": why})
        if caught_up:
            break
        time.sleep(2.0)
    wait_s = time.perf_counter() - t_last_post
    log(f"{'caught up' if caught_up else 'NOT caught up'} {wait_s:.1f} s after the last POST ({why})")
    live_hits, pop_hits, sources, versions = [], [], [], []
    for user, item in targets.items():
        answer = client.recommend(user, K)
        live_hits.append(item in [x["item_id"] for x in answer["items"]])
        pop_hits.append(item in rep.pop.top(K, rep.seen.get(user, ())))
        sources.append(answer.get("source"))
        versions.append(int(answer.get("model_version") or 0))
    probed_s = time.perf_counter() - t_last_post
    lh, ph = float(np.mean(live_hits)), float(np.mean(pop_hits))
    se = lambda x: float(np.std(x, ddof=1) / np.sqrt(len(x))) if len(x) > 1 else None  # noqa: E731
    return {"burst_events": n, "burst_posts": rep.posts, "burst_seconds": round(t_last_post - t0, 2),
            "caught_up": caught_up, "seconds_from_last_post_to_caught_up": round(wait_s, 1),
            "seconds_from_last_post_to_probes_done": round(probed_s, 1), "deadline_s": opts.burst_deadline,
            "users_probed": len(targets),
            "live": {f"hr@{K}": lh, f"hr@{K}_se": se(np.asarray(live_hits, float))},
            "popularity": {f"hr@{K}": ph, f"hr@{K}_se": se(np.asarray(pop_hits, float))},
            "live_over_popularity_hr": round(lh / ph, 4) if ph else None,
            "goal": {"live_ge_2x_popularity": bool(ph and lh >= 2 * ph), "within_deadline": probed_s <= opts.burst_deadline},
            "source_share": {x: sources.count(x) / len(sources) for x in sorted(set(map(str, sources)))} if sources else {},
            "versions": sorted(set(versions)), "status_samples": samples[-30:],
            "gate": ((status.get("trainer") or {}).get("gate")),
            "last_full_pass": {k: v for k, v in (((status.get("trainer") or {}).get("progress") or {})
                                               .get("last_full_pass") or {}).items()},
            "resolved_app_config": cfg or None}


# ---- report ----------------------------------------------------------------------------------

def harness_figures(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    inc = doc["strategies"]["incremental"]
    conf = doc.get("config", {})
    return {"file": path, f"hr@{K}": inc[f"hr@{K}"], f"ndcg@{K}": inc[f"ndcg@{K}"], "n": inc.get("n"),
            "popularity_recent": {k: doc["strategies"].get("popularity", {}).get(k) for k in (f"hr@{K}", f"ndcg@{K}")},
            "profile": doc.get("profile"),
            # the profile layout (one Config), else the layout before profiles
            "model": conf.get("model") or conf.get("strategies", {}).get("model"),
            "incremental_trainer": conf.get("trainer") or conf.get("strategies", {}).get("incremental"),
            "warmup_epochs": (conf.get("bootstrap") or {}).get("epochs") or conf.get("strategies", {}).get("warmup_epochs")}


def setting_differences(harness: dict | None, resolved: dict | None) -> list[str]:
    """Model and trainer keys where the harness's incremental run and the deployment differ."""
    if not harness or not resolved:
        return []
    out = []
    for section, theirs in (("model", harness.get("model")), ("trainer", harness.get("incremental_trainer"))):
        ours = resolved.get(section) or {}
        for key in sorted(set(theirs or {}) & set(ours)):
            if theirs[key] != ours[key] and key not in ("use_gpu", "checkpoint_every", "clean_store_poll_interval_s"):
                out.append(f"{section}.{key}: harness {theirs[key]}, deployed {ours[key]}")
    return out


def _harness_step(harness: dict | None) -> str:
    step = ((harness or {}).get("incremental_trainer") or {}).get("min_new_events")
    return str(step) if step else "trainer.min_new_events"


def protocol_notes(r: dict, harness: dict | None, diffs: list[str], opts) -> list[str]:
    notes = [
        "Ratings were posted as value-less 'click' events, so every rating is a positive of weight 1 for the "
        "deployment too (the harness's offline_cleaning); posted as ratings, the deployment's rule "
        "(value >= 3.5) would make the rest seen-but-not-positive.",
        "Warm-up: the harness trains its starting model from scratch on the warm-up events"
        + (f" ({harness['warmup_epochs']} epochs)" if harness and harness.get("warmup_epochs") else "")
        + " with a fixed number of epochs; the deployment's trainer runs a full pass on the burst (a fresh "
        "model, bootstrap.epochs at most, early stopping on the newest bootstrap.holdout_fraction of the "
        "events held out: see bootstrap.after_burst), then learns the held-out events incrementally. With the "
        "gate on, the fresh model goes live only after beating popularity on events it has not trained on.",
        "Harness: every replayed event with a history is scored, with full ranking over every item seen so far. "
        f"Live: {len(r['live'])} evenly spread events, and the target's position in the returned top {K} (the "
        "model's candidate set: the items it has learned; topped up from the service's popularity fallback).",
        f"Harness: incremental learns every {_harness_step(harness)} events and the scored event's weights "
        "have not seen the step's "
        "events before it. Live: the served weights are whatever the trainer has published when the request "
        "arrives, behind the posted events by the cleaning pass, the trainer's min_new_events and an update "
        "(see trainer_lag); the user's own earlier events are always in the history (read-your-writes).",
        "Seen items: the service excludes every item the user has posted; the harness excludes the user's "
        "earlier items. With every event a positive, the sets are the same; a repeated (user, item) target is "
        "always a miss live, not in the harness.",
        "Popularity here: all-time counts of the events posted so far, computed locally, full ranking with "
        "pessimistic ties, seen items excluded; the harness's 'popularity' halves its counts every window "
        "(recent popularity), so it is reported apart (harness.popularity_recent).",
        "Items new to the stream are misses for both live and popularity here (no count, no trained row), "
        "as in the harness.",
        "One sequential client: events/s over HTTP is the replay's rate (POSTs, GETs and /status samples in "
        "turn, the cluster sharing the machine's 2 cores), not the service's capacity.",
    ]
    if diffs:
        notes.append("The deployed settings differ from the harness's incremental run (different profile), so "
                     "live/harness compares systems, not only protocols: " + "; ".join(diffs) + ".")
    if opts.limit:
        notes.append(f"--limit {opts.limit}: only the first {opts.limit} events; the harness figure is of the "
                     "whole file and not comparable.")
    if r["stopped_early"]:
        notes.append(f"Stopped at the time limit after {len(r['live'])} of {r['planned']} planned scored events.")
    return notes


def gate_summary(r: dict, versions: list[int]) -> dict | None:
    """The gate's decisions at the end (``/status``): promoted, rejected and demoted counts, and
    the versions that went live, were served to this replay, and were later found worse than
    popularity (demoted) by the gate."""
    gate = ((r.get("status_final") or {}).get("trainer") or {}).get("gate")
    if not gate:
        return None
    demoted = [d["version"] for d in gate.get("demoted_versions") or []]
    served = sorted(set(versions) - {0})
    return {k: gate.get(k) for k in ("enabled", "live_version", "promoted", "rejected", "demoted", "last_decision")} | {
        "demoted_versions": gate.get("demoted_versions") or [],
        "served_then_found_worse": sorted(set(served) & set(demoted)),
        "versions_served": len(served)}


def bootstrap_summary(r: dict) -> dict:
    """The full passes the trainer ran (``/status``): the last one with its report, and the
    phase at the end."""
    progress = ((r.get("status_final") or {}).get("trainer") or {}).get("progress") or {}
    warm = ((r.get("status_warm") or {}).get("trainer") or {}).get("progress") or {}
    keep = lambda p: {k: v for k, v in (p or {}).items() if k != "history"} or None  # noqa: E731
    return {"after_burst": keep(warm.get("last_full_pass")), "at_end": keep(progress.get("last_full_pass")),
            "phase_at_end": progress.get("phase")}


def _ratio(a: float, b: float | None) -> float | None:
    return round(a / b, 4) if b else None


def _pct(x: list[float], q: float) -> float | None:
    return round(float(np.percentile(x, q)), 2) if x else None


def report(opts, r: dict, client: Client, deployment, wall_s: float) -> dict:
    from increc_ray.evaluate.offline import dataset_name
    from increc_ray.evaluate.prequential import machine

    dataset = dataset_name(opts.data)
    name = opts.name or (f"{dataset}_limit{opts.limit}" if opts.limit else dataset)
    lv, pp = live.metric_summary(r["live"]), live.metric_summary(r["pop"])
    harness = harness_figures(opts.harness or os.path.join(opts.out, f"stream_{dataset}.json"))
    diffs = setting_differences(harness, r["resolved"])
    src = {s: r["sources"].count(s) / len(r["sources"]) for s in sorted(set(map(str, r["sources"])))} \
        if r["sources"] else {}
    versions = r["versions"]
    behind = [x["events_behind"] for x in r["lags"] if x["events_behind"] is not None]
    nd, hr = f"ndcg@{K}", f"hr@{K}"
    result = {
        "dataset": name, "source_dataset": dataset, "data_file": os.path.abspath(opts.data), "limit": opts.limit or None,
        "target": {"url": str(client.http.base_url), "deployed": deployment is not None,
                   "serve_config": os.path.abspath(opts.serve_config) if deployment else None,
                   "deployed_serve_config": deployment.doc if deployment else None,
                   "app_args": deployment.args if deployment else None,
                   "resolved_app_config": r["resolved"],
                   "startup_seconds": deployment.startup_seconds if deployment else None},
        "protocol": {"warmup_fraction": opts.warmup_fraction, "k": K, "sample": opts.sample,
                     "burst_batch": opts.batch, "replay_batch": opts.replay_batch,
                     "min_new_events_for_catch_up": r["min_new_events"]},
        "events": r["n_events"],
        "warmup_events": r["n_warm"], "burst_posts": r["burst_posts"], "burst_seconds": round(r["burst_s"], 2),
        "wait_until_caught_up_seconds": round(r["wait_s"], 2),
        "status_when_caught_up": {k: r["status_warm"].get(k) for k in ("model_version", "served_version", "counts",
                                                                        "lag", "phase")},
        "replay": {"events_posted": r["replayed"], "posts": r["replay_posts"], "seconds": round(r["replay_s"], 1),
                   "events_per_s": round(r["replayed"] / r["replay_s"], 1) if r["replay_s"] else None,
                   "requests_per_s": round((r["replay_posts"] + len(r["live"])) / r["replay_s"], 1)
                   if r["replay_s"] else None,
                   "latency_ms": {route: {"p50": _pct(x, 50), "p99": _pct(x, 99), "n": len(x)}
                                  for route, x in client.latency_ms.items()},
                   "retries": client.retries, "stopped_early": r["stopped_early"]},
        "scorable_events": r["candidates"], "scored_events": len(r["live"]),
        "live": lv, "popularity": pp, "live_minus_popularity": live.paired_difference(r["live"], r["pop"]),
        "source_share": src,
        "versions_served": {"distinct": len(set(versions) - {0}), "first": versions[0] if versions else None,
                            "last": versions[-1] if versions else None},
        "gate": gate_summary(r, versions),
        "live_vs_popularity_windows": live.windowed(r["live"], r["pop"], 500),
        "bootstrap": bootstrap_summary(r),
        "trainer_lag": {"events_behind_p50": _pct(behind, 50), "events_behind_max": max(behind) if behind else None,
                        "samples": r["lags"]},
        "harness": harness,
        "ratios": {"live_over_harness_ndcg": _ratio(lv[nd], harness and harness[nd]),
                   "live_over_harness_hr": _ratio(lv[hr], harness and harness[hr]),
                   "live_over_popularity_ndcg": _ratio(lv[nd], pp[nd]),
                   "live_over_popularity_hr": _ratio(lv[hr], pp[hr])},
        "protocol_notes": protocol_notes(r, harness, diffs, opts),
        "wall_seconds": round(wall_s, 1),
        "command": " ".join(sys.argv),
        "machine": {**machine(), "platform": platform.platform(), "nice": os.nice(0),
                    "loadavg_start": r.get("loadavg_start"), "loadavg_end": os.getloadavg()},
    }
    return result


def format_table(res: dict) -> str:
    nd, hr = f"ndcg@{K}", f"hr@{K}"
    rows = [f"{res['dataset']}: {res['scored_events']} scored events, warm-up {res['warmup_events']} "
            f"(burst {res['burst_seconds']} s, caught up {res['wait_until_caught_up_seconds']} s later), "
            f"replay {res['replay']['events_per_s']} events/s over HTTP, wall {res['wall_seconds']} s",
            f"{'':22}{'HR@10':>8}{'± se':>8}{'NDCG@10':>9}{'± se':>8}"]
    for label, m in (("live (deployed)", res["live"]), ("popularity (local)", res["popularity"])):
        rows.append(f"{label:22}{m[hr]:8.4f}{m[hr + '_se']:8.4f}{m[nd]:9.4f}{m[nd + '_se']:8.4f}")
    if res["harness"]:
        h = res["harness"]
        rows.append(f"{'harness incremental':22}{h[hr]:8.4f}{'':8}{h[nd]:9.4f}")
    ra = res["ratios"]
    rows.append(f"live/popularity NDCG {ra['live_over_popularity_ndcg']}, live/harness NDCG "
                f"{ra['live_over_harness_ndcg']}; sources {res['source_share']}; versions "
                f"{res['versions_served']}; trainer behind p50 {res['trainer_lag']['events_behind_p50']} events")
    return "\n".join(rows)


def burst_report(opts, b: dict, deployment, wall0: float) -> dict:
    from increc_ray.evaluate.offline import dataset_name, write_result
    from increc_ray.evaluate.prequential import machine

    dataset = opts.name or dataset_name(opts.data)
    res = {"dataset": dataset, "data_file": os.path.abspath(opts.data), "check": "burst", **b,
           "serve_config": os.path.abspath(opts.serve_config) if deployment else None,
           "deployed_serve_config": deployment.doc if deployment else None,
           "protocol": "the first N events in time order posted as value-less clicks (every rating a positive), "
                       f"{opts.batch} per POST; then, once caught up (or at the deadline), GET /recommend?k={K} "
                       "for each user whose next event after the burst is an item new to them: a hit when that "
                       "item is in the list. Popularity: all-time counts of the burst's events, the user's items "
                       "excluded, top 10.",
           "wall_seconds": round(time.perf_counter() - wall0, 1), "command": " ".join(sys.argv),
           "machine": {**machine(), "platform": platform.platform(), "loadavg_end": os.getloadavg()}}
    path = write_result(res, opts.out, f"burst_{dataset}_{b['burst_events']}.json")
    print(f"burst {b['burst_events']}: HR@{K} live {b['live'][f'hr@{K}']:.4f} vs popularity "
          f"{b['popularity'][f'hr@{K}']:.4f} (x{b['live_over_popularity_hr']}) over {b['users_probed']} users; "
          f"caught up {b['caught_up']} after {b['seconds_from_last_post_to_caught_up']} s, probes done "
          f"{b['seconds_from_last_post_to_probes_done']} s after the last POST; sources {b['source_share']}")
    print(f"wrote {path}")
    return res


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="event file (any format increc_ray's loaders read)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running app on loopback, e.g. http://127.0.0.1:8000 (it must be empty)")
    target.add_argument("--deploy", action="store_true", help="start a private local cluster and deploy --serve-config")
    p.add_argument("--serve-config", default="serve_config.yaml", help="with --deploy: the Serve config to run")
    p.add_argument("--profile", help="with --deploy: deploy this profile (deploy/profiles/NAME.yaml) in place of "
                   "the Serve config's")
    p.add_argument("--warmup-fraction", type=float, default=0.5)
    p.add_argument("--sample", type=int, default=5000, help="scored events, evenly spread (0 = all)")
    p.add_argument("--batch", type=int, default=1000, help="events per POST of the warm-up burst")
    p.add_argument("--replay-batch", type=int, default=100,
                   help="most events per POST between two scored events (they are posted in time order)")
    p.add_argument("--limit", type=int, default=0, help="only the first N events in time order (development)")
    p.add_argument("--min-new-events", type=int, default=50,
                   help="the trainer's min_new_events, when the app config cannot be resolved (--url)")
    p.add_argument("--wait-timeout", type=float, default=1800.0, help="seconds to wait for the trainer to catch up")
    p.add_argument("--time-limit", type=float, default=3000.0, help="seconds of replay before stopping early")
    p.add_argument("--status-every", type=int, default=100, help="scored events between /status samples of the lag")
    p.add_argument("--harness", help="stream harness result (default <out>/stream_<dataset>.json)")
    p.add_argument("--name", help="dataset name in the output file (default: the data file's folder)")
    p.add_argument("--out", default="bench/results")
    p.add_argument("--burst", type=int, default=0, metavar="N",
                   help="the burst check instead of the replay: post the first N events, wait, probe each "
                   "user's next new item (writes burst_<dataset>_<N>.json)")
    p.add_argument("--burst-deadline", type=float, default=300.0,
                   help="probe at the latest this many seconds after the burst's last POST")
    opts = p.parse_args(argv)
    assert opts.batch > 0 and opts.replay_batch > 0, "--batch and --replay-batch must be > 0"

    # a background job starts with SIGINT ignored: make SIGINT and SIGTERM tear the cluster down
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _interrupt)
    wall0 = time.perf_counter()
    stream = Stream(opts.data, opts.limit)
    deployment = Deployment(opts.serve_config, profile=opts.profile) if opts.deploy else None
    if deployment:
        with deployment:
            print(f"deployed {opts.serve_config} at {deployment.url} in {deployment.startup_seconds} s "
                  f"(data_dir {deployment.data_dir})")
            client = Client(deployment.url)
            if opts.burst:
                return burst_report(opts, run_burst(opts, client, stream, deployment.args), deployment, wall0)
            r = run(opts, client, stream, deployment.args)
    else:
        client = Client(opts.url)
        if opts.burst:
            return burst_report(opts, run_burst(opts, client, stream, None), None, wall0)
        r = run(opts, client, stream, None)
    res = report(opts, r, client, deployment, time.perf_counter() - wall0)
    from increc_ray.evaluate.offline import write_result

    path = write_result(res, opts.out, f"live_{res['dataset']}.json")
    print(format_table(res))
    print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main()
