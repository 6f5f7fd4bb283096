"""Abuse that looks valid: the stateful cleaning rules, applied to clean events that are new.

``clean_batch`` judges each event alone; these rules judge an event against the events
accepted before it, so they live in the pipeline (``EventPipeline``), not in the Ray Data job:

* ``IdCardinality`` (reason ``cardinality: ...``): a new user or item id is refused once
  ``cleaning.max_users`` / ``cleaning.max_items`` ids are known; known ids always pass.
* ``RateLimiter`` (reason ``rate: ...``): a user's event is refused when that user already has
  ``cleaning.rate_limit_per_minute`` accepted events within a minute of it, so a bot cannot
  steer the model with a flood of plausible events.
* the retention horizon (reason ``retention: ...``, with ``ingest.retention_s``): an event older
  than the newest accepted one by more than the retention is refused, since the events it could
  repeat may be pruned (``increc_ray.ingest.retention``) and it could not be told from a duplicate.

Time is *event* time (the clean ``timestamp``), so a replay or a restart decides alike; a bot
that forges timestamps spread over many minutes is not caught by the rate rule. Both rules
are rebuilt on start from the clean store (``Admission.seed``).

>>> limiter = RateLimiter(max_per_minute=2, max_users_tracked=10)
>>> limiter.check(["bot", "bot", "bot", "bot", "ann"], [0, 1_000, 2_000, 61_500, 2_000])
[True, True, False, True, True]
>>> IdCardinality(max_users=1, max_items=None).check(["u1", "u2", "u1"], ["a", "b", "c"])
[None, "cardinality: user_id 'u2' would exceed cleaning.max_users=1", None]
"""

from __future__ import annotations

import threading
from bisect import bisect_left, bisect_right, insort
from collections import OrderedDict
from datetime import datetime, timezone
from itertools import repeat
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from increc_ray.config import CleaningConfig

WINDOW_MS = 60_000
RATE, CARDINALITY, RETENTION = "rate", "cardinality", "retention"  # the rules, as reasons begin


def rule_of(reason: str) -> str:
    """The rule a refusal reason names (``rate``, ``cardinality`` or ``retention``)."""
    return reason.split(":", 1)[0]


class RateLimiter:
    """At most ``max_per_minute`` accepted events per user within a minute (event time, ms) of
    each other; ``None`` allows everything and keeps nothing.

    Per user, the sorted timestamps of its accepted events back to a minute before its newest
    (an older, late event is checked against those only), for at most ``max_users_tracked``
    users: the least recently seen is forgotten first. Not thread-safe (``Admission`` locks).
    """

    def __init__(self, max_per_minute: int | None, max_users_tracked: int) -> None:
        self.max_per_minute = max_per_minute
        self.max_users_tracked = max_users_tracked
        self._recent: OrderedDict[str, list[int]] = OrderedDict()  # user -> sorted event times (ms)

    def __len__(self) -> int:
        return len(self._recent)

    def allow(self, user: str, ts_ms: int) -> bool:
        """Whether ``user``'s event at ``ts_ms`` is within the rate; an allowed one is recorded."""
        if self.max_per_minute is None:
            return True
        recent = self._window(user)
        near = bisect_left(recent, ts_ms + WINDOW_MS) - bisect_right(recent, ts_ms - WINDOW_MS)
        if near >= self.max_per_minute:
            return False
        self._record(recent, ts_ms)
        return True

    def check(self, users: Sequence[str], timestamps_ms: Sequence[int]) -> list[bool]:
        """``allow`` for each event, in the given order (True = allowed and recorded)."""
        return [self.allow(u, t) for u, t in zip(users, timestamps_ms)]

    def seed(self, users: Iterable[str], timestamps_ms: Iterable[int]) -> None:
        """Record accepted events without checking them (a restart reading the clean store);
        oldest first, so the most recent users are the ones kept."""
        if self.max_per_minute is not None:
            for u, t in sorted(zip(users, timestamps_ms), key=lambda e: e[1]):
                self._record(self._window(u), t)

    def forget(self, users: Iterable[str], timestamps_ms: Iterable[int]) -> None:
        """Un-record allowed events that were never written (a failed write, retried later)."""
        for u, t in zip(users, timestamps_ms):
            recent = self._recent.get(u, [])
            i = bisect_left(recent, t)
            if i < len(recent) and recent[i] == t:
                del recent[i]

    def reason(self, user: str) -> str:
        return (f"{RATE}: user {user!r} has more than {self.max_per_minute} events in 60 s "
                "(cleaning.rate_limit_per_minute)")

    def _window(self, user: str) -> list[int]:
        """``user``'s recent event times, now the most recently seen user."""
        recent = self._recent.get(user)
        if recent is None:
            recent = self._recent[user] = []
            if len(self._recent) > self.max_users_tracked:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(user)
        return recent

    @staticmethod
    def _record(recent: list[int], ts_ms: int) -> None:
        insort(recent, ts_ms)
        del recent[: bisect_right(recent, recent[-1] - WINDOW_MS)]  # out of reach of newer events


