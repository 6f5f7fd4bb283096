"""Learner-side expiry (trainer.user_ttl_s / item_ttl_s): bounded vocabulary, item rows,
optimizer state and sequences; expired items never scored; ids matched across renumbering."""

import numpy as np
import torch

from increc_ray.config import TrainerConfig
from increc_ray.learn.gate import Snapshot
from increc_ray.learn.learner import IncrementalLearner
from increc_ray.serve.scorer import Scorer

from test_learner import SMALL, events

DAY = 86_400_000  # ms


def _learner(ttl_days=10, **kw):
    return IncrementalLearner(SMALL, TrainerConfig(user_ttl_s=ttl_days * 86400.0, item_ttl_s=ttl_days * 86400.0,
                                                   min_new_events=1, **kw))


def _day(learner, day, users, items, n=3):
    """Each user clicks n of ``items`` on ``day``; one update."""
    rows = [(u, items[(j + k) % len(items)], day * DAY + 1000 * k + j) for j, u in enumerate(users) for k in range(n)]
    learner.observe(events(rows))
    return learner.update()


def test_users_and_items_unseen_for_their_ttl_leave_the_learner_and_scoring():
    L = _learner()
    _day(L, 0, ["old_a", "old_b"], ["x1", "x2", "x3"])
    _day(L, 1, ["keep"], ["x1", "y1", "y2"])  # keep clicks x1 again on day 1
    assert L.expire(force=True) == (0, 0)  # nothing is 10 days old yet
    _day(L, 10.5, ["new"], ["y1", "y2", "z1"])  # day 10.5: day-0-only users and items are past 10 days
    assert L.n_expired_users == 2 and L.n_expired_items == 2  # old_a, old_b; x2, x3 (x1 seen on day 1)
    assert not L.knows_user("old_a") and L.knows_user("keep") and "old_a" not in L._reservoir
    assert "x2" not in L.vocab and "x3" not in L.vocab and "x1" in L.vocab
    holes = L.vocab.holes().tolist()
    assert len(holes) == 2
    # never scored: the learner's own scores, a published scorer's answers, the gate's snapshot
    scores = L.score_histories([L.user_items("keep")])
    assert torch.isinf(scores[0, holes]).all()
    weights = L.export_weights(1)
    assert [weights["vocab"][h - 1] for h in holes] == [None, None]
    recs = [i for i, _ in Scorer.from_weights(weights).recommend(["x1", "y1"], k=100)]
    assert recs and not {"x2", "x3"} & set(recs) and None not in recs
    # the expired items are gone from every kept sequence
    assert not set(holes) & {i for u in ("keep", "new") for i in L.user_items(u)}


def test_a_churning_catalogue_reuses_rows_so_the_table_stops_growing():
    L = _learner(ttl_days=5)
    for day in range(60):  # 8 new items a day, each clicked only on its day
        _day(L, day, [f"u{day % 7}_{j}" for j in range(4)], [f"d{day}_{j}" for j in range(8)])
    assert L.n_expired_items > 300  # 480 items seen...
    assert len(L.vocab) <= 8 * 7  # ...in a table of at most ~6 days of them (a pass every half day)
    assert L.model.capacity <= 64
    assert L.vocab.n_live <= len(L.vocab)
    assert len(L._seqs) <= 4 * 7 * 2  # users from the last ttl only


def test_a_reused_row_starts_as_a_new_item_with_fresh_optimizer_moments():
    L = _learner(ttl_days=2)
    _day(L, 0, ["a", "b"], ["x1", "x2", "x3"])
    _day(L, 1, ["a", "b"], ["y1", "y2", "y3"])
    _day(L, 3, ["c"], ["y1", "y2"])  # x1..x3 expire
    hole = int(L.vocab.holes()[0])
    old_row = L.model.item_emb.weight[hole].detach().clone()
    L.observe(events([("c", "fresh", 3 * DAY + 5000)]))
    assert int(L.vocab.lookup(["fresh"])[0]) == hole  # the lowest hole
    emb = L.model.item_emb.weight
    moments = L.optimizer.state[emb]
    assert float(moments["exp_avg"][hole].abs().sum()) == 0 and float(moments["exp_avg_sq"][hole].abs().sum()) == 0
    assert not torch.allclose(emb[hole].detach(), old_row)
    assert L.item_counts[hole] == 1


def test_expiry_state_survives_a_checkpoint():
    L = _learner(ttl_days=2)
    _day(L, 0, ["a"], ["x1", "x2"])
    _day(L, 3, ["b"], ["y1", "y2"])
    assert L.n_expired_items == 2
    R = IncrementalLearner.from_state_dict(L.state_dict())
    assert R.vocab.to_list() == L.vocab.to_list() and R.vocab.holes().tolist() == L.vocab.holes().tolist()
    assert (R.n_expired_users, R.n_expired_items) == (L.n_expired_users, L.n_expired_items)
    assert R._user_seen == L._user_seen and np.array_equal(R._item_seen, L._item_seen)
    for learner in (L, R):  # both reuse the same hole for the same next item
        learner.observe(events([("b", "z", 3 * DAY + 9000)]))
    assert R.vocab.lookup(["z"]).tolist() == L.vocab.lookup(["z"]).tolist() == [1]  # x1's old index
    torch.testing.assert_close(R.model.item_emb.weight, L.model.item_emb.weight)


def test_a_snapshot_from_before_a_reuse_scores_the_new_item_as_unknown():
    L = _learner(ttl_days=2)
    _day(L, 0, ["a", "b"], ["x1", "x2", "x3"])
    _day(L, 1, ["a", "b"], ["y1", "y2", "y3"])
    before = Snapshot.of(L)
    x1 = int(L.vocab.lookup(["x1"])[0])
    _day(L, 3, ["c"], ["y1", "y2"])  # x1..x3 expire
    L.observe(events([("c", "fresh", 3 * DAY + 5000)]))
    assert int(L.vocab.lookup(["fresh"])[0]) == x1  # "fresh" now holds x1's old index
    history = [L.user_items("c")[:-1]]
    target = np.array([x1])
    # by id, the old snapshot does not know "fresh": a miss (rank n_items + 1); read as its own
    # numbering it would rank x1, an item the learner has forgotten
    assert before.ranks(history, target, L.vocab)[0] == before.n_items + 1
    assert before.ranks(history, target)[0] <= before.n_items
    # a snapshot taken now agrees with the learner's numbering and knows "fresh"
    now = Snapshot.of(L)
    assert now.index_map(L.vocab) is None and now.ranks(history, target, L.vocab)[0] <= now.n_items
