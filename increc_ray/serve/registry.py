"""Weight publishing: numbered weight versions in the Ray object store.

The trainer hands each new weight set (see ``increc_ray.learn.model`` for its
format) to a ``WeightRegistry``, which ``ray.put``s it, so the registry's
process owns the object and it outlives the train worker that produced it.
Serving replicas long-poll ``wait_newer`` and get back an ObjectRef: the
weights travel through the shared-memory object store, not through the
registry's RPC, and every replica on a node reads the same copy. An overlay version
(``learn.published``) carries its item table's base by reference: the registry puts each base
once, and ``resolve`` fetches it. With ``serving.index: int8`` the registry also quantizes each
base once, in a thread, from the base before it (``serve.quantized``), and puts the quantized rows
beside it (``int8_rows``): every replica adopts them where each used to build its own.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import ray

from increc_ray.learn import published
from increc_ray.serve.quantized import Int8Rows, Int8Settings


KEEP_BASES = 2  # as the trainer's ``published.BaseCopies.KEEP``


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

    def __init__(self, int8: Int8Settings | None = None) -> None:
        self._latest: Published | None = None
        self._int8_settings = int8  # quantize each base with more rows than its min_items (serving.index int8)
        # base id -> the quantizing of it: a task whose result is the ref of its ``Int8Rows.arrays``
        self._int8: dict[str, asyncio.Task] = {}
        self._int8_last: tuple[ray.ObjectRef, ray.ObjectRef] | None = None  # (base, its quantized rows), newest
        # its builds (None when not quantizing: /status leaves them out)
        self.int8_counts = None if int8 is None else {"built": 0, "failed": 0, "last_build_s": None, "last_quantized": 0}
        self._changed = asyncio.Condition()
        # the newest overlay bases: id -> (its table's ref, its vocabulary's ref or None), oldest first
        self._bases: dict[str, tuple[ray.ObjectRef, ray.ObjectRef | None]] = {}
        # versions published, those that were overlays, the bases put, and the weights' MiB put
        # (a base counted once): what serving's weights cost the object store (``/status``)
        self.counts = {"versions": 0, "overlays": 0, "bases": 0, "weights_mib": 0.0}

    @property
    def version(self) -> int:
        return self._latest.version if self._latest else 0

    @property
    def latest(self) -> Published | None:
        return self._latest

    async def publish(self, weights: dict) -> int:
        """Store ``weights`` (with its ``version``) in the object store and wake waiters; 0 (nothing
        published) for an overlay whose base was left out and is not the one held here."""
        version = int(weights["version"])
        assert version > self.version, f"weight versions must increase: got {version} after {self.version}"
        items = weights.get(published.ITEM_ROWS)
        put = sum(getattr(v, "nbytes", 0) for v in weights.get("state_dict", {}).values())
        if items is not None:  # the base goes into the object store once; versions carry a reference
            base_id = items["base_id"]
            if items["base"] is not None:
                vocab = items.get("vocab_base")
                self._bases[base_id] = (ray.put(items["base"]), None if vocab is None else ray.put(vocab))
                self._quantize_later(base_id, self._bases[base_id][0], len(items["base"]))
                while len(self._bases) > KEEP_BASES:
                    gone = next(iter(self._bases))
                    self._bases.pop(gone)
                    self._int8.pop(gone, None)
                self.counts["bases"] += 1
                put += items["base"].nbytes
            elif base_id not in self._bases or (items.get("vocab_tail") is not None and self._bases[base_id][1] is None):
                return 0
            table, vocab = self._bases[base_id] = self._bases.pop(base_id)  # the most recently used last
            items = {**items, "base": table}
            if items.get("vocab_tail") is not None:
                items["vocab_base"] = vocab
            weights = {**weights, published.ITEM_ROWS: items}
            self.counts["overlays"] += 1
            put += items["rows"].nbytes + items["values"].nbytes
        ref = ray.put(weights)
        async with self._changed:
            self._latest = Published(version, ref, dict(weights.get("metrics", {})))
            self.counts["versions"] += 1
            self.counts["weights_mib"] += put / 2**20
            self._changed.notify_all()
        return version

    def _quantize_later(self, base_id: str, table_ref: ray.ObjectRef, rows: int) -> None:
        """Start quantizing the base ``table_ref`` (the store's copy) in a thread, from the last base
        quantized where rows stayed put; ``int8_rows`` answers with the result."""
        if self._int8_settings is None or rows <= self._int8_settings.min_items:
            return
        previous = self._int8_last

        async def quantize() -> ray.ObjectRef:
            start = time.perf_counter()
            try:
                table = published.store_tensor(await table_ref)  # a zero-copy view of the store's copy
                prev = None
                if previous is not None:
                    old_table, old_rows = await previous[0], await previous[1]
                    prev = (Int8Rows.from_arrays(old_rows), published.store_tensor(old_table))
                made = await asyncio.to_thread(Int8Rows, table, prev)  # torch leaves the GIL: requests go on
                ref = ray.put(made.arrays())
            except Exception:
                self.int8_counts["failed"] += 1
                raise
            self._int8_last = (table_ref, ref)
            self.int8_counts.update(built=self.int8_counts["built"] + 1, last_quantized=made.quantized,
                                    last_build_s=round(time.perf_counter() - start, 3))
            return ref

        self._int8[base_id] = asyncio.get_running_loop().create_task(quantize())

    async def int8_rows(self, base_id: str, timeout_s: float) -> list[ray.ObjectRef] | None:
        """[the ref of base ``base_id``'s quantized rows] (``Int8Rows.arrays``), once made; None when
        this registry is not making them (not int8, a base it no longer holds, a failed or slow build)."""
        task = self._int8.get(base_id)
        if task is None:
            return None
        try:
            return [await asyncio.wait_for(asyncio.shield(task), timeout_s)]
        except Exception:  # timed out, or failed: the replica builds its own
            return None

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


def resolve(weights: dict, vocab: bool = True) -> dict:
    """A published artifact as it came out of the object store, with an overlay's base (references
    to what the registry put once) fetched: its table as a zero-copy view of the store's copy, and,
    unless ``vocab`` is false (a replica whose vocabulary the new tail extends:
    ``published.extends``), its vocabulary list."""
    items = weights.get(published.ITEM_ROWS)
    if items is None or not isinstance(items["base"], ray.ObjectRef):
        return weights
    items = {**items, "base": ray.get(items["base"])}
    if vocab and isinstance(items.get("vocab_base"), ray.ObjectRef):
        items["vocab_base"] = ray.get(items["vocab_base"])
    return {**weights, published.ITEM_ROWS: items}
