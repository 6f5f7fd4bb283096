"""Weight publishing: numbered weight versions in the Ray object store.

The trainer hands each new weight set (see ``increc_ray.learn.model`` for its
format) to a ``WeightRegistry``, which ``ray.put``s it, so the registry's
process owns the object and it outlives the train worker that produced it.
Serving replicas long-poll ``wait_newer`` and get back an ObjectRef: the
weights travel through the shared-memory object store, not through the
registry's RPC, and every replica on a node reads the same copy.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import ray


@dataclass
class Published:
    version: int
    ref: ray.ObjectRef
    metrics: dict = field(default_factory=dict)
    published_at: float = field(default_factory=time.time)

    def describe(self) -> dict:
        return {"version": self.version, "published_at": self.published_at, "metrics": self.metrics}


class WeightRegistry:
    """Latest published weight version; waiters wake as soon as a newer one arrives."""

    def __init__(self) -> None:
        self._latest: Published | None = None
        self._changed = asyncio.Condition()
        self.n_published = 0

    @property
    def version(self) -> int:
        return self._latest.version if self._latest else 0

    @property
    def latest(self) -> Published | None:
        return self._latest

    async def publish(self, weights: dict) -> int:
        """Store ``weights`` (with its ``version``) in the object store and wake waiters."""
        version = int(weights["version"])
        assert version > self.version, f"weight versions must increase: got {version} after {self.version}"
        ref = ray.put(weights)
        async with self._changed:
            self._latest = Published(version, ref, dict(weights.get("metrics", {})))
            self.n_published += 1
            self._changed.notify_all()
        return version

    async def wait_newer(self, after: int, timeout_s: float) -> tuple[int, list[ray.ObjectRef]] | None:
        """(version, [ref]) of a version newer than ``after``, or None after ``timeout_s``.

        The ref is wrapped in a list so that Ray passes the reference itself,
        not the weights, back to the caller.
        """
        async with self._changed:
            try:
                await asyncio.wait_for(
                    self._changed.wait_for(lambda: self.version > after), timeout=timeout_s
                )
            except asyncio.TimeoutError:
                return None
            latest = self._latest
            return latest.version, [latest.ref]
