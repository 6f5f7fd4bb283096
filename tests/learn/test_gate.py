"""Tests for increc_ray.learn.gate: the champion/challenger gate on clean and poisoned streams,
through ``GateKeeper``, the exact path the train worker runs (Ray-free)."""

import copy
import math

import numpy as np
import pytest
import torch

from increc_ray.config import GateConfig, TrainerConfig
from increc_ray.learn.gate import Gate, GateKeeper, Snapshot, _ranks, fresh_targets, ndcg
from increc_ray.learn.learner import IncrementalLearner

from test_learner import N_ITEMS, SMALL, events, planted_rows

TRAINER = TrainerConfig(lr=5e-3, batch_size=32, replay_ratio=0.25, lr_schedule="constant")


class Loop:
    """The train worker's gate path: test a slice, observe it, update, then after_update."""

    def __init__(self, gate_cfg: GateConfig, trainer: TrainerConfig = TRAINER) -> None:
        self.learner = IncrementalLearner(SMALL, trainer)
        self.gate = Gate(gate_cfg)
        self.published: list[dict] = []
        self._n = 0
        self.keeper = GateKeeper(self.learner, self.gate, self._next, self.published.append)
        self.decisions = []

    def _next(self) -> int:
        self._n += 1
        return self._n

    def feed(self, rows, n_chunks):
        for idx in np.array_split(np.arange(len(rows)), n_chunks):
            ev = events([rows[i] for i in idx])
            for d in (self.keeper.test(ev),):
                if d is not None:
                    self.decisions.append(d)
            self.learner.observe(ev)
            if self.learner.update() is not None:
                d = self.keeper.after_update()
                if d is not None:
                    self.decisions.append(d)


def test_ranks_exclude_history_count_ties_and_miss_unknown_targets():
    scores = np.array([[-np.inf, 0.5, 0.9, 0.5, np.nan],
                       [-np.inf, 0.1, 0.2, 0.3, 0.4]])
    ranks = _ranks(scores, np.array([1, 9]), [[2], [1]])
    assert ranks.tolist() == [1, 5]  # row 0: 0.9 excluded, the 0.5 tie counts; row 1: unknown -> n_cols
    assert ndcg(np.array([0, 1, 10]), 10).tolist() == pytest.approx([1.0, 1 / math.log2(3), 0.0])


def test_first_candidate_goes_live_only_after_beating_popularity_on_fresh_events():
    loop = Loop(GateConfig(min_events=150))
    loop.feed(planted_rows(n_users=150, length=12, seed=0), 12)
    assert loop.decisions, "the gate never judged a candidate"
    first = loop.decisions[0]
    assert first.live_ndcg is None and first.n_events >= 150
    promoted = [d for d in loop.decisions if d.promoted]
    assert promoted, [d.to_json() for d in loop.decisions]
    assert all(d.candidate_ndcg >= d.popularity_ndcg for d in promoted)
    assert [w["version"] for w in loop.published] == list(range(1, len(loop.published) + 1))
    assert loop.gate.live.version == loop.published[-1]["version"]


@pytest.fixture(scope="module")
def trained() -> Loop:
    """A loop whose gate has promoted a version on the clean planted stream (copied per test)."""
    loop = Loop(GateConfig(min_events=150))
    loop.feed(planted_rows(n_users=200, length=12, seed=0), 12)
    assert loop.gate.live is not None, "no version went live on the clean stream"
    return loop


def _shuffled(rows, seed=3):
    rng = np.random.default_rng(seed)
    return [(u, f"i{rng.integers(N_ITEMS)}", t) for u, _, t in rows]


def _burst(t0):
    # many new users, each taking the pushed item after every other item
    return [(f"bot{j}", "i0" if k % 2 else f"i{(j + k) % N_ITEMS}", t0 + 4 * j + k) for j in range(3000) for k in range(4)]


def _later(rows, dt):
    return [(u, i, t + dt) for u, i, t in rows]


