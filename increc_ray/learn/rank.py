"""Ranks of target items among every item of a table, scored a chunk of items at a time.

The gate (``gate.Snapshot.ranks``) and the online metric (``learner.evaluate_next``) rank each
scored event's target among every known item. Scoring every item at once makes a (B, n_items)
score matrix, a copy without NaN and a (B, n_items) mask: at 1M items and 200 events, gigabytes
per slice. Here the items are scored ``CHUNK_CELLS`` scores at a time and each event only counts
the items ahead of its target; with ``cap`` an event stops once ``cap`` items are ahead (NDCG@k and
HR@k read nothing past rank k), so most events of a large catalogue are settled by the first
chunks and only targets near the top are scored against every item.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from increc_ray.learn.frozen import FrozenRows

CHUNK_CELLS = 1 << 21  # scores held at once, (events, items): 8 MiB of float32
INF = float("inf")


@torch.no_grad()
def table_ranks(hidden: torch.Tensor, items: FrozenRows, n_cols: int, targets: np.ndarray,
                exclude: Sequence[Sequence[int]] | None = None, holes: np.ndarray | None = None,
                cap: int | None = None, strict: bool = False) -> np.ndarray:
    """0-based rank of each event's target among columns 1..``n_cols``-1 (column 0 is padding),
    scored ``hidden`` (B, C) @ ``items`` rows: how many columns score at least as high as the
    target (``strict``: higher), not counting the target itself nor the event's ``exclude``d
    columns; ``holes`` and NaN scores are -inf. A target >= ``n_cols`` ranks ``n_cols`` (a miss).
    With ``cap``, ranks from ``cap`` up are reported as ``cap``.

    The dense definition is ``gate._ranks`` on ``hidden @ items.T`` (what ``tests/learn/test_rank.py``
    checks this against)."""
    B = len(targets)
    targets = np.asarray(targets)
    known = targets < n_cols
    count = np.zeros(B, dtype=np.int64)
    if not known.any():
        return np.full(B, n_cols)
    dev = items.base.device
    hidden = hidden.to(dev)
    t = torch.as_tensor(np.where(known, targets, 0), device=dev)
    s_t = (hidden @ items.gather(t).T).diagonal().clone()  # (B,) as the chunks' matmul scores them
    s_t.nan_to_num_(nan=-INF, posinf=INF, neginf=-INF)
    holes = np.asarray(holes if holes is not None else [], dtype=np.int64)
    s_t[torch.as_tensor((targets == 0) | np.isin(targets, holes), device=dev)] = -INF  # as their columns score
    # (event, column) pairs not counted: padding, the target, the excluded columns; by column
    ev, col = [np.arange(B), np.arange(B)[known]], [np.zeros(B, dtype=np.int64), targets[known]]
    for b, cols in enumerate(exclude or []):
        cols = np.asarray([c for c in cols if 0 < c < n_cols], dtype=np.int64)
        ev.append(np.full(len(cols), b))
        col.append(cols)
    ev, col = np.concatenate(ev), np.concatenate(col)
    pairs = np.unique(col * B + ev)  # sorted by column, each pair once
    ev, col = pairs % B, pairs // B
    active = known.copy()
    width = max(1, CHUNK_CELLS // max(1, B))
    for lo in range(0, n_cols, width):
        act = np.flatnonzero(active)
        if not len(act):
            break
        hi = min(n_cols, lo + width)
        rows, moved, values = items.chunk(lo, hi)
        h = hidden[torch.as_tensor(act, device=dev)]
        s = h @ rows.T  # (A, hi - lo)
        if len(moved):
            s[:, moved.to(dev)] = h @ values.T
        s.nan_to_num_(nan=-INF, posinf=INF, neginf=-INF)  # NaN ranks last; infinities stay
        in_chunk = holes[(holes >= lo) & (holes < hi)] - lo
        if len(in_chunk):
            s[:, torch.as_tensor(in_chunk, device=dev)] = -INF
        ahead = s > s_t[act, None] if strict else s >= s_t[act, None]  # (A, hi - lo)
        a, b = np.searchsorted(col, [lo, hi])
        if b > a:  # the pairs in this chunk, of active events
            pos = np.full(B, -1)
            pos[act] = np.arange(len(act))
            at = pos[ev[a:b]]
            keep = at >= 0
            ahead[torch.as_tensor(at[keep], device=dev), torch.as_tensor(col[a:b][keep] - lo, device=dev)] = False
        count[act] += ahead.view(torch.uint8).sum(1, dtype=torch.int32).cpu().numpy()  # a bool sum is 4x slower
        if cap is not None:
            active[act[count[act] >= cap]] = False
    if cap is not None:
        count = np.minimum(count, cap)
    return np.where(known, count, n_cols)


def count_ranks(counts: np.ndarray, histories: Sequence[Sequence[int]], targets: np.ndarray) -> np.ndarray:
    """``table_ranks`` when every event scores the items alike (popularity: ``counts[i]`` for
    column i, -inf for no item), each event excluding its history: one sort of the events'
    target scores and one search per item, not a (B, n_items) matrix."""
    B, n_cols = len(targets), len(counts)
    targets = np.asarray(targets)
    known = targets < n_cols
    out = np.full(B, n_cols)
    if not known.any():
        return out
    s = np.where(np.isnan(counts), -np.inf, counts.astype(np.float64))
    kb = np.flatnonzero(known)
    s_t = s[targets[kb]]
    order = np.argsort(s_t, kind="stable")
    # item i is ahead of every target whose score is at most s[i]: the first pos[i] in score order
    pos = np.searchsorted(s_t[order], s[1:], side="right")
    ahead = np.empty(len(kb), dtype=np.int64)
    ahead[order] = (n_cols - 1) - np.cumsum(np.bincount(pos, minlength=len(kb) + 1))[:-1]
    for j, b in enumerate(kb):  # not the target itself (counted: its score is its own), nor the history
        t = targets[b]
        seen = {int(i) for i in histories[b] if 0 < i < n_cols and i != t}
        ahead[j] -= (t > 0) + sum(s[i] >= s_t[j] for i in seen)
    out[kb] = ahead
    return out
