"""Frozen copies of the item table that cost the rows that moved, not the table (copy-on-write).

The gate freezes the learner's weights after an update (``gate.Snapshot``) and the trainer checks
them for NaN after every update. Both used to read the whole item table: a 1M-item table is
512 MiB, so a copy took longer than a sampled update (``trainer.loss: sampled``), which moves only
the rows its steps touch. ``RowLog`` follows the learner's writes to its table: a frozen table
(``FrozenRows``) is a base copy, shared with the frozen tables taken since it, plus the rows that
have moved since the base was taken; the finiteness check reads the rows written since the last
check. A write the log was not told of is caught by the table's version counter (every indexed
write bumps it) or by ``invalidate``, which the learner calls after a step that moves the whole
table (the full softmax's optimizer step, a fused kernel, does not bump it); either way the next
frozen copy or finiteness check reads the whole table, as before.
"""

from __future__ import annotations

import contextlib

import torch

from increc_ray.learn.model import all_finite

REBASE_SHARE = 0.125  # a new base copy once this share of the table's rows has moved since the last


class FrozenRows:
    """An item table (rows, C) at one moment: ``base`` with ``rows`` (sorted) replaced by ``values``.
    ``base`` may be shared with other frozen tables; nothing writes to it."""

    def __init__(self, base: torch.Tensor, rows: torch.Tensor | None = None, values: torch.Tensor | None = None,
                 base_finite: list[bool | None] | None = None) -> None:
        self.base = base
        self.rows = torch.zeros(0, dtype=torch.long) if rows is None else rows.cpu()
        self.values = base[:0] if values is None else values
        assert self.values.shape == (len(self.rows), *base.shape[1:]), "one value row per moved row"
        self._base_finite = base_finite or [None]  # whether base is finite: found once, by whichever table asks first

    @property
    def shape(self) -> torch.Size:
        return self.base.shape

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """Rows ``idx`` (any shape of indices) -> (*idx.shape, C)."""
        out = self.base[idx]
        if len(self.rows):
            pos = torch.searchsorted(self.rows, idx).clamp(max=len(self.rows) - 1)
            moved = self.rows[pos] == idx
            out[moved] = self.values[pos[moved]]
        return out

    def chunk(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(base rows lo..hi-1 (a view), the moved rows among them (indices from lo), their values)."""
        a, b = torch.searchsorted(self.rows, torch.tensor([lo, hi])).tolist()
        return self.base[lo:hi], self.rows[a:b] - lo, self.values[a:b]

    def dense(self) -> torch.Tensor:
        """The table as one tensor of its own."""
        out = self.base.clone()
        out[self.rows] = self.values
        return out

    def finite(self) -> bool:
        if self._base_finite[0] is None:
            self._base_finite[0] = all_finite([self.base])
        return self._base_finite[0] and all_finite([self.values])


class RowLog:
    """The rows of one learner's item table written since a base copy and since the last finiteness
    check. The learner writes its table inside ``writing(table, rows)``, or calls ``invalidate``."""

    def __init__(self, rebase_share: float = REBASE_SHARE) -> None:
        self.rebase_share = rebase_share
        self._table: torch.Tensor | None = None  # the table followed, and its version after the last logged write
        self._version = -1
        self._base: torch.Tensor | None = None  # CPU copy of the table at some earlier moment
        self._base_finite: list[bool | None] = [None]  # shared by the frozen tables on that base
        self._moved: list[torch.Tensor] = []  # rows written since the base copy
        self._n_moved = 0
        self._finite = False  # the table was finite at the last check ...
        self._unchecked: list[torch.Tensor] = []  # ... and these rows were written since
        self._n_unchecked = 0

    def invalidate(self) -> None:
        """The table moved in ways the log did not see: the next freeze or check reads all of it."""
        self._table, self._version = None, -1
        self._base = None
        self._moved, self._n_moved = [], 0
        self._finite, self._unchecked, self._n_unchecked = False, [], 0

    @contextlib.contextmanager
    def writing(self, table: torch.Tensor, rows: torch.Tensor):
        """Run a write of ``rows`` of ``table`` (indexed writes only)."""
        self._follow(table)
        yield
        rows = rows.detach().reshape(-1).cpu()
        self._version = table._version
        self._moved.append(rows)
        self._n_moved += len(rows)
        self._unchecked.append(rows)
        self._n_unchecked += len(rows)
        if self._n_moved > self.rebase_share * len(table):  # counted with repeats: count them once
            moved = torch.unique(torch.cat(self._moved))
            self._moved, self._n_moved = [moved], len(moved)
        if self._n_moved > self.rebase_share * len(table):  # the next freeze copies the table anyway
            self._base, self._moved, self._n_moved = None, [], 0
        if self._n_unchecked > len(table):  # the next check reads the table anyway
            self._finite, self._unchecked, self._n_unchecked = False, [], 0

    def freeze(self, table: torch.Tensor) -> FrozenRows:
        """``table`` as it is now, on the CPU: the rows moved since the base copy, gathered (a new base
        copy when there is none, the table changed, or more than ``rebase_share`` of its rows moved)."""
        self._follow(table)
        data = table.detach()
        if self._base is None:
            # column-major, as a version publishes its table (``published.published_array``): an
            # overlay's base is this copy itself, with no second copy to publish it
            base_t = torch.empty(data.shape[::-1], dtype=data.dtype)  # (C, rows) on the CPU: one copy
            self._base, self._base_finite = base_t.copy_(data.t()).t(), [None]
            self._moved, self._n_moved = [], 0
            return FrozenRows(self._base, base_finite=self._base_finite)
        moved = torch.unique(torch.cat(self._moved)) if self._moved else torch.zeros(0, dtype=torch.long)
        self._moved, self._n_moved = [moved], len(moved)
        values = data[moved.to(data.device)].cpu()  # (R, C) indexing copies
        return FrozenRows(self._base, moved, values, base_finite=self._base_finite)

    def finite(self, table: torch.Tensor) -> bool:
        """Whether every value of ``table`` is finite: the rows written since the last check when it
        passed and they are few, else the whole table."""
        self._follow(table)
        if not self._finite or self._n_unchecked > self.rebase_share * len(table):  # a sum beats that gather
            self._finite = all_finite([table])
            self._unchecked, self._n_unchecked = [], 0
            return self._finite
        if not self._unchecked:
            return True
        rows = torch.unique(torch.cat(self._unchecked))
        if not all_finite([table.detach()[rows.to(table.device)]]):
            return False
        self._unchecked, self._n_unchecked = [], 0
        return True

    def _follow(self, table: torch.Tensor) -> None:
        """Start over when ``table`` is another tensor (a grown table) or was written unseen."""
        if table is not self._table or table._version != self._version:
            self.invalidate()
            self._table, self._version = table, table._version