@pytest.mark.parametrize("poison", ["shuffled labels", "burst on one item"])
def test_a_poisoned_candidate_is_not_promoted_and_the_clean_stream_brings_it_back(trained, poison):
    """The candidate learned a poisoned stream (items replaced at random, or many new users
    pushing one item); scored on genuine fresh events it loses to the live version."""
    loop = copy.deepcopy(trained)
    good = Snapshot.of(loop.learner, version=loop.gate.live.version)
    rows = (_shuffled(_later(planted_rows(n_users=200, length=24, seed=5), 10**6)) if poison == "shuffled labels"
            else _burst(10**6))
    for idx in np.array_split(np.arange(len(rows)), 12):
        loop.learner.observe(events([rows[i] for i in idx]))
        loop.learner.update()
    gate = Gate(GateConfig(min_events=150))
    gate.live = good
    assert gate.propose(Snapshot.of(loop.learner)) is None
    clean = _later(planted_rows(n_users=200, length=4, seed=8), 3 * 10**6)
    for idx in np.array_split(np.arange(len(clean)), 4):  # test, then observe: the train loop's order
        fresh = events([clean[i] for i in idx])
        gate.test(*fresh_targets(loop.learner, fresh, 500), loop.learner.item_counts)
        loop.learner.observe(fresh)
    decision = gate.decide()
    assert not decision.promoted and "worse" in decision.reason, decision.to_json()
    assert decision.candidate_ndcg < decision.live_ndcg and decision.se_vs_live > 0
    # serving keeps the good version; once the stream is clean again, learning earns a new one
    loop.gate, n_published = gate, len(loop.published)
    loop.keeper = GateKeeper(loop.learner, gate, loop._next, loop.published.append)
    loop.feed(_later(planted_rows(n_users=200, length=12, seed=7), 4 * 10**6), 12)
    assert len(loop.published) > n_published and gate.live.version > good.version, "never recovered"


def test_nan_weights_are_rejected_rolled_back_and_learning_goes_on(trained):
    loop = copy.deepcopy(trained)
    live = loop.gate.live
    with torch.no_grad():
        loop.learner.model.transformer.h[0].mlp.c_fc.weight.fill_(float("nan"))
    decision = loop.keeper.after_update()
    assert decision is not None and not decision.promoted and decision.reason == "non-finite weights"
    assert loop.learner.finite()
    n = live.n_items
    assert torch.equal(loop.learner.model.item_emb.weight[: n + 1], live.state()["item_emb.weight"][: n + 1])
    n_promoted = loop.gate.n_promoted
    loop.feed(_later(planted_rows(n_users=200, length=6, seed=9), 5 * 10**6), 6)
    assert loop.learner.finite() and loop.gate.n_promoted > n_promoted


def test_fresh_targets_are_every_positive_with_a_history_test_then_train_and_unknown_items_miss():
    L = IncrementalLearner(SMALL, TRAINER)
    L.observe(events([("a", "i1", 1), ("a", "i2", 2), ("b", "i3", 3)]))
    fresh = events([("a", "i3", 4), ("a", "i1", 5), ("c", "i1", 6), ("c", "i2", 7), ("b", "new", 8), ("b", "i1", 9)])
    hist, targets = fresh_targets(L, fresh, 10)
    a, b = L.user_items("a"), L.user_items("b")
    i1, i2, i3 = L.vocab.lookup(["i1", "i2", "i3"])
    # a's second event sees the first; c's first has no history; an unknown item is skipped in b's
    assert hist == [a, a + [i3], [i1], b, b]
    assert list(targets[[0, 1, 2, 4]]) == [i3, i1, i2, i1] and targets[3] > 10**9
    capped, _ = fresh_targets(L, fresh, 2)
    assert capped == [hist[0], hist[4]], "a cap keeps an even spread"


def test_snapshot_of_published_weights_scores_like_the_learner():
    L = IncrementalLearner(SMALL, TRAINER)
    L.observe(events(planted_rows(n_users=20, length=5)))
    L.update()
    snap = Snapshot.from_weights(L.export_weights(3))
    assert snap.version == 3 and snap.n_items == L.n_items
    hist = [L.user_items("u0")]
    expect = _ranks(L.score_histories(hist).numpy(), np.array([1]), hist)
    assert snap.ranks(hist, np.array([1])).tolist() == expect.tolist()


def test_items_newer_than_a_snapshot_are_skipped_in_histories_and_missed_as_targets():
    L = IncrementalLearner(SMALL, TRAINER)
    L.observe(events(planted_rows(n_users=20, length=5)))
    L.update()
    snap = Snapshot.of(L)
    L.observe(events([("u0", "brand-new", 10**7), ("newbie", "brand-new", 10**7)]))  # after the snapshot
    new = L.vocab.lookup(["brand-new"])[0]
    assert new > snap.n_items
    ranks = snap.ranks([L.user_items("u0"), [new]], np.array([1, new]))
    assert ranks[1] == snap.n_items + 1  # nothing it knows in the history: a miss
    assert ranks[0] <= snap.n_items  # the new item is skipped, the rest is scored
    gate = Gate(GateConfig(min_events=1))
    gate.propose(snap)
    gate.test([L.user_items("u0")], np.array([new]), L.item_counts)  # the new item as target: a miss
    assert gate.n_scored == 1


