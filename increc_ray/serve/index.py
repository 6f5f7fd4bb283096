"""An approximate top-k for large catalogues that follows new weight versions without a rebuild
per version (Ray-free core).

Exact top-k scans the whole item table per request: 27 ms at 1M items (``bench/scoring_scale.py``),
where the encoder costs under 1 ms. An HNSW graph (usearch: a maintained library with prebuilt
wheels, and add and search that release the GIL; inner products as L2 distances, ``_augment``) finds near neighbours in
a fraction of a millisecond, but building one over 1M rows takes minutes, and the trainer
publishes a version a second. The sampled softmax (``trainer.loss: sampled``) moves only the
rows an update touches, so between versions most of the table stands still. Hence:

* the graph indexes the table of some earlier version, its *base*;
* each new version is compared with the base: the rows that moved (by more than ``tolerance`` of
  their length; 0: at all), and rows the base did not have, are the version's *fresh* rows,
  scored exactly for every request (a small matmul);
* a request's candidates are the graph's nearest ``candidates`` rows, less the fresh ones (their
  place in the graph is stale), plus every fresh row, all scored with the version's own
  weights, so the answer is what exact top-k over those rows gives (a row that moved less than
  ``tolerance`` is found where the graph has it, and scored where it is now);
* once the fresh rows pass ``refresh_fraction`` of the catalogue a thread brings a *copy* of the
  graph up to the newest version (remove and re-add those rows) and makes it the base; a graph
  that requests search is never changed.

With the full softmax every row moves every update, everything is fresh, and the answer is the
exact scan's at the exact scan's cost: use ``serving.index: hnsw`` with the sampled loss.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

logger = logging.getLogger("increc_ray.serve")


@dataclass(frozen=True)
class IndexSettings:
    """``serving.index_*`` (``increc_ray.config.ServingConfig``)."""

    min_items: int = 50_000  # below this many rows the exact scan is as fast: no graph
    candidates: int = 100  # neighbours taken from the graph per request (before the fresh rows)
    ef: int = 64  # HNSW search depth (usearch ``expansion_search``)
    connectivity: int = 16  # HNSW M
    refresh_fraction: float = 0.02  # fresh rows past this share of the catalogue: refresh the graph
    tolerance: float = 0.0  # a row is fresh once it moved more than this share of its length (0: at all)
    threads: int = 1  # threads a build or refresh may use


@dataclass(frozen=True)
class View:
    """One version's approximate search: the graph, and the rows scored exactly besides it."""

    graph: object  # usearch.index.Index over its base's rows 1.. (keys = row indices)
    fresh: torch.Tensor  # (F,) int64: rows that differ from the graph's base or are newer than it
    fresh_t: torch.Tensor  # (C, F): their vectors in this version, transposed for one matmul
    stale: torch.Tensor  # (rows,) bool: True where a graph hit may not be used (fresh rows, pad)
    candidates: int

    def hits(self, hidden: torch.Tensor, extra: int = 0) -> torch.Tensor:
        """(B, candidates + extra) rows the graph finds nearest to ``hidden`` (B, C), -1 where it
        found fewer or the hit is stale (that row is among the fresh ones)."""
        q = hidden.detach().to(torch.float32).numpy()
        q = np.ascontiguousarray(np.hstack([q, np.zeros((len(q), 1), np.float32)]))  # see _augment
        count = self.candidates + extra
        found = self.graph.search(q, count, threads=1)
        if hasattr(found, "counts"):  # BatchMatches: (B, count) keys, each row valid up to its count
            keys = np.asarray(found.keys, dtype=np.int64).reshape(len(q), -1).copy()
            keys[np.arange(keys.shape[1])[None, :] >= np.asarray(found.counts)[:, None]] = -1
        else:  # one query: Matches, its hits only
            keys = np.full((1, count), -1, dtype=np.int64)
            got = np.asarray(found.keys, dtype=np.int64)
            keys[0, : len(got)] = got
        hits = torch.from_numpy(keys)
        usable = hits >= 0
        usable[usable.clone()] = ~self.stale[hits[usable]]
        return torch.where(usable, hits, torch.full_like(hits, -1))


def _augment(vectors: np.ndarray, radius: float) -> np.ndarray:
    """Rows ``x`` as ``[x, sqrt(radius^2 - |x|^2)]``: every row then has length ``radius``, so for a
    query ``[q, 0]`` the nearest rows in L2 are those of largest inner product ``q . x`` (maximum
    inner product search as nearest neighbours; Bachrach et al. 2014). An HNSW graph built on the
    inner product itself found 0.91 of exact top-10 on a trained ml-latest-small table, on these
    0.99 (bench/ann_follow.py). A row longer than ``radius`` gets 0: found a little less often,
    still scored exactly."""
    sq = (vectors.astype(np.float32) ** 2).sum(axis=1, keepdims=True)
    return np.ascontiguousarray(np.hstack([vectors, np.sqrt(np.maximum(radius * radius - sq, 0.0))]), np.float32)


