"""Tests for increc_ray.evaluate.offline: the leave-one-out split, full-ranking evaluation, training, CLI."""

import json
import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from increc_ray.cli import main
from increc_ray.config import BootstrapConfig, CleaningConfig, LabelRule, ModelConfig, TrainerConfig, replace
from increc_ray.learn.learner import IncrementalLearner
from increc_ray.evaluate.offline import (Split, catalogue_index, dataset_name, evaluate, fit, leave_one_out,
                                load_interactions, model_scorer, popularity_scorer, ranks)

from conftest import positives_table


table = positives_table


def split_of(train: dict, valid: dict, test: dict, items: list) -> Split:
    return Split(train, valid, test, table([]), items)


# ---- split -----------------------------------------------------------------------------------

def test_leave_one_out_sorts_stably_and_holds_out_the_last_two():
    rows = [("u1", "c", 30), ("u1", "a", 10), ("u2", "x", 5), ("u1", "d", 30),  # c, d tie: file order
            ("u1", "b", 20), ("u2", "y", 6), ("u1", "e", 30)]
    s = leave_one_out(table(rows))
    assert s.train == {"u1": ["a", "b", "c"], "u2": ["x", "y"]}  # u2 has < 3 items: training only
    assert s.valid == {"u1": "d"} and s.test == {"u1": "e"}
    # the rows the learner observes: training rows only, in time order (ties in file order)
    assert s.train_events["item_id"].to_pylist() == ["x", "y", "a", "b", "c"]
    assert sorted(s.items) == ["a", "b", "c", "d", "e", "x", "y"]


def test_stable_sort_is_not_just_luck():
    # many ties on one timestamp, in an order a non-stable sort would likely shuffle
    items = [f"i{j}" for j in range(40)][::-1]
    s = leave_one_out(table([("u", it, 7) for it in items]))
    assert s.train["u"] + [s.valid["u"], s.test["u"]] == items


def test_load_interactions_keeps_the_positives_of_the_profiles_cleaning(tmp_path):
    from increc_ray import profiles

    path = tmp_path / "ratings.csv"
    path.write_text("userId,movieId,rating,timestamp\n1,10,1.0,964982703\n1,11,5.0,964982224\n2,10,0.5,964982931\n")
    t = load_interactions(str(path), profiles.load("ml-100k").cleaning)  # every rating is a positive
    assert t.num_rows == 3 and t["label"].to_pylist() == [1, 1, 1]
    liked = CleaningConfig()  # the built-in rules: a rating below 3.5 is seen, not a positive
    assert liked.event_types["rating"] == LabelRule(weight=1.0, min_value=3.5)
    assert load_interactions(str(path), liked)["item_id"].to_pylist() == ["11"]
    assert dataset_name("/x/ml-100k/u.data") == "ml-100k"


# ---- evaluation --------------------------------------------------------------------------------

def fixed_scorer(index, scores: dict):
    row = np.full(len(index) + 1, -np.inf)
    for item, s in scores.items():
        row[index[item]] = s
    return lambda histories: np.tile(row, (len(histories), 1))


def test_evaluate_against_hand_computed_ranks_with_ties_and_seen_items():
    items = ["a", "b", "c", "d", "e"]
    s = split_of(train={"u1": ["a"], "u2": ["b", "c"], "u3": ["e"]}, valid={"u1": "b", "u2": "d", "u3": "a"},
                 test={"u1": "c", "u2": "e", "u3": "b"}, items=items)
    index = catalogue_index(s)
    score = fixed_scorer(index, {"a": 5.0, "b": 4.0, "c": 4.0, "d": 3.0, "e": 1.0})
    # valid, seen = train: u1 target b (a seen; c ties -> counts ahead) rank 1;
    # u2 target d (b, c seen; a ahead) rank 1; u3 target a (nothing ahead) rank 0
    v = evaluate(score, s, index, "valid")
    assert v["hr@10"] == 1.0 and v["n"] == 3
    assert v["ndcg@10"] == pytest.approx((1 / math.log2(3) * 2 + 1) / 3)
    # test, seen = train + valid: u1 target c (a, b seen) rank 0; u2 e (b, c, d seen; a) rank 1;
    # u3 b (e, a seen; c ties) rank 1
    t = evaluate(score, s, index, "test")
    assert t["ndcg@10"] == pytest.approx((1 + 2 / math.log2(3)) / 3)


def test_hr_at_10_cuts_at_ten_and_constant_scores_get_no_credit():
    items = [f"i{j}" for j in range(30)]
    s = split_of(train={"u": ["i0"]}, valid={"u": "i11"}, test={"u": "i10"}, items=items)
    index = catalogue_index(s)
    ranked = fixed_scorer(index, {it: 100.0 - j for j, it in enumerate(items)})
    # valid: i11 has i1..i10 ahead (i0 seen) -> rank 10, a miss; test: i10 has i1..i9 -> rank 9, a hit
    assert evaluate(ranked, s, index, "valid")["hr@10"] == 0.0
    assert evaluate(ranked, s, index, "test")["ndcg@10"] == pytest.approx(1 / math.log2(11))
    flat = fixed_scorer(index, {it: 1.0 for it in items})
    assert evaluate(flat, s, index, "test")["hr@10"] == 0.0  # 27 ties ahead of the target


