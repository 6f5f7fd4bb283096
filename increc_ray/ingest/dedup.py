"""De-duplication across the whole history: every accepted ``dedup_key`` is applied once.

A key accepted over HTTP is *reserved* for the landing file that holds it until that file is
cleaned, so the Ray Data pass keeps exactly that copy and drops any other (a client's retry,
the same event in a dropped file). ``KeyLedger`` holds both sets under one lock.
"""

from __future__ import annotations

import threading
from typing import Callable, Iterable

import pyarrow as pa


def drop_batch_duplicates(table: pa.Table) -> tuple[pa.Table, int]:
    """Drop rows whose ``dedup_key`` repeats an earlier row of ``table``; returns (kept, dropped)."""
    return _keep_first_sightings(table, set())


class SeenKeys:
    """Every ``dedup_key`` accepted (with ``ingest.retention_s``, those not pruned yet: an event old
    enough to repeat a pruned one is refused by age instead)."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._keys: set[str] = set()
        self.add(keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def add(self, keys: Iterable[str]) -> None:
        """Remember ``keys`` (any iterable of strings, or an Arrow array of them)."""
        if isinstance(keys, (pa.Array, pa.ChunkedArray)):
            keys = keys.to_pylist()
        self._keys.update(keys)

    def forget(self, keys: Iterable[str]) -> None:
        """Drop ``keys`` (their events were pruned: ``increc_ray.ingest.retention``)."""
        for k in keys:
            self._keys.discard(k)

    def filter_new(self, table: pa.Table) -> tuple[pa.Table, int]:
        """Keep rows whose key is new (first one wins within ``table``); remember them."""
        return _keep_first_sightings(table, self._keys)


def _keep_first_sightings(table: pa.Table, seen: set[str]) -> tuple[pa.Table, int]:
    """Keep rows whose ``dedup_key`` is not in ``seen`` yet, adding them to it; returns (kept, dropped)."""
    keep = [not (k in seen or seen.add(k)) for k in table.column("dedup_key").to_pylist()]  # add() is None
    kept = table.filter(pa.array(keep, pa.bool_()))
    return kept, table.num_rows - kept.num_rows


class KeyLedger:
    """The keys seen in the clean store, and those reserved by landing files not cleaned yet."""

    def __init__(self, seen: Iterable[str] = ()) -> None:
        self.seen = SeenKeys(seen)
        self._reserved: dict[str, str] = {}  # dedup_key -> landing file holding its accepted copy
        self._reserved_in: dict[str, list[str]] = {}  # landing file -> its reserved keys (to release)
        self._claimed: dict[str, list[str]] = {}  # landing file -> keys a cleaning pass reserved for it
        self._lock = threading.Lock()

    @property
    def n_reserved(self) -> int:
        return len(self._reserved)

    def reserve(self, keys: list[str], new_path: Callable[[], str]) -> tuple[list[bool], str | None]:
        """Which of ``keys`` are new (neither seen, reserved, nor earlier in ``keys``), reserved
        for the landing file ``new_path()`` names; (mask, that path, or None if none is new)."""
        with self._lock:
            keep = self._new(keys)
            if not any(keep):
                return keep, None
            path = new_path()
            self._reserved_in[path] = [k for k, fresh in zip(keys, keep) if fresh]
            for k in self._reserved_in[path]:
                self._reserved[k] = path
            return keep, path

    def unseen(self, keys: list[str]) -> list[bool]:
        """Which of ``keys`` ``reserve`` would find new now; reserves nothing."""
        with self._lock:
            return self._new(keys)

    def adopt(self, path: str, keys: Iterable[str]) -> None:
        """Reserve ``keys`` for the existing landing file ``path`` (a restart finding HTTP files
        it accepted before but has not cleaned yet); a key seen or held by another file stays so."""
        with self._lock:
            held = self._reserved_in.setdefault(path, [])
            for k in keys:
                if k not in self.seen and k not in self._reserved:
                    self._reserved[k] = path
                    held.append(k)

    def release(self, path: str) -> None:
        """Drop the reservations of landing file ``path`` (written, or failed to be written)."""
        with self._lock:
            self._drop(path, self._reserved_in.pop(path, ()))

    def claim(self, keys: list[str], path: str) -> tuple[list[bool], list[bool]]:
        """(keep, fresh) for the rows of landing file ``path``: keep a row whose key is not seen
        and is reserved by no other file; fresh: kept and not reserved at all (a row that HTTP
        ingest has not already handed to user histories).

        Kept keys are not seen yet: a fresh key is reserved for ``path`` (so another file in the
        same pass, or an HTTP retry meanwhile, is a duplicate of it) until the pass either
        ``commit``s (its clean part is durably written) or ``abort``s (the write failed: the
        retry finds the same rows new again).
        """
        keep, fresh = [], []
        with self._lock:
            claimed = self._claimed.setdefault(path, [])
            for k in keys:
                owner = self._reserved.get(k)
                ok = k not in self.seen and (owner is None or owner == path)
                keep.append(ok)
                fresh.append(ok and owner is None)
                if ok and owner is None:
                    self._reserved[k] = path
                    claimed.append(k)
        return keep, fresh

    def commit(self, paths: Iterable[str], kept_keys: Iterable[str]) -> None:
        """The pass over ``paths`` durably wrote the rows of ``kept_keys``: they are seen now,
        and the files' reservations end."""
        with self._lock:
            self.seen.add(kept_keys)
            for path in paths:
                self._drop(path, self._reserved_in.pop(path, ()))
                self._drop(path, self._claimed.pop(path, ()))

    def forget(self, keys: Iterable[str]) -> None:
        """Drop seen ``keys`` (their parts were pruned: ``increc_ray.ingest.retention``)."""
        with self._lock:
            self.seen.forget(keys)

    def abort(self, paths: Iterable[str]) -> None:
        """The pass over ``paths`` failed before its part was written: forget what it claimed,
        keep what HTTP ingest reserved (those files are still pending, and still hold the keys)."""
        with self._lock:
            for path in paths:
                self._drop(path, self._claimed.pop(path, ()))

    def _drop(self, path: str, keys: Iterable[str]) -> None:
        for k in keys:
            if self._reserved.get(k) == path:
                del self._reserved[k]

    def _new(self, keys: list[str]) -> list[bool]:
        new, batch = [], set()
        for k in keys:
            new.append(k not in self.seen and k not in self._reserved and k not in batch)
            batch.add(k)
        return new
