"""Read-your-writes for replica-local copies of the user history (Ray-free core).

Every recommend call needs the user's recent items. Asking the one ``UserHistory`` replica costs
a Serve hop per request, so each Recommender replica keeps a copy of the index, fed by a
long-poll on ``UserHistory``'s change log, and answers from it. The copy must not be stale for
the user who just posted: ``POST /events`` answers only after their event is in the history,
and the next recommendation, on any replica, must be built on it.

The protocol, with leases measured only as durations on each process's own monotonic clock:

* A subscriber (a Recommender replica) polls ``wait(sub, after=seq it has applied)``. Each poll
  *acknowledges* ``after`` and renews the subscriber's lease for ``lease_s`` from its arrival.
* ``append`` answers (and so ``POST /events`` answers) only once every subscriber holding a live
  lease has acknowledged the new sequence number, or its lease ran out (a dead replica does
  not block writes for longer than ``lease_s``).
* A subscriber answers from its copy only while the poll whose answer it applied last was
  *sent* less than ``stale_s`` ago, with ``stale_s < lease_s``; otherwise it asks the history
  replica (the remote hop) as before.

Why that is enough: say an append of seq ``s`` finished at time ``A`` and a recommend runs on a
replica at ``R > A``. If the replica's lease was live throughout the append, it acknowledged
``s`` before ``A``, so its copy holds ``s``. If the append stopped waiting for it because its
lease ran out, no poll of it arrived in the ``lease_s`` before that moment, so the last poll it
has an answer to was sent more than ``lease_s > stale_s`` before ``R``: it does not trust its
copy. Clocks are compared only as durations, so no clock synchronisation is assumed.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from typing import Callable

import pyarrow as pa


class ChangeLog:
    """Sequence-numbered tables of rows appended to an index, the newest ``retain_rows`` kept.

    ``epoch`` names this log's lifetime: a subscriber holding another epoch's sequence numbers
    (the history replica restarted) must start again from a snapshot."""

    def __init__(self, retain_rows: int = 200_000) -> None:
        self.epoch = uuid.uuid4().hex
        self.seq = 0
        self.retain_rows = retain_rows
        self._entries: deque[tuple[int, pa.Table]] = deque()
        self._rows = 0

    def add(self, table: pa.Table) -> int:
        """Log ``table`` (rows just applied); returns its sequence number."""
        self.seq += 1
        self._entries.append((self.seq, table))
        self._rows += table.num_rows
        while self._rows > self.retain_rows and len(self._entries) > 1:
            _, old = self._entries.popleft()
            self._rows -= old.num_rows
        return self.seq

    def since(self, epoch: str | None, after: int) -> list[pa.Table] | None:
        """The tables logged after ``after``, or None when the caller must take a snapshot
        (another epoch, or entries it needs are no longer kept)."""
        if epoch != self.epoch or after > self.seq:
            return None
        if after == self.seq:
            return []
        first = self._entries[0][0] if self._entries else self.seq + 1
        if after + 1 < first:
            return None
        return [t for s, t in self._entries if s > after]


class Leases:
    """Subscribers' acknowledged sequence numbers and leases (``lease_s`` from each poll's arrival)."""

    def __init__(self, lease_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        assert lease_s > 0, f"lease_s must be > 0, got {lease_s}"
        self.lease_s = lease_s
        self._clock = clock
        self._subs: dict[str, tuple[float, int]] = {}  # id -> (last poll arrival, acknowledged seq)
        self.expired = 0  # leases that ran out (a copy that stopped polling: dead, or cut off)

    def ack(self, sub: str, seq: int) -> None:
        """A poll from ``sub`` arrived: it has applied everything up to ``seq``."""
        self._subs[sub] = (self._clock(), seq)

    def forget(self, sub: str) -> None:
        self._subs.pop(sub, None)

    def behind(self, seq: int) -> dict[str, float]:
        """Live subscribers that have not acknowledged ``seq``: id -> seconds left on the lease."""
        now, out = self._clock(), {}
        for sub, (at, acked) in list(self._subs.items()):
            left = at + self.lease_s - now
            if left <= 0:
                del self._subs[sub]  # expired: its next poll subscribes it again
                self.expired += 1
            elif acked < seq:
                out[sub] = left
        return out

    def live(self) -> int:
        now = self._clock()
        return sum(at + self.lease_s > now for at, _ in self._subs.values())


class Snapshots:
    """One pickled snapshot of the index, handed to every copy that needs one while the log still
    holds the entries taken after it, for at most ``max_age_s``.

    A snapshot pickles the whole index on the history replica's event loop: 2.0 s for 51 MiB at
    1M items, during which no write and no poll is answered. Made once per copy, autoscaling's
    replica churn at 1M items cost 43 of them in one run (``bench/results/serve_load_1m_int8.json``)
    and the copies went stale behind them. An older snapshot travels with the log's rows since
    its seq, and the copy applies both before it trusts itself (``UserHistory.follow``)."""

    def __init__(self, max_age_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_age_s = max_age_s
        self._clock = clock
        self._held: tuple[str, int, float, bytes] | None = None  # epoch, seq, taken at, bytes
        self.made = self.reused = 0

    def get(self, log: ChangeLog, make: Callable[[], bytes]) -> tuple[bytes, list[pa.Table]]:
        """The index at ``log.seq``: a snapshot's bytes and the tables logged after it, to apply
        in order; ``make`` pickles the index as it is now."""
        now = self._clock()
        if self._held is not None:
            epoch, seq, at, data = self._held
            if now - at < self.max_age_s and (rows := log.since(epoch, seq)) is not None:
                self.reused += 1
                return data, rows
        data = make()
        self._held = (log.epoch, log.seq, now, data)
        self.made += 1
        return data, []
