"""Memory per user and per item, and what expiry keeps bounded (issue 13: "memory bounded").

Ray-free: the structures a deployment holds, filled from the synthetic stream and measured with
tracemalloc (Python objects) or their tensor sizes:

* ``UserHistoryIndex`` (the UserHistory replica, and one copy in every Recommender replica):
  bytes per user and per event, with and without the event-time ttls of ``serving.user_ttl_s`` /
  ``item_ttl_s``, over a stream whose users churn (each user active for a while, then gone);
* ``ItemVocab`` (trainer and every replica): bytes per item id;
* the item table: bytes per item in a replica (one float32 row) and in the trainer (the row plus
  AdamW's two moments);
* the learner (``IncrementalLearner``) on the same stream, with and without ``trainer.user_ttl_s``
  / ``item_ttl_s``: item rows (vocabulary and table), table capacity, users and the items their
  sequences keep. Its optimizer steps are skipped (``_step`` returns at once): they change the
  weights' values, not what is kept, and would take the run from seconds to an hour.

    python bench/state_size.py [--users 20000] [--out bench/results/state_size.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tracemalloc

import numpy as np
import pyarrow as pa

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.learn.vocab import ItemVocab  # noqa: E402
from increc_ray.profiles import load  # noqa: E402
from increc_ray.serve.history import UserHistoryIndex  # noqa: E402

HERE = os.path.dirname(__file__)
DAY = 86400


def churning_stream(n_users: int, n_items: int, events_per_user: int, days: int, seed: int = 0):
    """Daily batches: each user is active on ``events_per_user`` events spread over a two-week
    stretch starting on a random day, so users keep arriving and leaving (as in a real service)."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, days - 14, n_users)
    for day in range(days):
        active = np.flatnonzero((start <= day) & (day < start + 14))
        n = len(active) * events_per_user // 14
        if not n:
            continue
        users = rng.choice(active, n)
        items = rng.zipf(1.2, n) % n_items
        yield pa.table({
            "user_id": [f"u{u}" for u in users], "item_id": [f"i{i}" for i in items],
            "timestamp": pa.array(((day * DAY + rng.integers(0, DAY, n)) * 1000).tolist(), pa.timestamp("ms", tz="UTC")),
            "label": pa.array(np.ones(n, np.int8)), "weight": pa.array(np.ones(n, np.float32)),
            "dedup_key": [f"k{day}-{j}" for j in range(n)],
        })


def measure_history(ttl_s: float | None, args) -> dict:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    idx = UserHistoryIndex(history_len=args.history_len, half_life_s=0, user_ttl_s=ttl_s, item_ttl_s=ttl_s)
    peak_users = 0
    for batch in churning_stream(args.users, args.items, args.events_per_user, args.days):
        idx.append(batch)
        peak_users = max(peak_users, idx.stats()["users"])
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    s = idx.stats()
    return {"ttl_days": ttl_s / DAY if ttl_s else None, "events": s["events"], "users_kept": s["users"],
            "items_kept": s["items"], "dedup_keys_kept": s["dedup_keys"], "expired_users": s["expired_users"],
            "expired_items": s["expired_items"], "mib": round(used / 2**20, 1),
            "bytes_per_kept_user": int(used / max(1, s["users"])), "bytes_per_event": round(used / s["events"], 1)}


def measure_learner(ttl_s: float | None, args) -> dict:
    from increc_ray.config import replace
    from increc_ray.learn.learner import IncrementalLearner

    cfg = load(profile=args.profile)
    learner = IncrementalLearner(cfg.model, replace(cfg.trainer, user_ttl_s=ttl_s, item_ttl_s=ttl_s))
    learner._step = lambda batch: 0.0  # bookkeeping only (see the module docstring)
    peak_rows = 0
    for batch in churning_stream(args.users, args.items, args.events_per_user, args.days):
        learner.observe(batch)
        learner.update()
        peak_rows = max(peak_rows, learner.n_items)
    d = cfg.model.d_model
    kept = sum(len(items) for items, _ in learner._seqs.values())
    return {"ttl_days": ttl_s / DAY if ttl_s else None, "events": learner.n_events, "users_kept": learner.n_users,
            "items_live": learner.vocab.n_live, "item_rows": learner.n_items, "peak_item_rows": peak_rows,
            "table_capacity": learner.model.capacity, "sequence_items_kept": kept,
            "expired_users": learner.n_expired_users, "expired_items": learner.n_expired_items,
            "table_and_adamw_mib": round(3 * 4 * d * learner.model.capacity / 2**20, 1)}


def measure_vocab(n: int) -> int:
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    vocab = ItemVocab.from_list([f"item-{i:08d}" for i in range(n)])
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(vocab) == n
    return int(used / n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--events-per-user", type=int, default=40)
    ap.add_argument("--days", type=int, default=180)
    ap.add_argument("--ttl-days", type=float, default=30.0)
    ap.add_argument("--history-len", type=int, default=200)
    ap.add_argument("--profile", default="ml-100k")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "state_size.json"))
    args = ap.parse_args()
    d = load(profile=args.profile).model.d_model
    out = {"bench": "state_size", "stream": {"users": args.users, "items": args.items, "days": args.days,
                                             "events_per_user": args.events_per_user, "active_days_per_user": 14},
           "history_without_expiry": measure_history(None, args),
           "history_with_expiry": measure_history(args.ttl_days * DAY, args),
           "learner_without_expiry": measure_learner(None, args),
           "learner_with_expiry": measure_learner(args.ttl_days * DAY, args),
           "vocab_bytes_per_item": measure_vocab(100_000),
           "item_row_bytes": {"replica": 4 * d, "trainer_with_adamw": 3 * 4 * d, "d_model": d}}
    a, b = out["history_without_expiry"], out["history_with_expiry"]
    out["expiry_memory_ratio"] = round(b["mib"] / a["mib"], 3)
    a, b = out["learner_without_expiry"], out["learner_with_expiry"]
    out["learner_expiry_ratio"] = {"item_rows": round(b["item_rows"] / a["item_rows"], 3),
                                   "users": round(b["users_kept"] / a["users_kept"], 3),
                                   "sequence_items": round(b["sequence_items_kept"] / a["sequence_items_kept"], 3)}
    print(json.dumps(out, indent=1))
    print(f"wrote {write_result(out, os.path.dirname(args.out), os.path.basename(args.out))}")


if __name__ == "__main__":
    main()
