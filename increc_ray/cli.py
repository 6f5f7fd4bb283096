"""``increc``: the command line.

    increc demo  [--url URL] [--events N]   stream the synthetic stream over HTTP to a
                                            deployed app and print live recommendations
    increc send FILE [--url URL]            post an event file (JSONL/CSV/Parquet/MovieLens)
    increc status [--url URL]               print GET /status

The client commands send the bearer token of ``INCREC_TOKEN``, else of ``~/.increc/token``.
    increc evaluate offline --data FILE [--profile NAME | --config FILE]
                                            leave-one-out full-ranking quality of the model
                                            (writes bench/results/offline_<dataset>.json)
    increc evaluate stream --data FILE [--profile NAME | --config FILE]
                                            prequential replay: incremental vs retraining
                                            (writes bench/results/stream_<dataset>.json + PNGs)

A benchmark reads only its profile (deploy/profiles/NAME.yaml, the config a deployment runs;
default: the profile named like the dataset, else ml-100k, the one serve_config.yaml deploys)
plus the override flags, and records both in its result JSON.
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

DEFAULT_URL = "http://127.0.0.1:8000"
TOKEN_FILE = "~/.increc/token"  # where deploy/demo.sh keeps the bearer token (mode 0600)


def client_token() -> str | None:
    """The bearer token a client sends: ``INCREC_TOKEN``, else ``~/.increc/token``, else none."""
    import os

    token = os.environ.get("INCREC_TOKEN", "").strip()
    path = os.path.expanduser(TOKEN_FILE)
    if not token and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            token = f.read().strip()
    return token or None


def _json_or_text(body: bytes) -> dict:
    try:
        return json.loads(body or b"{}")
    except ValueError:
        return {"error": body.decode("utf-8", "replace")}


class Client:
    """A tiny HTTP client for the increc_ray Serve app (stdlib only)."""

    def __init__(self, url: str = DEFAULT_URL, timeout_s: float = 30.0, token: str | None = None) -> None:
        self.url, self.timeout_s = url.rstrip("/"), timeout_s
        token = token or client_token()
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}

    def _call(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict]:
        headers = {**self._auth, **({"Content-Type": "application/json"} if body else {})}
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, _json_or_text(resp.read())
        except urllib.error.HTTPError as e:  # e.g. the proxy's plain-text 503 while the app starts
            return e.code, _json_or_text(e.read())

    def post_events(self, events: list[dict]) -> dict:
        status, body = self._call("POST", "/events", json.dumps(events).encode())
        if status != 200:
            raise RuntimeError(f"POST /events -> {status}: {body}")
        return body

    def recommend(self, user_id: str, k: int = 10) -> dict:
        query = urllib.parse.urlencode({"user_id": user_id, "k": k})
        status, body = self._call("GET", f"/recommend?{query}")
        if status != 200:
            raise RuntimeError(f"GET /recommend -> {status}: {body}")
        return body

    def status(self) -> dict:
        return self._call("GET", "/status")[1]

    def wait_healthy(self, timeout_s: float = 180.0) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            try:
                if self._call("GET", "/healthz")[0] == 200:
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(1.0)
        raise TimeoutError(f"{self.url}/healthz did not answer 200 within {timeout_s:.0f}s")


def probe_successor_rate(client: Client, stream, items: list[str], tag: str, k: int = 10,
                         answers: collections.Counter | None = None) -> tuple[float, float, int]:
    """(model, popularity) share of probe users whose planted next item is in their top-k.

    A probe is a new user whose only event is item A: the planted successor B is unseen
    (seen items are excluded), so only a model that learned "B follows A" ranks it. ``answers``,
    when given, counts the answers by (version, source, degraded, hit).
    """
    t = stream.start_time + stream.n_events
    popular = [i["item_id"] for i in client.recommend(f"cold-{tag}", k + 1)["items"]]
    hits = pop_hits = version = 0
    for a in items:
        user = f"probe-{tag}-{a}"
        client.post_events([{"user_id": user, "item_id": a, "event_type": "click", "timestamp": t}])
        rec = client.recommend(user, k)
        version = rec["model_version"]
        hit = stream.successor(a) in {it["item_id"] for it in rec["items"]}
        hits += hit
        pop_hits += stream.successor(a) in [i for i in popular if i != a][:k]
        if answers is not None:
            answers[(version, rec["source"], rec["degraded"], hit)] += 1
    return hits / max(1, len(items)), pop_hits / max(1, len(items)), version


def caught_up(status: dict) -> str | None:
    """None once the trainer has learned every event posted and the replica answering serves its
    newest version; otherwise what is still outstanding."""
    progress = status["trainer"].get("progress") or {}
    if progress.get("full_pass"):
        return f"a full pass ({progress['full_pass'].get('reason')}) is running"
    if status["lag"]["pending_files"] or status["lag"]["clean_parts_behind"]:
        return (f"{status['lag']['pending_files']} files to clean, "
                f"{status['lag']['clean_parts_behind']} clean parts unread by the trainer")
    if progress.get("unread_events"):
        return f"{progress['unread_events']} events unread by the trainer"
    if status["model_version"] < 1:
        return "no version published yet"
    if status["served_version"] < status["model_version"]:
        return f"serving version {status['served_version']} of {status['model_version']}"
    return None


def wait_caught_up(client: Client, timeout_s: float = 180.0) -> None:
    """Wait (printing what is outstanding) until the model has learned the stream: the trainer
    starts, runs its first full pass and publishes on its own schedule, so a fixed sleep races it."""
    deadline, said = time.time() + timeout_s, None
    while (waiting := caught_up(client.status())) is not None and time.time() < deadline:
        if waiting != said:
            print(f"waiting for the trainer: {waiting}", flush=True)
            said = waiting
        time.sleep(0.5)
    if waiting is not None:
        print(f"gave up waiting after {timeout_s:.0f} s: {waiting}", flush=True)


def demo(url: str, n_events: int, batch: int, seed: int) -> int:
    """Stream synthetic events over HTTP and print live recommendations as the model learns."""
    from increc_ray.evaluate.synthetic import SyntheticStream

    client = Client(url)
    print(f"waiting for {url}/healthz ...", flush=True)
    client.wait_healthy()
    stream = SyntheticStream(n_users=200, n_items=100, seed=seed)
    sent, started, next_report, n_reports = 0, time.time(), 0.0, 0
    print(f"streaming {n_events} synthetic events in batches of {batch} (planted: item -> successor)")
    print(f"{'sec':>5} {'sent':>7} {'version':>7} {'successor@10':>12} {'popularity':>10}  sample probe")
    while sent < n_events:
        events = stream.next_events(min(batch, n_events - sent))
        client.post_events(events)
        sent += len(events)
        if time.time() >= next_report or sent >= n_events:
            n_reports += 1
            sample = stream.items[:: max(1, len(stream.items) // 20)]
            rate, pop_rate, version = probe_successor_rate(client, stream, sample, f"r{n_reports}")
            a = sample[0]
            top = [it["item_id"] for it in client.recommend(f"probe-r{n_reports}-{a}", 5)["items"]]
            print(f"{time.time() - started:5.0f} {sent:7d} {version:7d} {rate:12.2f} {pop_rate:10.2f}  "
                  f"after {a} the planted next is {stream.successor(a)}; top5={top}", flush=True)
            next_report = time.time() + 3.0
        time.sleep(0.05)
    wait_caught_up(client)
    answers: collections.Counter = collections.Counter()
    rate, pop_rate, version = probe_successor_rate(client, stream, stream.items, "final", answers=answers)
    print(f"\nfinal: model version {version}; the planted successor is in the top 10 for {rate:.0%} of "
          f"{len(stream.items)} single-item probes (popularity fallback: {pop_rate:.0%})")
    for (v, source, degraded, hit), n in sorted(answers.items()):
        print(f"  {n:4d} answers from version {v}, {source}{', degraded' if degraded else ''}: "
              f"{'successor found' if hit else 'missed'}")
    print(json.dumps({k: v for k, v in client.status().items() if k in ("model_version", "lag", "counts")}, indent=1))
    return 0


def send_file(url: str, path: str, batch: int) -> int:
    """Post the events of a file (any format the loaders read) in batches."""
    from increc_ray.ingest.loaders import read_events_file

    table = read_events_file(path)
    client = Client(url)
    cols = [c for c in ("event_id", "user_id", "item_id", "event_type", "timestamp", "value") if c in table.column_names]
    rows = table.select(cols).to_pylist()
    totals = {"accepted": 0, "duplicates": 0, "rejected_count": 0}
    for i in range(0, len(rows), batch):
        answer = client.post_events(rows[i:i + batch])
        for key in totals:
            totals[key] += answer[key]
    print(json.dumps(totals))
    return 0


def evaluate(args: argparse.Namespace) -> int:
    """``increc evaluate <mode>``: model quality under one profile (see increc_ray.evaluate)."""
    from increc_ray.evaluate.offline import dataset_name

    name = (args.name if args.mode == "stream" else None) or dataset_name(args.data)
    label, cfg = resolve_profile(args, name)
    log = functools.partial(print, flush=True)
    if args.mode == "offline":
        from increc_ray.evaluate.offline import run_offline

        run_offline(args.data, cfg, profile=label, out_dir=args.out or None, log=log, threads=args.threads)
        return 0
    if args.mode == "stream":
        from increc_ray.evaluate.stream import run_stream

        run_stream(args.data, cfg, profile=label, out_dir=args.out or None, name=name, log=log,
                   progress_bar=not args.no_progress, consolidate_every=_ints(args.consolidate_every),
                   only=args.strategies.split(",") if args.strategies else None)
        return 0
    raise AssertionError(f"unknown evaluate mode {args.mode!r}")  # argparse only lets known modes through


# single-setting flags -> the config key they set
_FLAG_KEYS = {"windows": ("evaluation", "windows"), "eval_per_window": ("evaluation", "eval_per_window"),
              "warmup_fraction": ("evaluation", "warmup_fraction"), "retrain_every": ("evaluation", "retrain_every"),
              "seed": ("evaluation", "seed"),
              "trainer_seed": ("trainer", "seed"), "max_epochs": ("bootstrap", "epochs"),
              "max_minutes": ("bootstrap", "max_minutes")}


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"expected comma-separated integers, got {text!r}") from None


def resolve_profile(args: argparse.Namespace, dataset: str):
    """(label, Config): ``--config FILE``, else ``--profile NAME``, else the profile named like the
    dataset, else the deployed default (``profiles.DEFAULT_PROFILE``); the flags' overrides on top."""
    from increc_ray import profiles
    from increc_ray.config import replace

    over: dict = {}
    for flag, section in (("incremental", "trainer"), ("model", "model"), ("bootstrap", "bootstrap")):
        if getattr(args, flag):
            over[section] = _settings(getattr(args, flag), f"--{flag}")
    for dest, (section, key) in _FLAG_KEYS.items():
        value = getattr(args, dest, None)
        if value is not None:
            over.setdefault(section, {})[key] = value
    if args.config:
        label, cfg = args.config, profiles.load(args.profile, args.config, over)  # both: ConfigError
    else:
        label = args.profile or (dataset if dataset in profiles.profile_names() else profiles.DEFAULT_PROFILE)
        cfg = profiles.load(profile=label, overrides=over)
    if getattr(args, "no_variants", False):  # a replacement, not a merge: no variant is left
        cfg = replace(cfg, evaluation=replace(cfg.evaluation, variants={}))
    return label, cfg