def test_a_live_version_that_loses_to_popularity_is_demoted_to_the_fallback():
    """The world moved to one hot item: the live version (never trained) and the candidate both
    lose to popularity on fresh events, so the live version goes and serving answers from
    popularity (a fallback marker) until a candidate beats it."""
    learner = IncrementalLearner(SMALL, TRAINER)
    users = [(f"v{j}", f"i{3 + j % 47}", j) for j in range(300)]
    learner.observe(events(users + [(f"c{j}", "i0", 1000 + j) for j in range(300)]))  # i0 is the hit
    published, n = [], iter(range(2, 100))
    gate = Gate(GateConfig(min_events=100))
    gate.live = Snapshot.of(learner, version=1)
    keeper = GateKeeper(learner, gate, lambda: next(n), published.append)
    assert gate.propose(Snapshot.of(learner)) is None
    decision = keeper.test(events([(f"v{j}", "i0", 2000 + j) for j in range(300)]))
    assert decision is not None and not decision.promoted and decision.live_worse_than_popularity
    assert decision.live_ndcg < decision.popularity_ndcg
    assert gate.live is None and gate.retired.version == 1
    assert published == [{**published[0], "version": 2, "fallback": True}] and published[0]["metrics"]["demoted"] == 1
    st = gate.status()
    assert st["live_version"] == 0 and st["demoted"] == 1 and st["demoted_versions"][0]["version"] == 1
    # NaN weights now roll back to the demoted version's weights, not to a fresh model
    state, vocab = gate.live_state()
    assert vocab == gate.retired.vocab and torch.equal(state["item_emb.weight"], gate.retired.state()["item_emb.weight"])
    # the next candidate must beat popularity outright, as before any version went live
    learner.observe(events([(f"d{j}", "i1", 3000 + j) for j in range(600)]))  # now i1 is the hit
    assert gate.propose(Snapshot.of(learner)) is None
    assert keeper.test(events([(f"v{j}", "i1", 4000 + j) for j in range(300)])).reason == "has not beaten popularity yet"


def test_serving_swaps_a_fallback_marker_for_no_scorer():
    from increc_ray.learn.gate import fallback_marker
    from increc_ray.serve.scorer import Scorer

    learner = IncrementalLearner(SMALL, TRAINER)
    learner.observe(events(planted_rows(n_users=20, length=4)))
    assert Scorer.from_published(learner.export_weights(3)).version == 3
    assert Scorer.from_published(fallback_marker(4, {"demoted": 3})) is None


def test_a_cold_full_pass_candidate_is_judged_at_once_on_its_held_out_events():
    """A burst then silence: the full pass's held-out events are the candidate's fresh events."""
    rows = planted_rows(n_users=200, length=12, seed=0)
    cut = int(len(rows) * 0.9)
    loop = Loop(GateConfig(min_events=150))
    loop.learner.observe(events(rows[:cut]))
    for _ in range(30):
        loop.learner.update()
    assert loop.gate.propose(Snapshot.of(loop.learner)) is None
    decision = loop.keeper.judge_on_holdout(events(rows[cut:]))
    assert decision is not None and decision.promoted, decision and decision.to_json()
    assert decision.n_events >= 150 and decision.live_ndcg is None
    assert [w["version"] for w in loop.published] == [1] and loop.gate.live.version == 1
    # with a live version the held-out events are not fresh to it: the next candidate waits
    loop.gate.propose(Snapshot.of(loop.learner))
    assert loop.keeper.judge_on_holdout(events(rows[cut:])) is None and loop.gate.n_scored == 0


def test_a_cold_candidate_that_loses_to_popularity_on_held_out_events_stays_out():
    rows = planted_rows(n_users=200, length=12, seed=0)
    loop = Loop(GateConfig(min_events=150))
    loop.learner.observe(events(rows[: int(len(rows) * 0.9)]))  # untrained weights
    loop.gate.propose(Snapshot.of(loop.learner))
    decision = loop.keeper.judge_on_holdout(events(rows[int(len(rows) * 0.9):]))
    assert decision is not None and not decision.promoted and loop.published == []