class IdCardinality:
    """The known user and item ids, each with the event time (ms) it was last seen; a new id is
    refused once ``max_users`` / ``max_items`` are known (``None``: no limit, and that map is not
    kept). ``expire`` forgets ids unseen since a time, so the limit counts ids of the retained
    stream, not every id ever seen. Not thread-safe (``Admission`` locks)."""

    def __init__(self, max_users: int | None, max_items: int | None) -> None:
        self.max_users, self.max_items = max_users, max_items
        self.users: dict[str, int] | None = {} if max_users is not None else None
        self.items: dict[str, int] | None = {} if max_items is not None else None

    def refusal(self, user: str, item: str) -> str | None:
        """Why an event of ``user`` on ``item`` would exceed a limit (None: it would not)."""
        why = (_over("user_id", user, self.users, "max_users", self.max_users),
               _over("item_id", item, self.items, "max_items", self.max_items))
        return "; ".join(w for w in why if w) or None

    def add(self, user: str, item: str, ts_ms: int = 0) -> None:
        """Know ``user`` and ``item`` from now on (an accepted event at ``ts_ms``)."""
        _see(self.users, user, ts_ms)
        _see(self.items, item, ts_ms)

    def check(self, users: Sequence[str], items: Sequence[str]) -> list[str | None]:
        """``refusal`` for each event in order; the ids of a passing one become known."""
        out = []
        for u, i in zip(users, items):
            out.append(self.refusal(u, i))
            if out[-1] is None:
                self.add(u, i)
        return out

    def seed(self, users: Iterable[str], items: Iterable[str],
             users_ms: Iterable[int] | None = None, items_ms: Iterable[int] | None = None) -> None:
        """Know these ids, whatever the limits (the clean store's ids are all known), each last
        seen at its time in ``users_ms`` / ``items_ms`` (0 without)."""
        for known, ids, times in ((self.users, users, users_ms), (self.items, items, items_ms)):
            for key, t in zip(ids, repeat(0) if times is None else times):
                _see(known, key, t)

    def expire(self, before_ms: int) -> int:
        """Forget ids last seen before ``before_ms``; returns how many."""
        gone = 0
        for known in (self.users, self.items):
            if known is not None:
                old = [k for k, t in known.items() if t < before_ms]
                for k in old:
                    del known[k]
                gone += len(old)
        return gone


def _see(known: dict[str, int] | None, key: str, ts_ms: int) -> None:
    """``key`` seen at ``ts_ms`` (its newest time kept), in ``known`` unless that is not kept."""
    if known is not None and known.get(key, ts_ms - 1) < ts_ms:
        known[key] = ts_ms


def _over(name: str, value: str, known: dict[str, int] | None, key: str, limit: int | None) -> str | None:
    if known is None or value in known or len(known) < limit:
        return None
    return f"{CARDINALITY}: {name} {value!r} would exceed cleaning.{key}={limit}"