def _settings(items: list[str], flag: str) -> dict:
    """``KEY=VALUE`` strings (values parsed as YAML scalars) as a mapping."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"{flag} takes KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _add_profile_flags(p) -> None:
    p.add_argument("--profile", "--preset", default=None, dest="profile",
                   help="deploy/profiles/NAME.yaml (default: the profile named like the dataset, else "
                   "ml-100k, the deployed one)")
    p.add_argument("--config", default=None, metavar="FILE", help="a config YAML file instead of a profile")
    p.add_argument("--incremental", action="append", default=[], metavar="KEY=VALUE",
                   help="override a trainer setting (repeatable), e.g. lr=2.5e-4 or min_new_events=100")
    p.add_argument("--model", action="append", default=[], metavar="KEY=VALUE",
                   help="override the model shape (repeatable), e.g. d_model=128")
    p.add_argument("--bootstrap", action="append", default=[], metavar="KEY=VALUE",
                   help="override a from-scratch training setting (repeatable), e.g. epochs=5")


def _add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="measure model quality under a profile").add_subparsers(dest="mode", required=True)
    p = ev.add_parser("offline", help="leave-one-out by time, full ranking, vs most popular (e.g. MovieLens)")
    p.add_argument("--data", required=True, help="event file: MovieLens u.data / ratings.csv, or any loader format")
    p.add_argument("--out", default="bench/results", help="folder for offline_<dataset>.json ('' = do not write)")
    _add_profile_flags(p)
    p.add_argument("--seed", type=int, default=None, dest="trainer_seed", help="trainer.seed (model init, shuffling)")
    p.add_argument("--max-epochs", type=int, default=None, help="bootstrap.epochs")
    p.add_argument("--max-minutes", type=float, default=None, help="bootstrap.max_minutes")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (0 = torch's default)")
    p = ev.add_parser("stream", help="prequential (test-then-train) replay: incremental vs retraining vs static")
    p.add_argument("--data", required=True, help="event file: MovieLens, or CSV/Parquet/JSONL of "
                   "user_id,item_id,timestamp[,event_type,value]")
    p.add_argument("--out", default="bench/results", help="folder for stream_<dataset>.json and PNGs ('' = none)")
    p.add_argument("--name", default=None, help="dataset name (default: the file's folder name)")
    _add_profile_flags(p)
    p.add_argument("--windows", type=int, default=None, help="evaluation.windows")
    p.add_argument("--eval-per-window", type=int, default=None, help="evaluation.eval_per_window (0 = all)")
    p.add_argument("--warmup-fraction", type=float, default=None, help="evaluation.warmup_fraction")
    p.add_argument("--retrain-every", type=int, default=None, help="evaluation.retrain_every")
    p.add_argument("--seed", type=int, default=None, help="evaluation.seed (the evaluated sample)")
    p.add_argument("--no-variants", action="store_true", help="evaluation.variants = {} (no incremental[...])")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--consolidate-every", default="", metavar="N[,N...]",
                   help="also run incremental+full_pass[N]: a deployed full pass every N events")
    p.add_argument("--strategies", default="", metavar="NAME[,NAME...]", help="run only these (default: all)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="increc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("demo", help="stream synthetic events and print live recommendations")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--events", type=int, default=8000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("send", help="post an event file over HTTP")
    p.add_argument("file")
    p.add_argument("--url", default=DEFAULT_URL)
    p.add_argument("--batch", type=int, default=1000)
    p = sub.add_parser("status", help="print GET /status")
    p.add_argument("--url", default=DEFAULT_URL)
    _add_evaluate(sub)
    args = parser.parse_args(argv)
    if args.cmd == "demo":
        return demo(args.url, args.events, args.batch, args.seed)
    if args.cmd == "send":
        return send_file(args.url, args.file, args.batch)
    if args.cmd == "evaluate":
        from increc_ray.errors import IncrecError

        try:
            return evaluate(args)
        except IncrecError as e:  # a bad setting or data file: one line, not a traceback
            print(f"increc evaluate: {e}", file=sys.stderr)
            return 2
    print(json.dumps(Client(args.url).status(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
