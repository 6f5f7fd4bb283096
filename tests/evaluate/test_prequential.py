"""Tests for the prequential replay (increc_ray.evaluate.prequential, strategies, stream): the
metric against hand-computed values and ``ranking.rank_of``, the stream bookkeeping, the
test-then-train order, and a whole run on a small synthetic stream. No Ray."""

import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from increc_ray.config import Config, EvaluationConfig, ModelConfig, TrainerConfig
from increc_ray.evaluate.prequential import MISS, build_stream, prequential_ranks, replay, summarise
from increc_ray.evaluate.ranking import rank_of
from increc_ray.evaluate.strategies import Incremental, fork, train_from_scratch

from conftest import positives_table

TINY = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=8, dropout=0.0, initial_item_capacity=8)


table = positives_table


# ---- the metric --------------------------------------------------------------------------------

def test_ranks_by_hand():
    #                  pad  1    2    3    4    5
    scores = np.array([[0, 0.9, 0.5, 0.5, 0.1, 0.7],   # target 2, item 1 seen, item 5 not yet known
                       [0, 0.9, 0.5, 0.5, 0.1, 0.7],   # target 4: 1, 2, 3, 5 ahead
                       [0, 0.9, 0.5, 0.5, 0.1, 0.7],   # target 5 is new to the stream: a miss
                       [0, 0.2, np.nan, 0.1, 0.3, 0.0]])  # target 2 scores NaN (= -inf): behind all
    ranks = prequential_ranks(scores, targets=np.array([2, 4, 5, 2]), n_known=np.array([4, 5, 4, 4]),
                              histories=[np.array([1]), np.array([], dtype=np.int64), np.array([1]),
                                         np.array([3])])
    assert ranks.tolist() == [1, 4, MISS, 2]


def test_ranks_agree_with_rank_of():
    rng = np.random.default_rng(0)
    B, n = 40, 30
    scores = rng.integers(0, 6, size=(B, n + 1)).astype(float)  # many ties
    scores[rng.random((B, n + 1)) < 0.1] = -np.inf
    targets = rng.integers(1, n + 1, size=B)
    n_known = np.maximum(targets, rng.integers(1, n + 1, size=B))  # targets known
    hists = [rng.choice(np.arange(1, k + 1), size=min(k, 5), replace=False) for k in n_known]
    got = prequential_ranks(scores, targets, n_known, hists)
    for b in range(B):
        unknown = list(range(n_known[b] + 1, n + 1))
        assert got[b] == rank_of(scores[b], targets[b], exclude=[0, *hists[b], *unknown]), b


# ---- the stream --------------------------------------------------------------------------------

def test_build_stream_orders_indexes_and_splits():
    rows = [("u2", "b", 10), ("u1", "a", 0), ("u1", "c", 40), ("u2", "a", 40),  # ties keep file order
            ("u1", "b", 100), ("u3", "d", 60)]
    s = build_stream(table(rows), EvaluationConfig(warmup_fraction=0.5, windows=2))
    assert s.item_ids == ["a", "b", "c", "d"]
    assert s.items.tolist() == [1, 2, 3, 1, 4, 2]
    assert s.n_known.tolist() == [0, 1, 2, 3, 3, 4]
    assert s.user_pos.tolist() == [0, 0, 1, 1, 0, 2]
    assert s.n_warmup == 4  # timestamps before 50, half of the span 0..100
    assert s.windows == [(4, 5), (5, 6)]
    assert s.history(5).tolist() == [1, 3]


def test_build_stream_warmup_is_half_the_time_span():
    rows = [("u1", "a", 0), ("u1", "b", 10), ("u2", "a", 49), ("u2", "c", 50), ("u1", "c", 100)]
    s = build_stream(table(rows), EvaluationConfig(windows=5))
    assert s.n_warmup == 3
    assert s.windows == [(3, 4), (4, 5)]  # no more windows than replayed events


# ---- the replay ----------------------------------------------------------------------------------

class Fixed:
    """Scores stream index i as -i (lower index ranks higher); learns nothing; logs calls."""

    def __init__(self, stream, log, streaming=False, name="fixed"):
        self.name, self.stream, self.log, self.streaming = name, stream, log, streaming

    def scores(self, histories):
        n = len(self.stream.item_ids)
        self.log.append(("score", len(histories)))
        return np.tile(-np.arange(n + 1, dtype=float), (len(histories), 1))

    def learn(self, start, end):
        self.log.append(("learn", self.name, start, end) if self.streaming else ("learn", start, end))