class ItemIndex:
    """HNSW over a replica's item table that follows the published versions (see module doc).

    ``follow(table, rows)`` per version, from one thread; it returns the version's ``View``, or
    None while no graph is built yet (the first build runs in a thread; exact top-k meanwhile).
    """

    def __init__(self, settings: IndexSettings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._graph = None  # usearch Index over _base[1:_base_rows]
        self._base: torch.Tensor | None = None  # (base_rows, C) the table the graph indexes
        self._base_sq: torch.Tensor | None = None  # (base_rows,) its rows' squared lengths
        self._radius = 0.0  # _augment's, fixed by the first build
        self._building = False
        self.builds = 0  # graphs made (first build and refreshes)
        self.last_build_s: float | None = None
        self.last_follow_s: float | None = None
        self.last_fresh = 0

    def follow(self, table: torch.Tensor, rows: int) -> View | None:
        """The ``View`` for a version whose item table's first ``rows`` rows (pad + items, holes
        included) are ``table[:rows]``; starts a build or refresh when one is due."""
        start = time.perf_counter()
        table = table[:rows]
        with self._lock:
            graph, base, base_sq = self._graph, self._base, self._base_sq
        if graph is None:
            self._start(table, None, None)
            return None
        n = min(len(base), rows)
        drift = table[:n] - base[:n]
        changed = (drift * drift).sum(dim=1) > self.settings.tolerance ** 2 * base_sq[:n]
        changed[0] = False  # pad is never a candidate
        fresh = torch.cat([changed.nonzero().flatten(), torch.arange(n, rows)])
        stale = changed
        if rows > n:
            stale = torch.cat([changed, torch.ones(rows - n, dtype=torch.bool)])
        stale = stale.clone()
        stale[0] = True
        self.last_fresh = len(fresh)
        if len(fresh) > self.settings.refresh_fraction * rows:
            self._start(table, graph, fresh)
        fresh_t = table[fresh].t().contiguous()
        self.last_follow_s = time.perf_counter() - start
        return View(graph, fresh, fresh_t, stale, self.settings.candidates)

    def _start(self, table: torch.Tensor, graph, fresh: torch.Tensor | None) -> None:
        with self._lock:
            if self._building:
                return
            self._building = True
        threading.Thread(target=self._build, args=(table, graph, fresh), name="increc-index", daemon=True).start()

    def _build(self, table: torch.Tensor, graph, fresh: torch.Tensor | None) -> None:
        """A graph over ``table`` (rows 1..): a new one, or a copy of ``graph`` with the ``fresh``
        rows re-added; it becomes the base for the versions after it."""
        from usearch.index import Index

        start = time.perf_counter()
        try:
            vectors = table.detach().to(torch.float32).numpy()
            if graph is None:
                self._radius = 1.5 * float(np.sqrt((vectors[1:] ** 2).sum(axis=1).max()))  # room for rows to grow
                new = Index(ndim=vectors.shape[1] + 1, metric="l2sq", dtype="f32",
                            connectivity=self.settings.connectivity,
                            expansion_add=2 * self.settings.ef, expansion_search=self.settings.ef)
                new.add(np.arange(1, len(vectors)), _augment(vectors[1:], self._radius), threads=self.settings.threads)
            else:
                new = graph.copy()
                rows = fresh.numpy()
                known = rows[rows < len(self._base)]
                if len(known):
                    new.remove(known)
                new.add(rows, _augment(vectors[rows], self._radius), threads=self.settings.threads)
            base_sq = (table * table).sum(dim=1)
            with self._lock:
                self._graph, self._base, self._base_sq = new, table, base_sq
            self.builds += 1
            self.last_build_s = time.perf_counter() - start
            logger.info("item index %s over %d rows in %.1f s", "built" if graph is None else "refreshed",
                        len(vectors) - 1, self.last_build_s)
        except Exception:
            logger.exception("item index build failed; exact top-k until the next try")
        finally:
            with self._lock:
                self._building = False

    def wait_idle(self, timeout_s: float = 600.0) -> bool:
        """Until no build runs (tests and benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if not self._building:
                    return True
            time.sleep(0.01)
        return False

    def stats(self) -> dict:
        with self._lock:
            built = self._graph is not None
            base_rows = len(self._base) if self._base is not None else 0
        return {"built": built, "base_rows": base_rows, "builds": self.builds, "fresh_rows": self.last_fresh,
                "last_build_s": self.last_build_s, "last_follow_s": self.last_follow_s}
