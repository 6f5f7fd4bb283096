"""Ray-free pieces of the live replay benchmark (``bench/live_replay.py``).

The benchmark replays an event file against a running deployment over HTTP: the warm-up part
as a burst, then test-then-train, one ``GET /recommend`` per scored event. What does not need
the deployment lives here: the event order and warm-up cut (the same as the stream harness,
``prequential.build_stream``), the evenly spread sample of scored events, the rank of a target
in a returned list, the popularity baseline counted on the same events, the catch-up test on a
``/status`` answer, and the summary with standard errors.

Ranks are 0-based; ``MISS`` is the rank of a target the list (or the counts) does not hold.

>>> list_rank(["a", "b", "c"], "b"), list_rank(["a", "b"], "z") == MISS
(1, True)
>>> spread(np.arange(10), 3).tolist()
[0, 4, 9]
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa

from increc_ray.evaluate.prequential import MISS
from increc_ray.evaluate.ranking import K


def time_ordered(events: pa.Table) -> pa.Table:
    """``events`` sorted by timestamp with a stable sort (ties keep file order), as the harness does."""
    ts = events["timestamp"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    return events.take(pa.array(np.argsort(ts, kind="stable")))


def warmup_count(ts_ms: np.ndarray, fraction: float) -> int:
    """Events in the first ``fraction`` of the time span of sorted ``ts_ms`` (the harness's cut).

    >>> warmup_count(np.array([0, 1, 2, 5, 10]), 0.5)
    3
    """
    assert 0 < fraction < 1, f"warm-up fraction must be in (0, 1), got {fraction}"
    assert len(ts_ms) >= 2, f"need at least two events, got {len(ts_ms)}"
    cut = ts_ms[0] + fraction * (ts_ms[-1] - ts_ms[0])
    n = int(np.searchsorted(ts_ms, cut, side="left"))
    assert 0 < n < len(ts_ms), f"warm-up cut at {cut} leaves {n} of {len(ts_ms)} events for warm-up"
    return n


def scorable(users: Sequence[str], start: int) -> np.ndarray:
    """Positions ``>= start`` whose user has an earlier event (a user's first event has no
    history to condition on and is not scored, as in the harness).

    >>> scorable(["u", "v", "u", "w", "v"], 1).tolist()
    [2, 4]
    """
    seen: set[str] = set()
    out = []
    for e, u in enumerate(users):
        if e >= start and u in seen:
            out.append(e)
        seen.add(u)
    return np.asarray(out, dtype=np.int64)


def spread(candidates: np.ndarray, n: int) -> np.ndarray:
    """``n`` of the sorted ``candidates``, evenly spread from the first to the last (all if
    ``n`` is 0 or at least their number); deterministic, sorted, no repeats."""
    assert n >= 0, f"sample size must be >= 0, got {n}"
    if n == 0 or n >= len(candidates):
        return np.asarray(candidates, dtype=np.int64)
    if n == 1:
        return np.asarray(candidates[:1], dtype=np.int64)
    idx = np.unique(np.linspace(0, len(candidates) - 1, n).round().astype(np.int64))
    return np.asarray(candidates, dtype=np.int64)[idx]


def list_rank(returned: Sequence[str], target: str) -> int:
    """0-based position of ``target`` in the returned list, ``MISS`` if it is not there."""
    for r, item in enumerate(returned):
        if item == target:
            return r
    return MISS


class PopularityCounts:
    """All-time counts of the positive events posted so far; ranks a target among the items the
    user has not seen, ties counting against it (``ranking.rank_of``'s convention). An item with
    no count yet (new to the stream) is a miss, as in the harness."""

    def __init__(self) -> None:
        self._index: dict[str, int] = {}
        self._counts = np.zeros(1024, dtype=np.int64)

    def add(self, items: Iterable[str]) -> None:
        for item in items:
            i = self._index.setdefault(item, len(self._index))
            if i >= len(self._counts):
                self._counts = np.concatenate([self._counts, np.zeros_like(self._counts)])
            self._counts[i] += 1

    def rank(self, target: str, seen: Iterable[str]) -> int:
        t = self._index.get(target)
        if t is None:
            return MISS
        counts = self._counts[: len(self._index)]
        ahead = counts >= counts[t]
        ahead[t] = False  # the target is never ahead of itself, and never excluded
        seen_idx = [self._index[s] for s in set(seen) if s in self._index and s != target]
        ahead[seen_idx] = False
        return int(np.count_nonzero(ahead))

    def top(self, k: int, seen: Iterable[str] = ()) -> list[str]:
        """The k most counted unseen items (ties: first posted first), for display and checks."""
        ids = list(self._index)
        counts = self._counts[: len(ids)].copy()
        for s in seen:
            if s in self._index:
                counts[self._index[s]] = -1
        order = np.argsort(-counts, kind="stable")
        return [ids[i] for i in order[:k] if counts[i] >= 0]


def metric_summary(ranks: Sequence[int], k: int = K) -> dict:
    """HR@k and NDCG@k over ``ranks`` with their standard errors (std of the per-event values,
    ddof 1, over sqrt(n)).

    >>> s = metric_summary([0, 1, MISS, MISS], k=10)
    >>> s["hr@10"], s["ndcg@10"], s["n"]
    (0.5, 0.4077324383928644, 4)
    """
    hit, gain = per_event(ranks, k)
    n = len(hit)
    return {f"hr@{k}": _mean(hit), f"hr@{k}_se": _se(hit), f"ndcg@{k}": _mean(gain), f"ndcg@{k}_se": _se(gain),
            "n": n}


def paired_difference(a: Sequence[int], b: Sequence[int], k: int = K) -> dict:
    """Mean and standard error of the per-event NDCG@k and HR@k differences a - b (same events)."""
    assert len(a) == len(b), f"paired ranks must be aligned, got {len(a)} and {len(b)}"
    (ha, ga), (hb, gb) = per_event(a, k), per_event(b, k)
    return {f"hr@{k}": _mean(ha - hb), f"hr@{k}_se": _se(ha - hb), f"ndcg@{k}": _mean(ga - gb),
            f"ndcg@{k}_se": _se(ga - gb), "n": len(ha)}


def per_event(ranks: Sequence[int], k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """(hit, NDCG) of each rank: 1 and 1 / log2(rank + 2) inside the top k, else 0."""
    r = np.asarray(ranks, dtype=np.int64)
    assert (r >= 0).all(), "ranks must be >= 0"
    inside = r < k
    gain = np.zeros(len(r))
    gain[inside] = 1.0 / np.log2(r[inside] + 2.0)
    return inside.astype(np.float64), gain


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else math.nan


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def event_records(users: Sequence[str], items: Sequence[str], ts_ms: Sequence[int], event_type: str | None,
                  values: Sequence | None = None) -> list[dict]:
    """JSON event objects for ``POST /events`` (epoch milliseconds; ``value`` only if given).

    >>> event_records(["u"], ["i"], [1000], "click")
    [{'user_id': 'u', 'item_id': 'i', 'timestamp': 1000, 'event_type': 'click'}]
    """
    out = []
    for j, (u, i, t) in enumerate(zip(users, items, ts_ms)):
        rec = {"user_id": u, "item_id": i, "timestamp": int(t)}
        if event_type:
            rec["event_type"] = event_type
        if values is not None and values[j] is not None:
            rec["value"] = values[j]
        out.append(rec)
    return out


def catch_up_state(status: dict, posted: int, min_new_events: int) -> tuple[bool, str]:
    """Whether a ``/status`` answer says the deployment has applied all ``posted`` events:
    every accepted event cleaned (or quarantined), no landing file or clean part waiting, the
    trainer has observed them all and updated on them (or fewer than ``min_new_events`` targets
    wait, below which it does not update), a model version published and served (or, with the
gate on, none live yet: serving answers from popularity until a candidate beats it), and the bootstrap
    ``phase``, where the status has one, at ``streaming``. The reason names what is missing.

    Over HTTP an event is accepted only after inline cleaning, so the Ray Data pass cleans
    exactly the accepted events: ``cleaned`` reaches ``accepted``."""
    counts, lag = status.get("counts", {}), status.get("lag", {})
    progress = (status.get("trainer") or {}).get("progress") or {}
    seen = progress.get("events_seen")
    pending = progress.get("pending_targets")
    # The trainer reports its progress after reading a slice, not after the update that follows,
    # so an idle trainer still shows the pending targets it has since learned: an update at the
    # offset it has read to has learned them.
    updated = ((status.get("trainer") or {}).get("last_update") or {}).get("offset")
    gate = (status.get("trainer") or {}).get("gate") or {}
    learned = updated is not None and updated == progress.get("offset")
    checks = [
        (counts.get("accepted", 0) >= posted, f"accepted {counts.get('accepted')} of {posted} posted"),
        (counts.get("cleaned", 0) >= counts.get("accepted", 0),
         f"cleaned {counts.get('cleaned')} of {counts.get('accepted')} accepted"),
        (lag.get("pending_files", 1) == 0, f"{lag.get('pending_files')} landing files pending"),
        (lag.get("clean_parts_behind", 1) == 0, f"trainer {lag.get('clean_parts_behind')} clean parts behind"),
        (seen is not None and seen >= counts.get("cleaned", 0), f"trainer saw {seen} of {counts.get('cleaned')}"),
        (pending is not None and (pending < min_new_events or learned),
         f"{pending} targets pending an update"),
        # a version is live, or the gate keeps serving on popularity until a candidate beats it
        ((status.get("model_version") or 0) >= 1 or bool(gate.get("enabled") and not gate.get("live_version")),
         "no model version yet"),
        (status.get("served_version") == status.get("model_version"),
         f"serving v{status.get('served_version')}, trainer at v{status.get('model_version')}"),
    ]
    if "phase" in status:
        checks.append((status["phase"] == "streaming", f"phase {status['phase']!r}"))
    missing = [why for ok, why in checks if not ok]
    return not missing, "; ".join(missing) or "caught up"


def next_new_items(users: Sequence[str], items: Sequence[str], end: int) -> dict[str, str]:
    """Each user's first item after position ``end`` that they had not had in [0, end), for
    users with an event before ``end`` (the burst check's targets).

    >>> next_new_items(["u", "v", "u", "u", "v", "w"], ["a", "b", "a", "c", "d", "e"], 2)
    {'u': 'c', 'v': 'd'}
    """
    had: dict[str, set[str]] = {}
    for u, i in zip(users[:end], items[:end]):
        had.setdefault(u, set()).add(i)
    out: dict[str, str] = {}
    for u, i in zip(users[end:], items[end:]):
        if u in had and u not in out and i not in had[u]:
            out[u] = i
    return out


def windowed(live_ranks: Sequence[int], pop_ranks: Sequence[int], size: int, z: float = 2.0,
             k: int = K) -> dict:
    """Live against popularity over consecutive windows of ``size`` scored events: each window's
    NDCG@k of both and the paired difference's standard error, and how many windows had live
    below popularity by more than ``z`` standard errors (a served model found worse)."""
    out = []
    for a in range(0, len(live_ranks), size):
        lv, pp = live_ranks[a:a + size], pop_ranks[a:a + size]
        if len(lv) < 2:
            break
        d = paired_difference(lv, pp, k)
        out.append({"from": a, "n": len(lv), f"live_ndcg@{k}": round(metric_summary(lv, k)[f"ndcg@{k}"], 5),
                    f"popularity_ndcg@{k}": round(metric_summary(pp, k)[f"ndcg@{k}"], 5),
                    "diff_se": round(d[f"ndcg@{k}_se"], 5),
                    "live_worse": bool(d[f"ndcg@{k}"] < -z * d[f"ndcg@{k}_se"])})
    return {"size": size, "z": z, "windows": out, "live_worse": sum(w["live_worse"] for w in out)}
