"""A quantized first pass for the exact top-k of a large catalogue (``serving.index: int8``; Ray-free).

At 1M items the exact scan reads the whole fp32 item table (512 MiB) per forward pass, 25-30 ms
at batch 1 on this machine, bound by memory. ``Int8Rows`` keeps the table's rows as int8 with a
scale per row (symmetric: ``row ~ scale * q``, ``|q| <= 127``), a quarter of the bytes, scored by
torch's int8 weight-only matmul (``aten._weight_int8pack_mm``, bf16 activations, the kernel
``torchao``'s CPU int8 path uses). The scorer takes the ``candidates`` best rows of that pass and
ranks them by their exact fp32 scores, so an answer's scores are exact and only a row that the
quantization pushed below the candidates can be missed (recall against the exact scan:
``bench/scoring_scale.py``, ``tests/serve/test_quantized.py``).

A table is quantized once per base: an overlay version's base (``learn.published``) is shared by
the versions until the trainer rebases, and their moved rows are scored exactly besides it; a
whole version is quantized when adopted. Each new table's rows that equal the last table's are
copied from its quantized rows, not quantized again. The registry (``serve.registry``) quantizes
each base once and puts it into the object store beside the base (``Int8Rows.arrays``), and every
replica adopts that copy (``Int8Index``'s ``shared``) where each used to build its own, at the
same moment as the others, on the same cores; a replica builds one itself only when the
registry has none (a whole version, a registry restarted).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from increc_ray.learn.published import store_tensor

CHUNK_ROWS = 65_536  # rows quantized at a time: bounds the float temporaries


def _quantize(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 rows, float32 scale per row) of ``rows`` (m, C): ``row ~ scale * q``."""
    rows = rows.float()
    s = rows.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    return torch.round(rows / s[:, None]).clamp_(-127, 127).to(torch.int8), s


