"""Full-ranking metrics: the target is ranked against every item, not a sample.

Conventions, stated once:

* Item indices are positions in a 1-D score array; a higher score ranks higher.
* Ranks are 0-based: rank 0 is the top of the list.
* Ties are broken *pessimistically*: every other item whose score equals the
  target's counts as ranked ahead of it, so a constant scorer gets no credit.
* NaN and -inf scores rank below every finite score (NaN is treated as -inf).
* ``exclude`` removes items from the ranking (typically the items the user has
  already seen); the target itself is never removed, even if listed.

>>> scores = np.array([0.1, 0.9, 0.5, 0.5])
>>> rank_of(scores, target=2)             # 0.9 is ahead; the tie at index 3 too
2
>>> rank_of(scores, target=2, exclude=[1])
1
>>> evaluate_ranks([0, 2, 50], k=10)
RankingReport(hr=0.6666666666666666, ndcg=0.5, n=3)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import numpy as np

K = 10  # the cut-off of every reported HR@K / NDCG@K

# histories (oldest first) -> (B, 1 + n_items) scores; column 0 is padding, never an item
ScoreFn = Callable[[Sequence[Sequence]], np.ndarray]


def _clean_scores(scores: np.ndarray) -> np.ndarray:
    """A float64 copy of a 1-D score array with NaN replaced by -inf."""
    s = np.array(scores, dtype=np.float64)  # copy: the caller's array is never changed
    assert s.ndim == 1, f"scores must be 1-D (one score per item), got shape {s.shape}"
    s[np.isnan(s)] = -np.inf
    return s


def _keep_mask(n_items: int, exclude: Iterable[int]) -> np.ndarray:
    """Boolean mask of the items left in the ranking after ``exclude``."""
    keep = np.ones(n_items, dtype=bool)
    ex = np.fromiter((int(i) for i in exclude), dtype=np.int64)
    if ex.size:
        # Negative indices would silently drop the wrong item, so refuse them.
        bad = ex[(ex < 0) | (ex >= n_items)]
        if bad.size:
            raise ValueError(f"exclude holds item index {int(bad[0])}, outside [0, {n_items})")
        keep[ex] = False
    return keep


def rank_of(scores: np.ndarray, target: int, exclude: Iterable[int] = ()) -> int:
    """0-based rank of ``target`` among all non-excluded items (ties count against it)."""
    s = _clean_scores(scores)
    if not 0 <= target < s.size:
        raise ValueError(f"target {target} is outside [0, {s.size})")
    keep = _keep_mask(s.size, exclude)
    keep[target] = False  # the target is never excluded, and never ahead of itself
    return int(np.count_nonzero(s[keep] >= s[target]))


def hit_at_k(rank: int, k: int) -> float:
    """1.0 if the target made the top k (``rank < k``), else 0.0.

    >>> hit_at_k(9, 10), hit_at_k(10, 10)
    (1.0, 0.0)
    """
    return 1.0 if rank < k else 0.0


def ndcg_at_k(rank: int, k: int) -> float:
    """NDCG@k for one relevant item: ``1 / log2(rank + 2)`` inside the top k, else 0.

    >>> ndcg_at_k(0, 10), ndcg_at_k(2, 10), ndcg_at_k(10, 10)
    (1.0, 0.5, 0.0)
    """
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0


@dataclass(frozen=True)
class RankingReport:
    """Mean HR@k and NDCG@k over ``n`` ranked targets (NaN when ``n == 0``)."""

    hr: float
    ndcg: float
    n: int


def evaluate_ranks(ranks: Iterable[int], k: int = K) -> RankingReport:
    """Average HR@k and NDCG@k over the given 0-based ranks.

    With no ranks the means are NaN rather than 0, so an empty evaluation
    is never mistaken for a model that ranks everything badly.

    >>> evaluate_ranks([], k=10)
    RankingReport(hr=nan, ndcg=nan, n=0)
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ranks = [int(r) for r in ranks]
    if any(r < 0 for r in ranks):
        raise ValueError(f"ranks must be >= 0, got {min(ranks)}")
    if not ranks:
        return RankingReport(hr=math.nan, ndcg=math.nan, n=0)
    n = len(ranks)
    hr = sum(hit_at_k(r, k) for r in ranks) / n
    ndcg = sum(ndcg_at_k(r, k) for r in ranks) / n
    return RankingReport(hr=hr, ndcg=ndcg, n=n)