class Admission:
    """The rules over clean events (``CLEAN_SCHEMA`` columns), retention, cardinality then rate,
    under one lock: an event refused by one rule leaves no trace in the others."""

    def __init__(self, cfg: CleaningConfig, retention_s: float | None = None) -> None:
        self.ids = IdCardinality(cfg.max_users, cfg.max_items)
        self.rate = RateLimiter(cfg.rate_limit_per_minute, cfg.rate_users_tracked)
        self.retention_ms = None if retention_s is None else int(retention_s * 1000)
        self.newest_ms: int | None = None  # the newest accepted event's time
        self._lock = threading.Lock()

    def horizon_ms(self) -> int | None:
        """Events before this time are refused (reason ``retention``); None: no retention, or no
        event yet. It only moves forward: the newest accepted event time only grows."""
        if self.retention_ms is None or self.newest_ms is None:
            return None
        return self.newest_ms - self.retention_ms

    def seed(self, events: pa.Table) -> None:
        """Rebuild the state from accepted events (the clean store, pending HTTP files)."""
        if not events.num_rows:
            return
        with self._lock:
            ts = events.column("timestamp").cast(pa.int64())
            users, items = (pa.table({"id": events.column(col), "ts": ts}).group_by("id").aggregate([("ts", "max")])
                            for col in ("user_id", "item_id"))  # each id once, at its newest event
            self.ids.seed(users.column("id").to_pylist(), items.column("id").to_pylist(),
                          users.column("ts_max").to_pylist(), items.column("ts_max").to_pylist())
            newest = pc.max(ts).as_py()
            self.newest_ms = newest if self.newest_ms is None else max(self.newest_ms, newest)
            if self.rate.max_per_minute is None:
                return
            recent = last_minute_per_user(events)
            self.rate.seed(recent.column("user_id").to_pylist(), recent.column("ts").to_pylist())

    def check(self, events: pa.Table, new: Sequence[bool]) -> list[str | None]:
        """The refusal reason of each event where ``new`` holds (None: admitted, and recorded);
        None for the others, which the rules do not see. The retention horizon is the one
        before this batch: a file's own events never make each other too old."""
        users = events.column("user_id").to_pylist()
        items = events.column("item_id").to_pylist()
        times = events.column("timestamp").cast(pa.int64()).to_pylist()
        reasons: list[str | None] = [None] * events.num_rows
        with self._lock:
            horizon = self.horizon_ms()
            for i in (i for i, fresh in enumerate(new) if fresh):
                why = None
                if horizon is not None and times[i] < horizon:
                    why = self._too_old(times[i], horizon)
                if why is None:
                    why = self.ids.refusal(users[i], items[i])
                if why is None and not self.rate.allow(users[i], times[i]):
                    why = self.rate.reason(users[i])
                if why is None:
                    self.ids.add(users[i], items[i], times[i])
                    self.newest_ms = times[i] if self.newest_ms is None else max(self.newest_ms, times[i])
                reasons[i] = why
        return reasons

    def _too_old(self, ts_ms: int, horizon_ms: int) -> str:
        return (f"{RETENTION}: event time {_iso(ts_ms)} is more than ingest.retention_s="
                f"{self.retention_ms / 1000:g} before the newest accepted event ({_iso(horizon_ms + self.retention_ms)}); "
                "events that old are pruned, so it cannot be told from a duplicate")

    def forget(self, events: pa.Table) -> None:
        """Admitted events that were never written leave the rate window; their ids stay known
        (a retry of them passes)."""
        with self._lock:
            self.rate.forget(events.column("user_id").to_pylist(),
                             events.column("timestamp").cast(pa.int64()).to_pylist())

    def expire(self, before_ms: int) -> int:
        """Forget ids last seen before ``before_ms`` (their events are pruned); returns how many."""
        with self._lock:
            return self.ids.expire(before_ms)

    def status(self) -> dict:
        return {"rate_users_tracked": len(self.rate),
                "known_users": None if self.ids.users is None else len(self.ids.users),
                "known_items": None if self.ids.items is None else len(self.ids.items),
                "retention_horizon": None if (h := self.horizon_ms()) is None else _iso(h)}


def _iso(ts_ms: int) -> str:
    return datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


def last_minute_per_user(events: pa.Table) -> pa.Table:
    """(user_id, ts: int64 ms) of each user's events within a minute of that user's newest:
    all a ``RateLimiter`` keeps."""
    ts = pa.table({"user_id": events.column("user_id"), "ts": events.column("timestamp").cast(pa.int64())})
    newest = ts.group_by("user_id").aggregate([("ts", "max")])
    joined = ts.join(newest, "user_id")
    return joined.filter(pc.greater(joined.column("ts"), pc.subtract(joined.column("ts_max"), WINDOW_MS)))