def test_popularity_counts_training_items_and_excludes_seen():
    s = split_of(train={"u1": ["a", "b"], "u2": ["a", "c"], "u3": ["b", "a"]},
                 valid={"u1": "c", "u2": "b", "u3": "c"}, test={"u1": "d", "u2": "d", "u3": "d"},
                 items=["a", "b", "c", "d"])
    index = catalogue_index(s)
    # counts: a 3, b 2, c 1, d 0; valid u1: c behind nothing unseen -> rank 0; u2: b rank 0; u3: c rank 0
    assert evaluate(popularity_scorer(s, index, with_valid=False), s, index, "valid")["ndcg@10"] == 1.0
    # with validation counts c has 3 (ties a); test targets d: u1 seen a,b,c -> 0; u2 seen a,c,b -> 0
    assert evaluate(popularity_scorer(s, index, with_valid=True), s, index, "test")["hr@10"] == 1.0


def test_model_scorer_ranks_items_it_never_trained_on_last():
    learner = IncrementalLearner(ModelConfig(d_model=8, n_layers=1, n_heads=2, max_len=4), TrainerConfig())
    learner.observe(table([("u", "a", 1), ("u", "b", 2), ("u", "c", 3)]))
    s = split_of(train={"u": ["a", "b", "c"]}, valid={"u": "new"}, test={"u": "b"}, items=["a", "b", "c", "new"])
    index = catalogue_index(s)
    score = model_scorer(learner, index)
    row = score([["a", "new"]])[0]  # unknown history items are skipped
    assert row.shape == (5,) and row[0] == -np.inf and row[index["new"]] == -np.inf
    assert np.isfinite(row[[index["a"], index["b"], index["c"]]]).all()
    # "a" seen; b and c score finite, so both rank ahead of the never-trained target
    assert ranks(score, index, [["a"]], ["new"]) == [2]
    assert ranks(score, index, [["a", "b", "c"]], ["new"]) == [0]  # nothing else is left to rank


# ---- training ----------------------------------------------------------------------------------

N_ITEMS = 60


def planted(n_users=300, length=12, p_follow=0.9, seed=0):
    """Users walk i -> i + 1 (mod N_ITEMS) with prob p_follow, else jump at random."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        item, t = int(rng.integers(N_ITEMS)), int(rng.integers(1000))
        for _ in range(length):
            rows.append((f"u{u}", f"i{item}", t))
            t += int(rng.integers(1, 100))
            item = (item + 1) % N_ITEMS if rng.random() < p_follow else int(rng.integers(N_ITEMS))
    return table(rows)


def test_training_learns_a_planted_successor_and_beats_popularity():
    torch.set_num_threads(2)
    s = leave_one_out(planted())
    learner, info = fit(s, ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=12, dropout=0.1),
                        TrainerConfig(lr=5e-3, batch_size=64, lr_schedule="constant"),
                        BootstrapConfig(epochs=30, eval_every=5, patience=3))
    index = catalogue_index(s)
    model = evaluate(model_scorer(learner, index), s, index, "test")
    pop = evaluate(popularity_scorer(s, index, True), s, index, "test")
    assert model["hr@10"] >= 0.8, (model, info["history"])
    assert pop["hr@10"] < 0.5  # the pattern, not popularity, is what the model found
    assert info["best_epoch"] >= 1 and info["history"]


def test_train_epoch_leaves_pending_targets_and_lowers_the_loss():
    learner = IncrementalLearner(ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=8),
                                 TrainerConfig(lr=5e-3, batch_size=32))
    learner.observe(planted(n_users=60, length=8))
    pending = learner.pending_targets
    losses = [learner.train_epoch() for _ in range(6)]
    assert learner.pending_targets == pending > 0
    assert losses[-1] < losses[0]


def test_cli_evaluate_offline_writes_results(tmp_path, capsys):
    rows = planted(n_users=40, length=6).to_pylist()
    folder = tmp_path / "tiny-set"
    folder.mkdir()
    lines = ["userId,movieId,rating,timestamp"] + [
        f"{r['user_id'][1:]},{r['item_id'][1:]},4.0,{1_000_000_000 + r['timestamp'].timestamp():.0f}" for r in rows]
    (folder / "ratings.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "results"
    assert main(["evaluate", "offline", "--data", str(folder / "ratings.csv"), "--out", str(out),
                 "--max-epochs", "2"]) == 0
    result = json.loads((out / "offline_tiny-set.json").read_text())
    assert result["dataset"] == "tiny-set" and result["stats"]["users"] == 40 and result["epochs"] == 2
    for part in ("test", "valid"):
        assert 0 <= result[part]["hr@10"] <= 1 and 0 <= result[part]["ndcg@10"] <= result[part]["hr@10"]
        assert set(result["popularity"][part]) == {"hr@10", "ndcg@10", "n"}
    assert result["train_seconds"] > 0 and "most popular" in capsys.readouterr().out
    # no profile named tiny-set: the deployed default, with --max-epochs over its bootstrap.epochs
    from increc_ray import profiles

    assert result["profile"] == profiles.DEFAULT_PROFILE == "ml-100k-fresh"
    expected = profiles.load(profiles.DEFAULT_PROFILE)
    assert result["config"] == replace(expected, bootstrap=replace(expected.bootstrap, epochs=2)).to_dict()