def test_optimistic_mode_publishes_every_update_once_a_candidate_has_passed():
    loop = Loop(GateConfig(min_events=150, mode="optimistic"))
    loop.feed(planted_rows(n_users=200, length=12, seed=0), 12)
    first = next(i for i, w in enumerate(loop.published) if "gate" in w["metrics"])
    assert not any(w["metrics"].get("optimistic") for w in loop.published[:first]), "live before any judgment"
    after = loop.published[first + 1:]
    assert after and all(w["metrics"].get("optimistic") for w in after), [w["metrics"] for w in after]
    assert [w["metrics"]["events_seen"] for w in after] == sorted(w["metrics"]["events_seen"] for w in after)
    assert loop.keeper.trusted
    # the champion is a version serving had: judged after it went live, not republished
    assert loop.gate.live.version in [w["version"] for w in loop.published]
    versions = [w["version"] for w in loop.published]
    assert versions == sorted(set(versions))


def test_optimistic_mode_rolls_serving_back_when_a_live_update_fails_its_judgment(trained):
    loop = copy.deepcopy(trained)
    loop.gate.cfg = GateConfig(min_events=150, mode="optimistic")
    loop.keeper = keeper = GateKeeper(loop.learner, loop.gate, loop._next, loop.published.append)
    keeper.trusted, loop.gate.candidate = True, None  # the last judgment passed; nothing under test
    champion, n_published = loop.gate.live, len(loop.published)
    rows = _shuffled(_later(planted_rows(n_users=200, length=24, seed=5), 10**6))
    for idx in np.array_split(np.arange(len(rows)), 12):  # a poisoned stretch, learned
        loop.learner.observe(events([rows[i] for i in idx]))
        loop.learner.update()
    assert keeper.after_update() is None  # the poisoned update goes live at once and is frozen for judgment
    poisoned = loop.published[n_published]
    assert poisoned["metrics"]["optimistic"] and loop.gate.candidate.version == poisoned["version"]
    clean = _later(planted_rows(n_users=200, length=4, seed=8), 3 * 10**6)
    decision = None
    for idx in np.array_split(np.arange(len(clean)), 4):  # genuine fresh events judge it
        fresh = events([clean[i] for i in idx])
        decision = keeper.test(fresh) or decision
        loop.learner.observe(fresh)
    assert decision is not None and not decision.promoted, decision and decision.to_json()
    back = loop.published[-1]
    assert back["metrics"]["rolled_back_to"] == champion.version and back["version"] > poisoned["version"]
    assert np.array_equal(back["state_dict"]["item_emb.weight"], champion.state()["item_emb.weight"].numpy())
    assert not keeper.trusted and keeper.rolled_back == 1 and loop.gate.live is champion
    # until a candidate passes again, updates wait (strict): the next update only proposes one
    loop.learner.update()
    n = len(loop.published)
    keeper.after_update()
    assert len(loop.published) == n and loop.gate.candidate is not None


def test_an_optimistic_gate_catching_up_leaves_the_update_out_and_still_freezes_a_candidate(trained):
    loop = copy.deepcopy(trained)
    loop.gate.cfg = GateConfig(min_events=150, mode="optimistic")
    loop.keeper = keeper = GateKeeper(loop.learner, loop.gate, loop._next, loop.published.append)
    keeper.trusted, loop.gate.candidate = True, None
    n = len(loop.published)
    loop.learner.observe(events(_later(planted_rows(n_users=50, length=4, seed=9), 10**6)))
    loop.learner.update()
    assert keeper.after_update(publish=False) is None
    assert len(loop.published) == n, "a version went live while the trainer was catching up"
    assert loop.gate.candidate is not None and loop.gate.candidate.version == 0  # judged first, published if promoted
    loop.gate.candidate = None
    keeper.after_update()
    assert len(loop.published) == n + 1 and loop.published[-1]["metrics"]["optimistic"]


def test_catching_up_publishes_at_most_every_catch_up_publish_s():
    from increc_ray.config import TrainerConfig
    from increc_ray.learn.train import coalescing

    tcfg = TrainerConfig(min_new_events=200, catch_up_publish_s=2.0)
    assert coalescing(tcfg, backlog=200, since_publish_s=0.5)  # behind, published just now: skip
    assert not coalescing(tcfg, backlog=199, since_publish_s=0.5)  # the update that drains it publishes
    assert not coalescing(tcfg, backlog=5000, since_publish_s=2.0)  # behind for a while: one goes out
    assert not coalescing(TrainerConfig(min_new_events=200, catch_up_publish_s=0), 5000, 0.0)  # off