def test_replay_metrics_by_hand_and_order():
    # warm-up: t < 50; replay windows [3, 5) and [5, 7)
    rows = [("u1", "a", 0), ("u1", "b", 10), ("u2", "c", 20),
            ("u1", "c", 60),  # history a,b excluded; known a,b,c: c is rank 0 -> hit, ndcg 1
            ("u3", "a", 70),  # no history: not evaluated
            ("u2", "d", 80),  # d is new to the stream: miss
            ("u3", "c", 100)]  # history a excluded; b ahead of c: rank 1 -> ndcg 1/log2(3)
    stream = build_stream(table(rows), EvaluationConfig(windows=2))
    assert stream.windows == [(3, 5), (5, 7)]
    log = []
    res = replay(stream, [Fixed(stream, log)], EvaluationConfig(windows=2), step=200)
    assert [r.tolist() for r in res["fixed"].ranks] == [[0], [MISS, 1]]
    assert log == [("score", 1), ("learn", 3, 5), ("score", 2)]  # tested before learned; no learning after the last
    s = summarise(stream, res, k=10)["fixed"]
    assert s["n"] == 3
    assert s["hr@10"] == pytest.approx(2 / 3)
    assert s["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3)) / 3)
    # where it scored: u1's c (history 2, item c once in the warm-up, warm-up user), u2's d (history
    # 1, an item the warm-up never had, warm-up user), u3's c (history 1, new user)
    seg = s["segments"]
    assert seg["history 1-5"] == {"ndcg@10": pytest.approx(s["ndcg@10"]), "n": 3}
    assert seg["history 6-20"] == {"ndcg@10": None, "n": 0}  # JSON null, not NaN
    assert seg["item warm-up 0"] == {"ndcg@10": 0.0, "n": 1}
    assert seg["item warm-up 1-10"] == {"ndcg@10": pytest.approx((1 + 1 / math.log2(3)) / 2), "n": 2}
    assert seg["warm-up user"] == {"ndcg@10": pytest.approx(0.5), "n": 2}
    assert seg["new user"] == {"ndcg@10": pytest.approx(1 / math.log2(3)), "n": 1}


def test_streaming_strategies_learn_every_step_and_the_others_every_window():
    rows = [("u1", "a", 0), ("u1", "b", 10), ("u2", "c", 20),
            ("u1", "c", 60), ("u3", "a", 70), ("u2", "d", 80), ("u3", "c", 90), ("u1", "d", 100)]
    stream = build_stream(table(rows), EvaluationConfig(windows=2))
    assert stream.windows == [(3, 6), (6, 8)]
    log = []
    res = replay(stream, [Fixed(stream, log, streaming=True, name="live"), Fixed(stream, log)],
                 EvaluationConfig(windows=2), step=2)
    # steps [3,5) [5,6) | [6,8): each tested (events with a history) before anyone learns it
    assert log == [("score", 1), ("learn", "live", 3, 5), ("score", 1),
                   ("score", 1), ("learn", "live", 5, 6), ("score", 1), ("learn", 3, 6),
                   ("score", 2), ("score", 2)]  # nothing is learned after the last event
    assert [r.tolist() for r in res["live"].ranks] == [r.tolist() for r in res["fixed"].ranks]
    assert [len(r) for r in res["live"].ranks] == [2, 2]  # ranks stay per window


class Spy(Incremental):
    """The real incremental strategy, noting what its learner had seen whenever it is tested."""

    seen_at_test: list

    def scores(self, histories):
        self.seen_at_test.append(self.learner.n_events)
        return super().scores(histories)


def planted(n_users=40, length=12, n_items=20, seed=0):
    """Users walk item i -> i+1 (mod n_items), starting at random times: a learnable stream."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        t, item = int(rng.integers(0, 50_000)), int(rng.integers(n_items))
        for _ in range(length):
            rows.append((f"u{u}", f"i{item}", t))
            t += int(rng.integers(1, 2_000))
            item = (item + 1) % n_items
    return sorted(rows, key=lambda r: r[2])


def test_incremental_is_tested_before_it_learns():
    stream = build_stream(table(planted()), EvaluationConfig(windows=4))
    warm = train_from_scratch(stream, stream.n_warmup, TINY, TrainerConfig(batch_size=16), epochs=2)
    assert warm.n_events == stream.n_warmup
    spy = Spy("incremental", stream, fork(warm, TrainerConfig(batch_size=16, max_new_events=20)))
    spy.seen_at_test = []
    replay(stream, [spy], EvaluationConfig(windows=4), step=50)
    # every step of 50 events is tested with exactly the events before it learned
    steps = [a for start, end in stream.windows for a in range(start, end, 50)
             if (stream.user_pos[a:min(end, a + 50)] > 0).any()]
    assert spy.seen_at_test == steps and len(steps) >= 8
    assert spy.n_updates >= 2 * len(steps) - 3  # steps of 50 events in slices of 20: live-loop updates
    assert spy.learner.n_events == steps[-1]  # the last step is tested, not learned


def test_fork_is_independent_and_keeps_nothing_pending():
    stream = build_stream(table(planted()), EvaluationConfig())
    warm = train_from_scratch(stream, stream.n_warmup, TINY, TrainerConfig(batch_size=16), epochs=1)
    assert warm.pending_targets > 0  # observe marked the warm-up as pending; train_epoch leaves it
    copy = fork(warm, TrainerConfig(optimizer="sgd", lr=0.1))
    assert copy.pending_targets == 0 and isinstance(copy.optimizer, torch.optim.SGD)
    before = {k: v.clone() for k, v in warm.model.state_dict().items()}
    copy.observe(stream.events.slice(stream.n_warmup, 50))
    assert copy.update() is not None
    assert all((before[k] == v).all() for k, v in warm.model.state_dict().items())


def test_fork_keeps_adam_moments_but_takes_the_new_hyperparameters():
    stream = build_stream(table(planted()), EvaluationConfig())
    warm = train_from_scratch(stream, stream.n_warmup, TINY, TrainerConfig(batch_size=16, lr=2e-3), epochs=1)
    copy = fork(warm, TrainerConfig(lr=5e-4, weight_decay=0.1, item_lr_mult=4.0))
    assert [g["lr"] for g in copy.optimizer.param_groups] == pytest.approx([2e-3, 5e-4, 5e-4])
    assert [g["weight_decay"] for g in copy.optimizer.param_groups] == pytest.approx([0.1, 0.1, 0.0])
    w, c = warm.optimizer.state_dict()["state"], copy.optimizer.state_dict()["state"]
    assert w.keys() == c.keys() and all((w[k]["exp_avg_sq"] == c[k]["exp_avg_sq"]).all() for k in w)
    copy.observe(stream.events.slice(stream.n_warmup, 50))
    assert copy.update().lr == pytest.approx(5e-4)
    assert [g["lr"] for g in copy.optimizer.param_groups] == pytest.approx([2e-3, 5e-4, 5e-4])


# ---- the whole run ---------------------------------------------------------------------------

def tiny_config(**sections) -> Config:
    """A small, fast config of every section (the shape of a profile), with ``sections`` merged in."""
    from increc_ray.profiles import merge

    base = {"model": TINY.model_dump(),
            "trainer": {"lr": 3e-3, "steps_per_update": 3, "min_new_events": 50},
            "bootstrap": {"epochs": 8, "lr": 3e-3, "batch_size": 32},
            "evaluation": {"windows": 4, "retrain_every": 2,
                           "variants": {"ogd": {"optimizer": "sgd", "batch_size": 1, "lr": 0.05}}}}
    return Config.from_dict(merge(base, sections))


def test_run_stream_on_a_synthetic_file(tmp_path):
    from increc_ray.evaluate.stream import BASELINES, format_table, run_stream
    from increc_ray.evaluate.synthetic import SyntheticStream

    # planted successors with drift and new items; 4000 events, bare user,item,timestamp JSONL
    syn = SyntheticStream(n_users=60, n_items=30, n_clusters=3, new_item_every=200, drift_every=1000, seed=1)
    path = tmp_path / "events.jsonl"
    with open(path, "w") as f:
        for ev in syn.next_events(4000):
            f.write(json.dumps({"user_id": ev["user_id"], "item_id": ev["item_id"], "timestamp": ev["timestamp"]}) + "\n")
    cfg = tiny_config()
    out = run_stream(str(path), cfg, profile="tiny", out_dir=str(tmp_path), name="syn", log=None, progress_bar=False)
    saved = json.loads((tmp_path / "stream_syn.json").read_text())
    assert set(saved["strategies"]) == set(BASELINES) | {"incremental[ogd]"}
    assert (tmp_path / "stream_syn_time.png").stat().st_size > 0 and (tmp_path / "stream_syn_compute.png").exists()
    # the result names its profile and holds the whole resolved config, which rebuilds it
    assert saved["profile"] == "tiny" and Config.from_dict(saved["config"]) == cfg
    per = out["strategies"]
    for name in BASELINES:
        assert {"hr@10", "ndcg@10", "update_seconds"} <= set(per[name]) and len(per[name]["windows"]) == 4
    assert per["static"]["update_seconds"] == 0.0 and per["full_retrain"]["update_seconds"] > 0
    # the incremental strategy ran the profile's trainer, updating once per min_new_events events
    assert per["incremental"]["trainer"] == cfg.trainer.model_dump()
    per_window = saved["stats"]["replay_events"] / 4
    assert 3 * (per_window // 50) <= per["incremental"]["n_updates"] <= 4 * (per_window // 50 + 1)
    assert per["incremental[ogd]"]["trainer"]["batch_size"] == 1
    # a model that learned the planted successors beats recent popularity by far
    assert per["static"]["hr@10"] > per["popularity"]["hr@10"] + 0.1
    # new items arrive during the replay: a learning strategy ranks them, the static model cannot
    assert per["incremental"]["ndcg@10"] > per["static"]["ndcg@10"]
    # ... which the segments show: items the warm-up never had score 0 for the static model
    seg = saved["strategies"]["static"]["segments"]
    assert seg["item warm-up 0"]["n"] > 0 and seg["item warm-up 0"]["ndcg@10"] == 0.0
    assert sum(seg[f"history {b}"]["n"] for b in ("1-5", "6-20", "21-50", "51+")) == per["static"]["n"]
    assert "item warm-up 0" in format_table(out)


def test_cli_overrides_are_checked_like_the_serve_config(capsys):
    from increc_ray.cli import main

    assert main(["evaluate", "stream", "--data", "missing.csv", "--incremental", "lr_typo=1"]) == 2
    assert "unknown key 'trainer.lr_typo'" in capsys.readouterr().err
    assert main(["evaluate", "stream", "--data", "missing.csv", "--incremental", "batch_size=many"]) == 2
    assert "trainer.batch_size: expected an integer, got 'many'" in capsys.readouterr().err
    assert main(["evaluate", "stream", "--data", "missing.csv", "--model", "width=128"]) == 2
    assert "unknown key 'model.width'" in capsys.readouterr().err
    assert main(["evaluate", "stream", "--data", "missing.csv", "--profile", "ml-1m"]) == 2
    assert "unknown profile 'ml-1m' (known: " in capsys.readouterr().err


def test_the_profile_is_all_the_stream_benchmark_reads(monkeypatch, tmp_path):
    import increc_ray.evaluate.stream as stream_run
    from increc_ray import profiles
    from increc_ray.cli import main

    seen = {}
    monkeypatch.setattr(stream_run, "run_stream", lambda path, cfg, profile, name, **kw: seen.update(
        name=name, cfg=cfg, profile=profile))
    assert main(["evaluate", "stream", "--data", "x/ml-100k/u.data", "--name", "ml-100k_every-window",
                 "--profile", "ml-100k", "--retrain-every", "1", "--no-variants"]) == 0
    assert seen["name"] == "ml-100k_every-window" and seen["profile"] == "ml-100k"
    expected = profiles.load("ml-100k", overrides={"evaluation": {"retrain_every": 1}})
    assert seen["cfg"].trainer == expected.trainer and seen["cfg"].model == expected.model
    assert seen["cfg"].evaluation.retrain_every == 1 and seen["cfg"].evaluation.variants == {}
    # no --profile: the one named like the dataset, else the deployed default
    assert main(["evaluate", "stream", "--data", "x/ml-latest-small/ratings.csv"]) == 0
    assert seen["profile"] == "ml-latest-small" and seen["cfg"] == profiles.load("ml-latest-small")
    assert main(["evaluate", "stream", "--data", "x/other/events.csv", "--preset", "ml-latest-small"]) == 0
    assert seen["profile"] == "ml-latest-small"  # --preset: the old name of --profile
    assert main(["evaluate", "stream", "--data", "x/renamed/u.data"]) == 0
    assert seen["profile"] == profiles.DEFAULT_PROFILE == "ml-100k-fresh"
    f = tmp_path / "mine.yaml"
    f.write_text("trainer: {min_new_events: 7}\n")
    assert main(["evaluate", "stream", "--data", "x/ml-100k/u.data", "--config", str(f),
                 "--incremental", "lr=0.01"]) == 0
    assert seen["profile"] == str(f) and (seen["cfg"].trainer.min_new_events, seen["cfg"].trainer.lr) == (7, 0.01)


def test_last_window_averages_over_the_same_span_of_events_as_incremental():
    from increc_ray.evaluate.stream import build_strategies

    stream = build_stream(table(planted()), EvaluationConfig(windows=4))
    cfg = tiny_config(trainer={"ema_decay": 0.9, "rare_item_lr_mult": 20.0, "min_new_events": 20},
                      bootstrap={"epochs": 1})
    cfg = Config.from_dict({**cfg.to_dict(), "evaluation": {"windows": 4, "variants": {}}})
    by_name = {s.name: s for s in build_strategies(stream, cfg)[0]}
    per_window = (len(stream.items) - stream.n_warmup) / 4
    assert by_name["incremental"].streaming and not by_name["last_window"].streaming
    assert by_name["incremental"].learner.trainer_cfg == cfg.trainer
    assert by_name["full_retrain"].trainer_cfg == cfg.bootstrap_trainer
    assert by_name["last_window"].learner.trainer_cfg.ema_decay == pytest.approx(0.9 ** (per_window / 20))
    # the naive baseline takes plain steps: stretched rare rows over 5 passes overshoot
    assert by_name["incremental"].learner.trainer_cfg.rare_item_lr_mult == 20.0
    assert by_name["last_window"].learner.trainer_cfg.rare_item_lr_mult == 1.0


def test_recent_popularity_halves_old_counts_over_one_window_of_events():
    from increc_ray.evaluate.strategies import Popularity

    rows = [("u0", f"i{t % 3}", t) for t in range(10)] + [("u1", "i9", 100 + t) for t in range(20)]
    stream = build_stream(table(rows), EvaluationConfig(windows=2))
    assert stream.n_warmup == 10 and stream.windows == [(10, 20), (20, 30)]
    pop = Popularity("popularity", stream, half_life=1.0)
    before = pop.counts.copy()  # i0..i2 seen in warm-up
    for a in range(10, 20, 5):  # one window's worth of events, in two streaming steps
        pop.learn(a, a + 5)
    i9 = stream.item_ids.index("i9") + 1
    assert pop.counts[1:4] == pytest.approx(before[1:4] / 2)
    assert 5 < pop.counts[i9] < 10  # the newest events have decayed less than the older ones


def test_consolidated_runs_a_full_pass_every_n_events_and_learns_each_event_once():
    from increc_ray.evaluate.stream import build_strategies

    stream = build_stream(table(planted(n_users=60)), EvaluationConfig(windows=4))
    cfg = tiny_config(trainer={"min_new_events": 20}, bootstrap={"epochs": 2, "eval_every": 1, "holdout_fraction": 0.2})
    strategies, _ = build_strategies(stream, cfg, consolidate_every=[100], only=["incremental", "incremental+full_pass[100]"])
    assert [s.name for s in strategies] == ["incremental", "incremental+full_pass[100]"]
    cons = strategies[1]
    first = cons.learner
    results = replay(stream, strategies, cfg.evaluation, step=20)
    assert len(cons.full_passes) >= 2 and cons.learner is not first
    # after its last pass the learner holds every event up to the last one learned, each once
    assert cons.learner.n_events == strategies[0].learner.n_events
    for p in cons.full_passes:
        assert p["n_train"] + p["n_holdout"] == p["n_events"] and p["epochs"] >= 1
    assert len(results["incremental+full_pass[100]"].ranks) == 4
    with pytest.raises(AssertionError, match="unknown strategies"):
        build_strategies(stream, cfg, only=["nope"])
