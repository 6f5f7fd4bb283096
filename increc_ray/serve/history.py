"""Each user's recent history and the popularity fallback (Ray-free core).

The serving layer reads this on every recommend call, and ingest writes to it
before it answers, so a user's newest events shape their very next
recommendation (read-your-writes) even before the model has been updated.

Popularity decays in *event* time with a configurable half-life, so a burst
of interest in a new item lifts it quickly and old hits fade; a half-life of 0
keeps all-time counts (what the gate's popularity baseline counts).

State is bounded by expiry, also in event time: a user with no event for
``user_ttl_s`` and an item with none for ``item_ttl_s`` are forgotten, and the
dedup keys of events older than the longer of the two with them. Expiry runs inside
``append`` at fixed event-time steps, so every copy of an index fed the same
appends (``increc_ray.serve.sync``) forgets the same things at the same point.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import Collection

import numpy as np
import pyarrow as pa

# The clean-store columns a history needs (dedup_key makes appending idempotent).
HISTORY_COLUMNS = ["user_id", "item_id", "timestamp", "label", "weight", "dedup_key"]

# Rescale decayed counts before 2**x overflows float64 (max exponent ~1023).
_MAX_EXPONENT = 60.0
# The most popular items kept ranked, so a popular call costs a walk of this list, not a
# scan of the catalogue (a heapq over 1M items is ~94 ms); a call excluding more of them
# than the list holds falls back to the scan.
TOP_CACHE = 1024


class UserHistoryIndex:
    """Recent positive items per user, every item a user has seen, and decayed popularity."""

    def __init__(self, history_len: int = 200, half_life_s: float = 3600.0,
                 user_ttl_s: float | None = None, item_ttl_s: float | None = None) -> None:
        assert history_len > 0, f"history_len must be > 0, got {history_len}"
        assert half_life_s >= 0, f"half_life_s must be >= 0 (0: no decay), got {half_life_s}"
        assert not user_ttl_s or user_ttl_s > 0, f"user_ttl_s must be > 0 or None, got {user_ttl_s}"
        assert not item_ttl_s or item_ttl_s > 0, f"item_ttl_s must be > 0 or None, got {item_ttl_s}"
        self.history_len = history_len
        self.half_life_s = half_life_s
        self.user_ttl_s, self.item_ttl_s = user_ttl_s or None, item_ttl_s or None
        # Expiry: last event time (s) per user and per item, dedup keys bucketed by event time,
        # and the event time at which the next sweep runs (every tenth of the shortest ttl).
        self._user_at: dict[str, float] = {}
        self._item_at: dict[str, float] = {}
        self._key_buckets: dict[int, set[str]] = {}
        ttls = [t for t in (self.user_ttl_s, self.item_ttl_s) if t]
        self._sweep_step = min(ttls) / 10 if ttls else None
        self._next_sweep: float | None = None
        self.now = -math.inf  # the newest event time appended
        self.expired_users = self.expired_items = 0
        self._history: dict[str, deque[str]] = {}
        self._seen: dict[str, set[str]] = {}
        self._pop: dict[str, float] = {}
        self._t0: float | None = None  # reference event time of the popularity scores
        self._keys: set[str] = set()  # dedup_keys applied: a replayed event is not counted twice
        # Exact top-TOP_CACHE of _pop: scores only grow (a rescale shrinks all alike), so only a
        # bumped item can enter it; ranked lazily when a popular call finds it changed.
        self._top: dict[str, float] = {}
        self._top_min = -math.inf
        self._ranked: list[tuple[str, float]] | None = []
        self.n_events = 0
        self.duplicate_appends = 0

    def __len__(self) -> int:
        return len(self._seen)

    def append(self, events: pa.Table) -> int:
        """Add cleaned events (user_id, item_id, timestamp, label, weight, optionally dedup_key);
        returns rows added. Appending is idempotent by ``dedup_key``: an event handed over
        twice (a restarted ingest re-sending what it had accepted) is counted once."""
        return self.append_new(events).num_rows

    def append_new(self, events: pa.Table) -> pa.Table:
        """``append``, returning the rows it added (what a copy of this index must apply too)."""
        keys = None
        if "dedup_key" in events.column_names and events.num_rows:
            keys = events.column("dedup_key").to_pylist()
            keep = [not (k in self._keys or self._keys.add(k)) for k in keys]  # add() is None
            if not all(keep):
                self.duplicate_appends += len(keys) - sum(keep)
                events = events.filter(pa.array(keep, pa.bool_()))
                keys = [k for k, kept in zip(keys, keep) if kept]
        if events.num_rows == 0:
            return events
        users = events.column("user_id").to_pylist()
        items = events.column("item_id").to_pylist()
        labels = events.column("label").to_numpy(zero_copy_only=False)
        weights = events.column("weight").to_numpy(zero_copy_only=False)
        # Event time in seconds; ordering keeps a user's sequence in time order even
        # when a batch arrives shuffled.
        ts = events.column("timestamp").cast(pa.int64()).to_numpy(zero_copy_only=False) / 1000.0
        order = np.argsort(ts, kind="stable")
        expiring = self._sweep_step is not None
        for i in order:
            user, item = users[i], items[i]
            self._seen.setdefault(user, set()).add(item)
            if expiring:
                t = float(ts[i])
                if t > self._user_at.get(user, -math.inf):
                    self._user_at[user] = t
                if t > self._item_at.get(item, -math.inf):
                    self._item_at[item] = t
                if keys is not None:
                    self._key_buckets.setdefault(int(t // self._sweep_step), set()).add(keys[i])
            if labels[i] == 1:
                hist = self._history.get(user)
                if hist is None:
                    hist = self._history[user] = deque(maxlen=self.history_len)
                hist.append(item)
                self._bump(item, float(weights[i]), float(ts[i]))
        self.n_events += events.num_rows
        self.now = max(self.now, float(ts.max()))
        if expiring:
            if self._next_sweep is None:
                self._next_sweep = self.now + self._sweep_step
            elif self.now >= self._next_sweep:
                self.expire()
        return events

    def expire(self, now: float | None = None) -> dict:
        """Forget users unseen for ``user_ttl_s`` and items unseen for ``item_ttl_s`` before
        ``now`` (event time; default the newest appended), and the dedup keys of events older
        than the longest ttl (a replay that old cannot reach this index: a restart rebuilds it
        from the store, and ingest re-sends only its newest part). Returns what went."""
        now = self.now if now is None else now
        gone_users = gone_items = 0
        if self.user_ttl_s:
            cut = now - self.user_ttl_s
            for user in [u for u, t in self._user_at.items() if t < cut]:
                del self._user_at[user]
                self._seen.pop(user, None)
                self._history.pop(user, None)
                gone_users += 1
        if self.item_ttl_s:
            cut = now - self.item_ttl_s
            old = [i for i, t in self._item_at.items() if t < cut]
            for item in old:
                del self._item_at[item]
                self._pop.pop(item, None)
            gone_items = len(old)
            if any(item in self._top for item in old):
                # the ranked cache lost members: rebuild it from what is left (one scan)
                best = heapq.nlargest(TOP_CACHE, self._pop.items(), key=lambda kv: (kv[1], kv[0]))
                self._top = dict(best)
                self._top_min = min(self._top.values()) if self._top else -math.inf
                self._ranked = None
        if self._sweep_step:
            keep_from = int((now - max(t for t in (self.user_ttl_s, self.item_ttl_s) if t)) // self._sweep_step)
            for bucket in [b for b in self._key_buckets if b < keep_from]:
                self._keys.difference_update(self._key_buckets.pop(bucket))
            self._next_sweep = now + self._sweep_step
        self.expired_users += gone_users
        self.expired_items += gone_items
        return {"users": gone_users, "items": gone_items}

    def rebuild(self, stored: pa.Table | None, pending: list[pa.Table] = ()) -> int:
        """Start from the clean store, then the events acknowledged over HTTP that it does not
        hold yet (their landing files are still pending): what a restarted replica must know
        to answer as its predecessor did. Returns rows added."""
        added = self.append(stored) if stored is not None else 0
        return added + sum(self.append(t) for t in pending)

    def _bump(self, item: str, weight: float, t: float) -> None:
        if self._t0 is None:
            self._t0 = t
        exponent = (t - self._t0) / self.half_life_s if self.half_life_s else 0.0
        if exponent > _MAX_EXPONENT:
            # Move the reference time forward; every score shrinks by the same factor,
            # so the ranking is unchanged.
            scale = 2.0 ** (-exponent)
            self._pop = {k: v * scale for k, v in self._pop.items()}
            self._top = {k: v * scale for k, v in self._top.items()}
            self._top_min *= scale
            self._ranked = None
            self._t0, exponent = t, 0.0
        score = self._pop[item] = self._pop.get(item, 0.0) + weight * 2.0 ** exponent
        self._rank(item, score)

    def _rank(self, item: str, score: float) -> None:
        """Keep ``_top`` the exact TOP_CACHE best of ``_pop`` after ``item`` rose to ``score``."""
        top = self._top
        if item in top:
            top[item] = score
        elif len(top) < TOP_CACHE:
            top[item] = score
            self._top_min = min(self._top_min, score) if len(top) > 1 else score
        elif (score, item) > (self._top_min, ""):
            worst = min(top.items(), key=lambda kv: (kv[1], kv[0]))
            if (score, item) <= (worst[1], worst[0]):
                self._top_min = worst[1]
                return
            del top[worst[0]]
            top[item] = score
            self._top_min = min(top.values())
        else:
            return
        self._ranked = None

    def get(self, user_id: str) -> tuple[list[str], list[str]]:
        """(recent positive items oldest->newest, all items the user has seen)."""
        return list(self._history.get(user_id, ())), sorted(self._seen.get(user_id, ()))

    def popular(self, k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """The k most popular items not in ``exclude``, with their decayed scores (log-scaled)."""
        excluded = exclude if isinstance(exclude, (set, frozenset, dict)) else set(exclude)
        if self._ranked is None:
            self._ranked = sorted(self._top.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        out = []
        for item, score in self._ranked:
            if item not in excluded:
                out.append((item, score))
                if len(out) == k:
                    break
        if len(out) < k and len(self._pop) > len(self._ranked):  # excluded past the ranked list: scan
            best = heapq.nlargest(k + len(excluded), self._pop.items(), key=lambda kv: (kv[1], kv[0]))
            out = [(item, score) for item, score in best if item not in excluded][:k]
        # Report log-scores: the raw values depend on the arbitrary reference time.
        return [(item, math.log(score) if score > 0 else float("-inf")) for item, score in out]

    def stats(self) -> dict:
        return {"users": len(self._seen), "items": len(self._pop), "events": self.n_events,
                "duplicate_appends": self.duplicate_appends, "dedup_keys": len(self._keys),
                "expired_users": self.expired_users, "expired_items": self.expired_items}
