"""learn.rank: the chunked ranks equal their dense definition (``gate._ranks`` on the whole score
matrix), with holes, NaN scores, excluded histories, unknown targets and moved rows; a cap stops
at the cap; popularity's ranks without a matrix; the online metric as its top-k definition."""

import numpy as np
import pytest
import torch

from increc_ray.config import TrainerConfig
from increc_ray.learn import rank
from increc_ray.learn.frozen import FrozenRows
from increc_ray.learn.gate import _ranks
from increc_ray.learn.learner import IncrementalLearner, positives
from increc_ray.learn.rank import count_ranks, table_ranks

from test_learner import SMALL, events, feed


def _case(seed: int, n_cols: int = 300, B: int = 40, C: int = 8):
    g = np.random.default_rng(seed)
    # small whole numbers: every score is exact, in any order a matmul kernel sums it (random
    # floats made ranks differ by one at a tie on some CPUs, the chunks' kernels rounding otherwise)
    table = torch.randint(-8, 9, (n_cols, C), generator=torch.Generator().manual_seed(seed)).float()
    table[7] = float("nan")  # a diverged row: NaN scores rank last
    table[11] = table[12]  # an exact tie
    hidden = torch.randint(-8, 9, (B, C), generator=torch.Generator().manual_seed(seed + 1)).float()
    holes = np.array([5, 50, 299])
    targets = g.integers(1, n_cols, B)
    targets[:4] = [7, 11, 5, 10**9]  # NaN row, a tie, a hole, an unknown item
    histories = [g.integers(0, n_cols, g.integers(0, 6)).tolist() + [12] for _ in range(B)]
    return table, hidden, holes, targets, histories


def _dense(table, hidden, holes, targets, histories):
    scores = (hidden @ table.T).numpy()
    scores[:, 0] = -np.inf
    scores[:, holes] = -np.inf
    return _ranks(scores, targets, histories)


@pytest.mark.parametrize("cells", [1 << 21, 300, 37])  # one chunk, a few, many
def test_table_ranks_equal_the_dense_definition(monkeypatch, cells):
    monkeypatch.setattr(rank, "CHUNK_CELLS", cells)
    for seed in range(5):
        table, hidden, holes, targets, histories = _case(seed)
        want = _dense(table, hidden, holes, targets, histories)
        got = table_ranks(hidden, FrozenRows(table), len(table), targets, histories, holes)
        assert got.tolist() == want.tolist()
        capped = table_ranks(hidden, FrozenRows(table), len(table), targets, histories, holes, cap=50)
        assert capped.tolist() == np.where(want >= len(table), want, np.minimum(want, 50)).tolist()
        assert (want[4:] > 50).any() and (want[4:] < 50).any()  # the cap cut some ranks and left others


def test_table_ranks_read_moved_rows_over_the_base(monkeypatch):
    monkeypatch.setattr(rank, "CHUNK_CELLS", 300)
    table, hidden, holes, targets, histories = _case(3)
    base = table.clone()
    moved = torch.tensor([1, 2, 11, 12, 40, 41, 200, 298])
    base[moved] = table[moved] + 1.0  # stale in the base: only the moved values are right
    frozen = FrozenRows(base, moved, table[moved].clone())
    assert torch.equal(frozen.dense().nan_to_num(), table.nan_to_num())
    targets[4:8] = [2, 40, 200, 298]
    want = _dense(frozen.dense(), hidden, holes, targets, histories)
    assert table_ranks(hidden, frozen, len(table), targets, histories, holes).tolist() == want.tolist()
    assert table_ranks(hidden, FrozenRows(base), len(table), targets, histories, holes).tolist() != want.tolist()


def test_count_ranks_equal_the_dense_definition():
    g = np.random.default_rng(0)
    counts = g.integers(0, 6, 500).astype(np.float64)  # many ties
    counts[[3, 99]] = -np.inf  # holes
    counts[0] = 0
    targets = g.integers(1, 500, 64)
    targets[:2] = [3, 10**9]
    histories = [g.integers(0, 500, g.integers(0, 8)).tolist() for _ in range(64)]
    dense = np.tile(counts, (64, 1))
    dense[:, 0] = -np.inf
    assert count_ranks(counts, histories, targets).tolist() == _ranks(dense, targets, histories).tolist()


def test_the_online_metric_is_the_top_k_of_every_item():
    L = IncrementalLearner(SMALL, TrainerConfig())
    g = np.random.default_rng(0)
    rows = [(f"u{g.integers(40)}", f"i{g.integers(60)}", t) for t in range(1500)]
    feed(L, rows[:1200], 6)
    for start in range(1200, 1500, 60):
        ev = events(rows[start:start + 60])
        for k in (1, 5, 10):
            assert L.evaluate_next(ev, k) == _top_k_hr(L, ev, k)
    assert 0 < L.evaluate_next(events(rows[1200:1500]), 10) < 1


def _top_k_hr(L, ev, k):
    """The online metric as it was defined before ``learn.rank``: the target among the top k of the
    whole score matrix."""
    users, items, _, _ = positives(ev)
    first = {}
    for u, i in zip(users, items):
        if u not in first and L.knows_user(u):
            first[u] = i
    scores = L.score_histories([L.user_items(u) for u in first])
    targets = torch.as_tensor(L.vocab.lookup(first.values()))
    top = scores.topk(min(k, L.n_items), dim=1).indices
    return float(((top == targets[:, None]).any(1) & (targets > 0)).float().mean())
