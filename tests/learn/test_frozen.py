"""learn.frozen: a snapshot of a learner costs the item rows that moved since a shared base copy,
and equals a full copy taken at the same moment, whatever the learner did since (sampled steps,
new items, a grown table, a write the log was not told of, full-softmax steps); the finiteness
check reads the rows written since the last check and still finds a NaN."""

import numpy as np
import torch

from increc_ray.config import TrainerConfig
from increc_ray.learn.frozen import RowLog
from increc_ray.learn.gate import Snapshot
from increc_ray.learn.learner import IncrementalLearner

from test_learner import SMALL, events

SAMPLED = TrainerConfig(loss="sampled", negatives=8)


def _rows(n: int = 1600, n_users: int = 40, n_items: int = 1000, seed: int = 0):
    g = np.random.default_rng(seed)
    return [(f"u{g.integers(n_users)}", f"i{min(g.integers(n_items), 200 + t // 2)}", t) for t in range(n)]


def _updates(L, rows, n_chunks):
    for idx in np.array_split(np.arange(len(rows)), n_chunks):
        L.observe(events([rows[i] for i in idx]))
        L.update()
        yield


def _full_copy(L) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in L.model.state_dict().items()}


def _same(snap: Snapshot, copy: dict[str, torch.Tensor]) -> bool:
    state = snap.state()
    return state.keys() == copy.keys() and all(torch.equal(state[k], copy[k]) for k in copy)


def test_snapshots_of_a_sampled_learner_equal_full_copies_taken_with_them():
    L = IncrementalLearner(SMALL, SAMPLED)
    L._row_log = RowLog(rebase_share=1.0)  # this small a table: an update moves a large share of it
    taken = []
    for _ in _updates(L, _rows(), 16):  # new items every update: the table grows, new rows are written
        taken.append((Snapshot.of(L), _full_copy(L), L.model.capacity))
    moved = [len(s._items.rows) for s, _, _ in taken]  # before state() makes any table whole
    bases = {id(s._items.base) for s, _, _ in taken}
    assert all(_same(s, copy) for s, copy, _ in taken), "a later update moved an earlier snapshot"
    assert sum(m > 0 for m in moved) >= 4 and len(bases) < len(taken) - 4, \
        f"snapshots copied the table instead of sharing a base: moved rows {moved}, {len(bases)} bases"
    assert len({cap for _, _, cap in taken}) > 1, "the table never grew: the test misses that case"


def test_a_write_the_log_was_not_told_of_makes_the_next_snapshot_a_full_copy():
    L = IncrementalLearner(SMALL, SAMPLED)
    steps = _updates(L, _rows(), 12)
    for _ in range(8):
        next(steps)
    Snapshot.of(L)  # a base to be stale against
    next(steps)
    with torch.no_grad():
        L.model.item_emb.weight[[3, 4]] += 1.0  # not through the learner's own writes
    snap, copy = Snapshot.of(L), _full_copy(L)
    next(steps)
    assert _same(snap, copy)


def test_snapshots_of_a_full_softmax_learner_equal_full_copies():
    L = IncrementalLearner(SMALL, TrainerConfig(loss="full"))
    taken = []
    for _ in _updates(L, _rows(800), 8):  # every row moves each step, in a kernel the version count misses
        taken.append((Snapshot.of(L), _full_copy(L)))
    assert all(_same(s, copy) for s, copy in taken)


def test_a_nan_in_a_written_row_is_found_by_the_incremental_check_and_in_the_snapshot():
    L = IncrementalLearner(SMALL, SAMPLED)
    for _ in _updates(L, _rows(800), 8):
        assert L.finite()
    clean = Snapshot.of(L)
    table = L.model.item_emb.weight
    with L._row_log.writing(table, torch.tensor([5])), torch.no_grad():  # as a diverged step writes it
        table[5] = float("nan")
    assert not L.finite()
    assert clean.finite() and not Snapshot.of(L).finite()
    with L._row_log.writing(table, torch.tensor([5])), torch.no_grad():
        table[5] = 0.0
    assert L.finite()
    with torch.no_grad():
        table[9, 0] = float("inf")  # unseen by the log: the check reads the whole table
    assert not L.finite()
