"""A quantized first pass for the exact top-k of a large catalogue (``serving.index: int8``; Ray-free).

At 1M items the exact scan reads the whole fp32 item table (512 MiB) per forward pass, 25-30 ms
at batch 1 on this machine, bound by memory. ``Int8Rows`` keeps the table's rows as int8 with a
scale per row (symmetric: ``row ~ scale * q``, ``|q| <= 127``), a quarter of the bytes, scored by
torch's int8 weight-only matmul (``aten._weight_int8pack_mm``, bf16 activations, the kernel
``torchao``'s CPU int8 path uses). The scorer takes the ``candidates`` best rows of that pass and
ranks them by their exact fp32 scores, so an answer's scores are exact and only a row that the
quantization pushed below the candidates can be missed (recall against the exact scan:
``bench/scoring_scale.py``, ``tests/serve/test_quantized.py``).

A replica quantizes a table once per base: an overlay version's base (``learn.published``) is
shared by the versions until the trainer rebases, and their moved rows are scored exactly
besides it; a whole version is quantized when adopted.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

CHUNK_ROWS = 65_536  # rows quantized at a time: bounds the float temporaries


class Int8Rows:
    """Rows ``0 .. n-1`` of an item table (n, C), quantized to int8 with a bf16 scale per row."""

    def __init__(self, table: torch.Tensor) -> None:
        n, c = table.shape
        self.q = torch.empty((n, c), dtype=torch.int8)
        scale = torch.empty(n, dtype=torch.float32)
        for lo in range(0, n, CHUNK_ROWS):
            rows = table[lo:lo + CHUNK_ROWS].float()
            s = rows.abs().amax(dim=1).clamp(min=1e-12) / 127.0
            self.q[lo:lo + CHUNK_ROWS] = torch.round(rows / s[:, None]).clamp_(-127, 127).to(torch.int8)
            scale[lo:lo + CHUNK_ROWS] = s
        self.scale = scale.to(torch.bfloat16)

    def __len__(self) -> int:
        return self.q.shape[0]

    @torch.inference_mode()
    def scores(self, hidden: torch.Tensor) -> torch.Tensor:
        """Approximate scores (B, n) of ``hidden`` (B, C) against every row, in float32."""
        return torch.ops.aten._weight_int8pack_mm(hidden.to(torch.bfloat16), self.q, self.scale).float()


@dataclass(frozen=True)
class Int8Settings:
    """``serving.index_*`` read by the int8 first pass (``increc_ray.config.ServingConfig``)."""

    min_items: int = 50_000  # below this many rows the exact scan is cheap: no first pass
    candidates: int = 100  # rows of the first pass ranked by their exact scores


class Int8Index:
    """A replica's quantized tables: the one of the newest base (or whole version), made once."""

    def __init__(self, settings: Int8Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._key: object = None
        self._rows: Int8Rows | None = None
        self.builds = 0
        self.last_build_s: float | None = None

    def rows_of(self, key: object, table: torch.Tensor, rows: int) -> Int8Rows:
        """The quantized rows of ``table[:rows]``, made when ``key`` (the base's id, or the version
        of a whole table) is new, else the ones made for it earlier (rows added since are the
        overlay's moved rows, scored exactly)."""
        with self._lock:
            if key == self._key and self._rows is not None:
                return self._rows
        start = time.perf_counter()
        made = Int8Rows(table[:rows])
        with self._lock:
            self._key, self._rows = key, made
            self.builds += 1
            self.last_build_s = round(time.perf_counter() - start, 3)
        return made

    def stats(self) -> dict:
        with self._lock:
            return {"kind": "int8", "quantized_rows": len(self._rows) if self._rows is not None else 0,
                    "builds": self.builds, "last_build_s": self.last_build_s}
