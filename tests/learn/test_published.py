"""learn.published: a sampled learner publishes its item table as an overlay (a base shared across
versions plus the rows moved since), which every reader (a replica's scorer, the gate's snapshot,
the archive through ``dense``) reads as the whole table taken at the same moment; the full softmax
publishes whole."""

import numpy as np
import pytest
import torch

from increc_ray.config import TrainerConfig
from increc_ray.learn import published
from increc_ray.learn.frozen import RowLog
from increc_ray.learn.gate import Snapshot
from increc_ray.learn.learner import IncrementalLearner
from increc_ray.serve.scorer import Scorer

from test_frozen import SAMPLED, _rows, _updates
from test_learner import SMALL


def _whole_table(L) -> np.ndarray:
    return L.model.item_emb.weight.detach().numpy().copy()


def _versions(L, n_chunks: int = 16):
    """(overlay artifact, the learner's table copied at the same moment) after each update."""
    out = []
    for v, _ in enumerate(_updates(L, _rows(), n_chunks), start=1):
        out.append((L.export_weights(v), _whole_table(L)))
    return out


def test_a_sampled_learner_publishes_overlays_that_read_as_the_whole_table_and_share_bases():
    L = IncrementalLearner(SMALL, SAMPLED)
    L._row_log = RowLog(rebase_share=1.0)  # this small a table: an update moves a large share of it
    versions = _versions(L)
    assert all(published.is_overlay(w) and published.ITEM_KEY not in w["state_dict"] for w, _ in versions)
    for w, table in versions:
        whole = published.dense(w)["state_dict"][published.ITEM_KEY]
        assert np.array_equal(whole, table), f"version {w['version']}: the overlay is not the table"
        assert whole.flags.f_contiguous, "a whole table is published column-major, as ever"
    items = [w[published.ITEM_ROWS] for w, _ in versions]
    bases = {i["base_id"] for i in items}
    assert len(bases) < len(items) - 4, f"every version shipped a base of its own: {len(bases)} bases"
    shared = [i for i in items if i["base_id"] == items[-1]["base_id"]]
    assert all(i["base"] is shared[0]["base"] for i in shared), "a base was copied again for a later version"
    assert any(0 < len(i["rows"]) < len(i["base"]) for i in items), "no version was base plus a few moved rows"


def test_the_full_softmax_and_a_moving_average_publish_whole():
    for cfg in (TrainerConfig(), TrainerConfig(loss="sampled", negatives=8, ema_decay=0.9)):
        L = IncrementalLearner(SMALL, cfg)
        w, table = _versions(L, 4)[-1]
        assert not published.is_overlay(w) and published.ITEM_KEY in w["state_dict"]
        assert published.dense(w) is w


def test_a_replica_scores_an_overlay_as_it_scores_the_whole_table():
    L = IncrementalLearner(SMALL, SAMPLED)
    L._row_log = RowLog(rebase_share=1.0)
    w = [w for w, _ in _versions(L) if len(w[published.ITEM_ROWS]["rows"])][-1]
    vocab = [i for i in w["vocab"] if i is not None]
    g = np.random.default_rng(1)
    histories = [list(g.choice(vocab, size=int(g.integers(1, 12)), replace=False)) for _ in range(24)]
    excludes = [h[:2] for h in histories]
    overlay, whole = Scorer.from_weights(w), Scorer.from_weights(published.dense(w))
    assert overlay.items is not None and whole.items is None
    got, want = overlay.recommend_batch(histories, 10, excludes), whole.recommend_batch(histories, 10, excludes)
    for a, b in zip(got, want):
        assert [i for i, _ in a] == [i for i, _ in b]
        assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-5)
    # the next version, given the one it replaces, still reads as its own whole table
    assert [i for i, _ in Scorer.from_weights(w, previous=overlay).recommend(histories[0], 5)] == \
        [i for i, _ in whole.recommend(histories[0], 5)]


def test_the_gate_ranks_an_overlay_as_the_whole_table():
    L = IncrementalLearner(SMALL, SAMPLED)
    L._row_log = RowLog(rebase_share=1.0)
    w = [w for w, _ in _versions(L) if len(w[published.ITEM_ROWS]["rows"])][-1]
    n = len(w["vocab"])
    g = np.random.default_rng(2)
    histories = [list(g.integers(1, n + 1, size=int(g.integers(1, 10)))) for _ in range(32)]
    targets = g.integers(1, n + 1, size=32)
    a = Snapshot.from_weights(w).ranks(histories, targets)
    b = Snapshot.from_weights(published.dense(w)).ranks(histories, targets)
    assert np.array_equal(a, b)


def test_an_overlay_exported_from_a_snapshot_is_the_snapshots_table():
    """The gate's promoted or rolled-back-to version is exported from its snapshot, later."""
    L = IncrementalLearner(SMALL, SAMPLED)
    L._row_log = RowLog(rebase_share=1.0)
    steps = _updates(L, _rows(), 12)
    for _ in range(6):
        next(steps)
    snap, table = Snapshot.of(L, 3), _whole_table(L)
    for _ in steps:  # the learner moves on
        pass
    w = L.export_weights(3, snapshot=snap)
    assert published.is_overlay(w)
    assert np.array_equal(published.dense(w)["state_dict"][published.ITEM_KEY], table)


@pytest.mark.parametrize("rows", [0, 3])
def test_dense_copies_no_more_than_it_must(rows):
    base = np.asfortranarray(np.arange(40, dtype=np.float32).reshape(10, 4))
    w = {"version": 1, "state_dict": {}, published.ITEM_ROWS: {
        "base_id": "b", "base": base, "rows": np.arange(rows, dtype=np.int64),
        "values": np.asfortranarray(-np.ones((rows, 4), dtype=np.float32))}}
    whole = published.dense(w)["state_dict"][published.ITEM_KEY]
    assert np.array_equal(whole[rows:], base[rows:]) and (whole[:rows] == -1).all()
    assert np.array_equal(base, np.arange(40, dtype=np.float32).reshape(10, 4)), "dense wrote into the base"
    assert np.shares_memory(whole, base) == (rows == 0)
    assert torch.equal(published.item_table(published.dense(w)).base, torch.as_tensor(whole))