def _differ(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(m,) bool: where rows of ``a`` and ``b`` (m, C) differ; a NaN differs from everything. A
    column-major table (as published) is compared through its transpose, whose rows are contiguous
    (on a whole 1M x 128 table: 0.22 s, against 0.36 s reducing across the strided dimension)."""
    if a.stride(0) == 1 and b.stride(0) == 1:
        return (a.t() != b.t()).any(dim=0)
    return (a != b).any(dim=1)


class Int8Rows:
    """Rows ``0 .. n-1`` of an item table (n, C), quantized to int8 with a bf16 scale per row.

    ``previous``, the quantized rows of an earlier table and that table, lends what did not change:
    a row equal to the earlier table's is copied from its quantized rows, and only the others are
    quantized, the same values a whole build gives (a row's quantization depends on that row alone).
    A new overlay base at 1M items differs from the one before in the rows moved since it (at most
    ``learn.frozen.REBASE_SHARE`` of them, plus those of the last update), so a build per base (the
    registry's, or a replica's own) costs a comparison of the two tables and those rows, not the
    whole table (``bench/int8_follow.py``)."""

    def __init__(self, table: torch.Tensor, previous: "tuple[Int8Rows, torch.Tensor] | None" = None) -> None:
        n, c = table.shape
        self.q = torch.empty((n, c), dtype=torch.int8)
        self.scale = torch.empty(n, dtype=torch.bfloat16)
        self.quantized = 0  # rows quantized here, not copied from ``previous``
        old, old_table = previous if previous is not None else (None, table[:0])
        same_upto = min(len(old), len(old_table), n) if old is not None else 0
        if same_upto:  # copied whole, then the changed rows quantized over it
            self.q[:same_upto], self.scale[:same_upto] = old.q[:same_upto], old.scale[:same_upto]
        for lo in range(0, n, CHUNK_ROWS):
            hi = min(lo + CHUNK_ROWS, n)
            rows = table[lo:hi]
            top = min(hi, same_upto)  # rows lo..top-1 may equal the earlier table's
            if top <= lo:
                self._put(lo, hi, slice(None), rows)
                continue
            changed = _differ(rows[: top - lo], old_table[lo:top])
            if top < hi:  # rows the earlier table did not have
                changed = torch.cat([changed, torch.ones(hi - top, dtype=torch.bool)])
            moved = changed.nonzero().flatten()
            if len(moved) == hi - lo:
                self._put(lo, hi, slice(None), rows)
            elif len(moved):
                self._put(lo, hi, moved, rows[moved])

    def __len__(self) -> int:
        return self.q.shape[0]

    def arrays(self) -> dict:
        """The quantized rows as numpy arrays for the object store (numpy has no bfloat16: the
        scales travel as their bits, int16); ``from_arrays`` adopts them without a copy."""
        return {"q": self.q.numpy(), "scale_bits": self.scale.view(torch.int16).numpy()}

    def head(self, rows: int) -> "Int8Rows":
        """The first ``rows`` rows, as views."""
        made = Int8Rows.__new__(Int8Rows)
        made.q, made.scale, made.quantized = self.q[:rows], self.scale[:rows], 0
        return made

    @classmethod
    def from_arrays(cls, arrays: dict, rows: int | None = None) -> "Int8Rows":
        """The first ``rows`` (all: None) of quantized rows made elsewhere (``arrays``), as views of
        their memory (the object store's, read-only: nothing writes to a made table)."""
        made = cls.__new__(cls)
        made.q, made.scale = store_tensor(arrays["q"]), store_tensor(arrays["scale_bits"]).view(torch.bfloat16)
        made.quantized = 0
        return made if rows is None else made.head(rows)

    @torch.inference_mode()
    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Approximate scores (B, n) of ``hidden`` (B, C) against every row, in float32."""
        return torch.ops.aten._weight_int8pack_mm(hidden.to(torch.bfloat16), self.q, self.scale).float()

    def _put(self, lo: int, hi: int, at, rows: torch.Tensor) -> None:
        q, s = _quantize(rows)
        self.q[lo:hi][at] = q
        self.scale[lo:hi][at] = s.to(torch.bfloat16)
        self.quantized += len(q)


@dataclass(frozen=True)
class Int8Settings:
    """``serving.index_*`` read by the int8 first pass (``increc_ray.config.ServingConfig``)."""

    min_items: int = 50_000  # below this many rows the exact scan is cheap: no first pass
    candidates: int = 100  # rows of the first pass ranked by their exact scores

    @classmethod
    def of(cls, serving) -> "Int8Settings":
        """The settings of a ``ServingConfig``."""
        return cls(min_items=serving.index_min_items, candidates=serving.index_candidates)


class Int8Index:
    """A replica's quantized tables: the one of the newest base (or whole version), adopted from
    ``shared`` (the registry's, for a key it knows: None otherwise) or made once, from the one before
    it where rows stayed put."""

    def __init__(self, settings: Int8Settings, shared: "Callable[[object], Int8Rows | None] | None" = None) -> None:
        self.settings = settings
        self.shared = shared
        self.adopted = 0  # tables taken from ``shared``, not built here
        self._lock = threading.Lock()
        self._key: object = None
        self._rows: Int8Rows | None = None
        # the table ``_rows`` quantizes: a view of the object store's copy, which the registry keeps
        # for its newest bases and this replica's scorer holds anyway until the next base
        self._table: torch.Tensor | None = None
        self.builds = 0
        self.last_build_s: float | None = None
        self.last_build_quantized = 0  # rows the last build quantized (the others were copied)

    def rows_of(self, key: object, table: torch.Tensor, rows: int) -> Int8Rows:
        """The quantized rows of ``table[:rows]``, made when ``key`` (the base's id, or the version
        of a whole table) is new, else the ones made for it earlier (rows added since are the
        overlay's moved rows, scored exactly). A new one copies the rows equal to the last one's."""
        with self._lock:
            if key == self._key and self._rows is not None:
                return self._rows
            previous = (self._rows, self._table) if self._rows is not None else None
        made = self.shared(key) if self.shared is not None else None
        if made is not None and len(made) >= rows:
            made = made.head(rows)
            with self._lock:
                self._key, self._rows, self._table = key, made, table[:rows]
                self.adopted += 1
            return made
        start = time.perf_counter()
        made = Int8Rows(table[:rows], previous)
        with self._lock:
            self._key, self._rows, self._table = key, made, table[:rows]
            self.builds += 1
            self.last_build_s = round(time.perf_counter() - start, 3)
            self.last_build_quantized = made.quantized
        return made

    def stats(self) -> dict:
        with self._lock:
            return {"kind": "int8", "quantized_rows": len(self._rows) if self._rows is not None else 0,
                    "builds": self.builds, "adopted": self.adopted, "last_build_s": self.last_build_s,
                    "last_build_quantized": self.last_build_quantized}
