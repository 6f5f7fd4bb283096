"""A seeded synthetic event stream with structure a sequential model can learn.

The planted structure:

* Items are split into ``n_clusters`` taste clusters; within a cluster the
  items form one cycle, so every item has exactly one planted successor
  (and one predecessor) in its own cluster.
* Each user has a current taste cluster. A user's next item is the planted
  successor of their previous item with probability ``p_follow``, otherwise
  a uniformly random item of their current cluster.
* Tastes drift: after every ``drift_every`` events a share of the users move
  to another cluster (0 disables drift).
* The catalogue grows: after every ``new_item_every`` events a new item is
  spliced into a cycle right after a random predecessor (0 disables this), so
  a model must learn items it has never seen before.

Ids are strings (``"u17"``, ``"i42"``); item ids count up from ``"i0"`` in
order of creation. Events follow the project's event schema and their
timestamps advance by ``seconds_per_event`` per event. The same arguments
always give the same stream.

>>> stream = SyntheticStream(n_users=3, n_items=4, n_clusters=1, seed=1)
>>> event = stream.next_events(1)[0]
>>> sorted(event)
['event_id', 'event_type', 'item_id', 'timestamp', 'user_id', 'value']
>>> event["event_id"], event["timestamp"]
('syn-1-0', 1767225600.0)
>>> new = stream.introduce_item()
>>> new, stream.successor(stream.predecessor(new)) == new
('i4', True)
"""

from __future__ import annotations

import numpy as np

# Mostly views and clicks, as in a real shop log.
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
EVENT_TYPE_PROBS = (0.45, 0.40, 0.10, 0.05)

DRIFT_SHARE = 0.1  # share of users that change cluster at each drift step


class SyntheticStream:
    """An endless, deterministic stream of events with planted successors."""

    def __init__(
        self,
        n_users: int = 200,
        n_items: int = 100,
        p_follow: float = 0.8,
        new_item_every: int = 500,
        n_clusters: int = 5,
        drift_every: int = 2000,
        start_time: float = 1_767_225_600.0,
        seconds_per_event: float = 1.0,
        seed: int = 0,
    ) -> None:
        if n_users < 1:
            raise ValueError(f"n_users must be >= 1, got {n_users}")
        if n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if n_items < n_clusters:
            raise ValueError(f"n_items must be >= n_clusters ({n_clusters}), got {n_items}")
        if not 0.0 <= p_follow <= 1.0:
            raise ValueError(f"p_follow must be in [0, 1], got {p_follow}")
        if new_item_every < 0 or drift_every < 0:
            raise ValueError(f"new_item_every and drift_every must be >= 0 (0 = never), "
                             f"got {new_item_every} and {drift_every}")
        if seconds_per_event <= 0:
            raise ValueError(f"seconds_per_event must be > 0, got {seconds_per_event}")

        self.p_follow = p_follow
        self.new_item_every = new_item_every
        self.drift_every = drift_every
        self.start_time = start_time
        self.seconds_per_event = seconds_per_event
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._n_events = 0

        self._items = [f"i{j}" for j in range(n_items)]
        self._cluster_of: dict[str, int] = {}
        self._members: list[list[str]] = [[] for _ in range(n_clusters)]
        self._succ: dict[str, str] = {}
        self._pred: dict[str, str] = {}
        self._new_items: list[str] = []

        # Shuffled so that neither clusters nor cycles follow id order.
        order = self._rng.permutation(n_items)
        for c, chunk in enumerate(np.array_split(order, n_clusters)):
            cycle = [f"i{j}" for j in chunk]
            for a, b in zip(cycle, cycle[1:] + cycle[:1]):
                self._succ[a], self._pred[b] = b, a
            self._members[c] = cycle
            for item in cycle:
                self._cluster_of[item] = c

        self._users = [f"u{j}" for j in range(n_users)]
        self._taste = {u: int(c) for u, c in zip(self._users, self._rng.integers(n_clusters, size=n_users))}
        self._last: dict[str, str] = {}

    # -- the catalogue ---------------------------------------------------------

    @property
    def items(self) -> list[str]:
        """The current catalogue, in order of creation."""
        return list(self._items)

    @property
    def new_items(self) -> list[str]:
        """Items added after construction, in order of arrival."""
        return list(self._new_items)

    @property
    def n_events(self) -> int:
        """How many events the stream has produced so far."""
        return self._n_events

    def successor(self, item_id: str) -> str:
        """The planted item that follows ``item_id``."""
        return self._succ[item_id]

    def predecessor(self, item_id: str) -> str:
        """The planted item that ``item_id`` follows."""
        return self._pred[item_id]

    def cluster_of(self, item_id: str) -> int:
        """The taste cluster ``item_id`` belongs to."""
        return self._cluster_of[item_id]

    def taste_of(self, user_id: str) -> int:
        """The taste cluster ``user_id`` currently draws from."""
        return self._taste[user_id]

    # -- the stream ------------------------------------------------------------

    def introduce_item(self) -> str:
        """Create a new item now, splice it after a random item of a random cluster; return its id."""
        item = f"i{len(self._items)}"
        cluster = int(self._rng.integers(len(self._members)))
        members = self._members[cluster]
        before = members[int(self._rng.integers(len(members)))]
        after = self._succ[before]
        self._succ[before], self._pred[item] = item, before
        self._succ[item], self._pred[after] = after, item
        members.append(item)
        self._cluster_of[item] = cluster
        self._items.append(item)
        self._new_items.append(item)
        return item

    def next_events(self, n: int) -> list[dict]:
        """The next ``n`` events of the stream."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return [self._next_event() for _ in range(n)]

    def _next_event(self) -> dict:
        rng = self._rng
        user = self._users[int(rng.integers(len(self._users)))]
        last = self._last.get(user)
        if last is not None and rng.random() < self.p_follow:
            item = self._succ[last]
        else:
            members = self._members[self._taste[user]]
            item = members[int(rng.integers(len(members)))]
        self._last[user] = item
        event = {
            "event_id": f"syn-{self.seed}-{self._n_events}",
            "user_id": user,
            "item_id": item,
            "event_type": EVENT_TYPES[int(rng.choice(len(EVENT_TYPES), p=EVENT_TYPE_PROBS))],
            "timestamp": self.start_time + self._n_events * self.seconds_per_event,
            "value": None,
        }
        self._n_events += 1
        # Changes happen between events, after every full period.
        if self.drift_every and self._n_events % self.drift_every == 0:
            self._drift()
        if self.new_item_every and self._n_events % self.new_item_every == 0:
            self.introduce_item()
        return event

    def _drift(self) -> None:
        """Move a share of the users to another taste cluster."""
        n_clusters = len(self._members)
        if n_clusters < 2:
            return
        n_moving = max(1, round(DRIFT_SHARE * len(self._users)))
        for j in self._rng.choice(len(self._users), size=n_moving, replace=False):
            user = self._users[int(j)]
            # An offset in [1, n_clusters) guarantees a different cluster.
            self._taste[user] = (self._taste[user] + int(self._rng.integers(1, n_clusters))) % n_clusters
