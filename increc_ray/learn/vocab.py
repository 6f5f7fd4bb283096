"""Item ids <-> embedding rows.

ID convention (used everywhere in increc_ray): items are numbered from 1; 0 is padding.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


class ItemVocab:
    """External string item id <-> 1-based index (0 is padding, never an item)."""

    def __init__(self) -> None:
        self._ids: list[str] = []  # _ids[i - 1] is the id of index i
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def add(self, ids: Iterable[str]) -> np.ndarray:
        """Indices of ``ids``, adding unknown ids (in order of first appearance)."""
        out = []
        for item_id in ids:
            idx = self._index.get(item_id)
            if idx is None:
                self._ids.append(item_id)
                idx = self._index[item_id] = len(self._ids)
            out.append(idx)
        return np.asarray(out, dtype=np.int64)

    def lookup(self, ids: Iterable[str]) -> np.ndarray:
        """Indices of ``ids``; 0 (padding) for unknown ids."""
        return np.asarray([self._index.get(i, 0) for i in ids], dtype=np.int64)

    def id_of(self, idx: int) -> str:
        assert 1 <= idx <= len(self._ids), f"item index must be in [1, {len(self._ids)}], got {idx}"
        return self._ids[idx - 1]

    def to_list(self) -> list[str]:
        return list(self._ids)

    @classmethod
    def from_list(cls, ids: Iterable[str]) -> "ItemVocab":
        vocab = cls()
        ids = list(ids)
        vocab.add(ids)
        assert len(vocab) == len(ids), "vocab list has duplicate ids"
        return vocab
