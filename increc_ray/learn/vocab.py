"""Item ids <-> embedding rows.

ID convention (used everywhere in increc_ray): items are numbered from 1; 0 is padding.

An expired item (``IncrementalLearner``'s ``trainer.item_ttl_s``) frees its index: a hole that
the next new item takes (lowest first), so the item table stops growing once the catalogue stops
growing. ``len`` counts indices in use or free (the rows a scorer spans); ``holes`` are never
scored. Published and checkpointed vocabularies are lists with ``None`` at the holes.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Iterable, Sequence

import numpy as np

_GENERATIONS = itertools.count(1)


class ItemVocab:
    """External string item id <-> 1-based index (0 is padding, never an item)."""

    def __init__(self) -> None:
        self._ids: list[str | None] = []  # _ids[i - 1] is the id of index i (None: a hole)
        self._index: dict[str, int] = {}
        self._free: list[int] = []  # heap of hole indices
        # changes whenever an index may change meaning (a removal), never on appends: a mapping
        # from these indices to another numbering stays valid while it holds, for the indices it had
        self.generation = next(_GENERATIONS)

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    @property
    def n_live(self) -> int:
        """Known items (indices that are not holes)."""
        return len(self._index)

    def add(self, ids: Iterable[str]) -> np.ndarray:
        """Indices of ``ids``, adding unknown ids (in order of first appearance) in holes first."""
        out = []
        for item_id in ids:
            idx = self._index.get(item_id)
            if idx is None:
                if self._free:
                    idx = heapq.heappop(self._free)
                    self._ids[idx - 1] = item_id
                else:
                    self._ids.append(item_id)
                    idx = len(self._ids)
                self._index[item_id] = idx
            out.append(idx)
        return np.asarray(out, dtype=np.int64)

    def remove(self, ids: Iterable[str]) -> np.ndarray:
        """Forget ``ids`` (unknown ones are ignored); returns the indices freed."""
        freed = []
        for item_id in ids:
            idx = self._index.pop(item_id, None)
            if idx is not None:
                self._ids[idx - 1] = None
                heapq.heappush(self._free, idx)
                freed.append(idx)
        if freed:
            self.generation = next(_GENERATIONS)
        return np.asarray(freed, dtype=np.int64)

    def holes(self) -> np.ndarray:
        """Free indices, ascending."""
        return np.asarray(sorted(self._free), dtype=np.int64)

    def lookup(self, ids: Iterable[str]) -> np.ndarray:
        """Indices of ``ids``; 0 (padding) for unknown ids."""
        return np.asarray([self._index.get(i, 0) for i in ids], dtype=np.int64)

    def id_of(self, idx: int) -> str:
        assert 1 <= idx <= len(self._ids), f"item index must be in [1, {len(self._ids)}], got {idx}"
        item_id = self._ids[idx - 1]
        assert item_id is not None, f"item index {idx} is a hole (its item expired)"
        return item_id

    def ids_from(self, index: int) -> list[str | None]:
        """Ids of indices ``index``, ``index`` + 1, ... (None at holes)."""
        return self._ids[max(index, 1) - 1:]

    def to_list(self) -> list[str | None]:
        return list(self._ids)

    def extended(self, ids: Sequence[str | None]) -> "ItemVocab":
        """This vocabulary with ``ids`` appended at indices ``len(self) + 1, ...`` (None: a hole);
        this one is never changed. Costs a copy of its index, not a pass over its ids."""
        vocab = ItemVocab()
        vocab._ids, vocab._index, vocab._free = self._ids + list(ids), self._index.copy(), list(self._free)
        for i, item_id in enumerate(ids, start=len(self._ids) + 1):
            if item_id is None:
                vocab._free.append(i)  # larger than every index in the heap: still a heap
            else:
                vocab._index[item_id] = i
        assert len(vocab._index) == len(vocab._ids) - len(vocab._free), "vocab list has duplicate ids"
        return vocab

    @classmethod
    def from_list(cls, ids: Iterable[str | None], base: "ItemVocab | None" = None) -> "ItemVocab":
        """The vocabulary of a published list. Given ``base`` (the previous version's, say), and a
        list that extends base's (append-only: no expiry or hole refilled since), base's index is
        copied and only the new ids looked at (what a replica adopting the next version costs:
        ``bench/scoring_scale.py``). ``base`` is never changed."""
        ids = list(ids)
        n = len(base._ids) if base is not None else 0
        if base is not None and len(ids) >= n and ids[:n] == base._ids:
            return base.extended(ids[n:])
        vocab = cls()
        vocab._ids = ids
        vocab._index = {item_id: i + 1 for i, item_id in enumerate(vocab._ids) if item_id is not None}
        vocab._free = [i + 1 for i, item_id in enumerate(vocab._ids) if item_id is None]  # ascending: a heap
        n_real = len(vocab._ids) - len(vocab._free)
        assert len(vocab._index) == n_real, "vocab list has duplicate ids"
        return vocab
