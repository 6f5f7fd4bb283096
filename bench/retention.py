"""What the ingest keeps on disk and in memory over a long stream, with and without retention
(``ingest.retention_s``, ``increc_ray/ingest/retention.py``; issue 13: "memory bounded").

Ray-free: the deployed ``EventPipeline`` (HTTP ingest, the cleaning pass run in-process by
``clean_files_locally`` instead of a Ray Data job, the ledger, de-duplication, the rules), fed a
churning stream over ``--days`` days of event time: each user active for two weeks, then gone;
every day ``--requests`` ingest requests, each cleaned into its own part (as the cleaning thread
does between requests), and in each request one repeated event and one invalid one (so duplicates
and quarantine files exist). The trainer is taken to keep up: after each day its checkpointed
offset is the newest part. With retention, the pipeline's ``prune`` runs once a day of stream.

Measured each ``--every`` days and at the end, in the same run for both settings: bytes and files
in the clean store, the processed landing files, the ledger and the quarantine; the keys held for
de-duplication and the ids known to the cardinality rule; whether the ledger balances and
accounts for every event posted; and the time a restart takes to rebuild the pipeline from disk.

    python bench/retention.py [--days 180] [--retention-days 30] [--out bench/results/retention.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from increc_ray.config import Config  # noqa: E402
from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.ingest.pipeline import EventPipeline  # noqa: E402
from increc_ray.ingest.ray_job import clean_files_locally  # noqa: E402

HERE = os.path.dirname(__file__)
DAY = 86400
T0 = 1_767_225_600  # 2026-01-01


def daily_requests(args, seed: int = 0):
    """(day, [request records]) per day: users active for 14 days each, ``--events-per-user``
    events spread over them, cut into ``--requests`` requests a day in event-time order."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, args.days - 14, args.users)
    n_event = 0
    for day in range(args.days):
        active = np.flatnonzero((start <= day) & (day < start + 14))
        n = len(active) * args.events_per_user // 14
        users = rng.choice(active, n) if n else np.array([], int)
        items = rng.zipf(1.2, n) % args.items
        secs = np.sort(rng.integers(0, DAY, n))
        events = [{"event_id": f"e{n_event + j}", "user_id": f"u{u}", "item_id": f"i{i}", "event_type": "click",
                   "timestamp": T0 + day * DAY + int(s)} for j, (u, i, s) in enumerate(zip(users, items, secs))]
        n_event += n
        chunks = np.array_split(np.arange(n), args.requests)
        yield day, [[events[k] for k in chunk] + ([events[chunk[0]], {"user_id": "bad"}] if len(chunk) else [])
                    for chunk in chunks]


def folder(path: str, digits: int = 2) -> dict:
    """Files and MiB under ``path`` (a writer's ``_tmp-*`` file not counted)."""
    n, size = 0, 0
    for root, _, names in os.walk(path):
        for name in names:
            if not name.startswith("_tmp"):
                n += 1
                size += os.path.getsize(os.path.join(root, name))
    return {"files": n, "mib": round(size / 2**20, digits)}


def snapshot(p: EventPipeline, cfg: Config, day: int, posted: int) -> dict:
    s = p.status()
    return {"day": day, "posted": posted,
            "clean": folder(cfg.clean_dir), "landing": folder(cfg.landing_uri), "ledger": folder(cfg.ledger_dir),
            "quarantine": folder(cfg.quarantine_dir), "seen_keys": s["seen_keys"],
            "known_users": s["known_users"], "known_items": s["known_items"],
            "ledger_balanced": s["ledger"]["balanced"], "received": s["ledger"]["received"]}


def run(retention_days: float | None, args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        ttl = None if retention_days is None else retention_days * DAY
        cfg = Config.from_dict({"data_dir": tmp, "ingest": {"retention_s": ttl},
                                "serving": {"user_ttl_s": ttl, "item_ttl_s": ttl}})
        p = EventPipeline(cfg, clean_files=clean_files_locally)
        series, posted, prune_s, started = [], 0, 0.0, time.perf_counter()
        for day, requests in daily_requests(args):
            for records in requests:
                p.ingest(records)
                posted += len(records)
                p.process_pending()
            p.store.write_consumed({"seq": p.store.last_seq(), "row": 0})  # the trainer keeps up
            t = time.perf_counter()
            p.prune()
            prune_s += time.perf_counter() - t
            if (day + 1) % args.every == 0 or day == args.days - 1:
                series.append(snapshot(p, cfg, day + 1, posted))
                print(f"retention {retention_days} days, day {day + 1}: clean {series[-1]['clean']}, "
                      f"landing {series[-1]['landing']}, keys {series[-1]['seen_keys']}", flush=True)
        stream_s = time.perf_counter() - started
        final = series[-1]
        t = time.perf_counter()
        restarted = EventPipeline(cfg, clean_files=clean_files_locally)
        restart_s = time.perf_counter() - t
        restarted_ledger, p_ledger = restarted.ledger.snapshot(), p.ledger.snapshot()
        retry = p.ingest([{"event_id": "e0", "user_id": "u0", "item_id": "i0", "event_type": "click",
                           "timestamp": T0}])[0]  # a client's retry of the first day's first event
        return {"retention_days": retention_days, "series": series, "final": final,
                "restart_s": round(restart_s, 3),
                "restart_ledger_matches": restarted_ledger == p_ledger,
                "ledger_accounts_for_every_event": final["ledger_balanced"] and final["received"] == posted,
                "retry_of_day_0": {"accepted": retry.accepted, "duplicates": retry.duplicates,
                                   "rejected": [r["reason"].split(":")[0] for r in retry.rejected]},
                "pruned": p.status()["pruned"], "prune_s_total": round(prune_s, 2), "stream_s": round(stream_s, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--days", type=int, default=180)
    ap.add_argument("--users", type=int, default=3000)
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--events-per-user", type=int, default=40)
    ap.add_argument("--requests", type=int, default=4, help="ingest requests (and clean parts) a day")
    ap.add_argument("--retention-days", type=float, default=30.0)
    ap.add_argument("--every", type=int, default=30, help="snapshot every this many days")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "retention.json"))
    args = ap.parse_args()
    runs = [run(None, args), run(args.retention_days, args)]
    keep, prune = runs[0]["final"], runs[1]["final"]
    ratios = {k: round(prune[k]["mib"] / keep[k]["mib"], 3) if keep[k]["mib"] else None
              for k in ("clean", "landing", "ledger", "quarantine")}
    ratios["seen_keys"] = round(prune["seen_keys"] / keep["seen_keys"], 3)
    ratios["restart_s"] = round(runs[1]["restart_s"] / runs[0]["restart_s"], 3)
    result = {"bench": "retention", "stream": {k: getattr(args, k) for k in
                                               ("days", "users", "items", "events_per_user", "requests")},
              "without": runs[0], "with": runs[1], "with_over_without": ratios}
    print({k: v for k, v in ratios.items()})
    print("written", write_result(result, os.path.dirname(args.out), os.path.basename(args.out)))


if __name__ == "__main__":
    main()
