"""Python's garbage-collector pauses in this process, by generation (Ray-free).

A collection stops every thread of the process that wants the GIL, a replica's event loop
included, so a full (generation 2) collection over a large heap (Ray, FastAPI, torch and their
modules: a few hundred thousand objects) is a stall of every request in flight. ``GcPauses``
times each collection through ``gc.callbacks`` (the interpreter's own hook, called at its start
and end, on whichever thread collects) so that ``/status`` can say whether collections are what a
tail latency is made of. Ray Serve 2.60 already moves the objects alive at the end of a replica's
start out of every later collection's reach (``gc.freeze``, ``RAY_SERVE_FREEZE_GC_ON_STARTUP``,
on by default; ``frozen_objects`` counts them): a second freeze of our own at the end of
``__init__`` was measured and changed nothing (README, "The p99 at half of saturation").
"""

from __future__ import annotations

import gc
import threading
import time

GENERATIONS = 3


class GcPauses:
    """Counts, total and longest pause (ms) of this process's collections, per generation."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started: float | None = None
        self.count = [0] * GENERATIONS
        self.total_ms = [0.0] * GENERATIONS
        self.max_ms = [0.0] * GENERATIONS
        self.over_10ms = 0  # collections that took longer than 10 ms (a request's budget at p99)

    def __call__(self, phase: str, info: dict) -> None:
        # called with the GIL held, so one collection at a time: the start and its stop pair up
        if phase == "start":
            self._started = time.perf_counter()
            return
        if self._started is None:  # installed mid-collection
            return
        ms = (time.perf_counter() - self._started) * 1000
        self._started = None
        g = min(int(info.get("generation", 0)), GENERATIONS - 1)
        with self._lock:
            self.count[g] += 1
            self.total_ms[g] += ms
            self.max_ms[g] = max(self.max_ms[g], ms)
            self.over_10ms += ms > 10

    def stats(self) -> dict:
        with self._lock:
            return {"collections": list(self.count), "total_ms": [round(x, 1) for x in self.total_ms],
                    "max_ms": [round(x, 2) for x in self.max_ms], "over_10ms": self.over_10ms,
                    "frozen_objects": gc.get_freeze_count()}


_watch: GcPauses | None = None
_watch_lock = threading.Lock()


def watch() -> GcPauses:
    """This process's one ``GcPauses``, installed in ``gc.callbacks`` on the first call."""
    global _watch
    with _watch_lock:
        if _watch is None:
            _watch = GcPauses()
            gc.callbacks.append(_watch)
        return _watch
