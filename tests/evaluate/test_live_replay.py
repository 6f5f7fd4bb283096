"""Tests for the Ray-free pieces of the live replay (increc_ray.evaluate.live): the harness's event
order and warm-up cut, the evenly spread sample, ranks in a returned list, the popularity
baseline against ``ranking.rank_of``, the summary's standard errors and the catch-up test on
``/status`` answers. No Ray."""

import importlib.util
import math
import os

import numpy as np
import pytest
import yaml

from increc_ray.evaluate import live
from increc_ray.config import EvaluationConfig
from increc_ray.evaluate.prequential import MISS, build_stream
from increc_ray.evaluate.ranking import evaluate_ranks, rank_of

from conftest import positives_table


# ---- order, warm-up, scored events -----------------------------------------------------------

def test_time_order_is_stable_and_matches_the_harness():
    rows = [("u1", "a", 3000), ("u2", "b", 1000), ("u1", "c", 1000), ("u3", "d", 2000), ("u2", "e", 3000)]
    ordered = live.time_ordered(positives_table(rows))
    assert ordered["item_id"].to_pylist() == ["b", "c", "d", "a", "e"]  # ties keep file order
    stream = build_stream(positives_table(rows), EvaluationConfig(windows=1))
    assert [stream.item_ids[i - 1] for i in stream.items] == ordered["item_id"].to_pylist()


def test_warmup_cut_is_the_harness_cut():
    rng = np.random.default_rng(0)
    ts = np.sort(rng.integers(0, 10_000, 200)) * 1000
    rows = [(f"u{i % 7}", f"i{i}", t) for i, t in enumerate(ts)]
    for fraction in (0.3, 0.5, 0.8):
        stream = build_stream(positives_table(rows), EvaluationConfig(warmup_fraction=fraction, windows=2))
        assert live.warmup_count(ts, fraction) == stream.n_warmup


def test_scorable_events_are_those_with_an_earlier_event_of_the_user():
    users = ["a", "b", "a", "c", "b", "c", "d"]
    assert live.scorable(users, 0).tolist() == [2, 4, 5]
    assert live.scorable(users, 3).tolist() == [4, 5]  # a user's warm-up events count as history
    rows = [(u, f"i{j}", j * 1000) for j, u in enumerate(users)]
    stream = build_stream(positives_table(rows), EvaluationConfig(windows=1))
    assert live.scorable(users, 0).tolist() == np.flatnonzero(stream.user_pos > 0).tolist()


def test_spread_is_even_sorted_and_bounded():
    c = np.arange(100, 1100)
    s = live.spread(c, 10)
    assert len(s) == 10 and s[0] == 100 and s[-1] == 1099
    assert (np.diff(s) > 0).all()
    gaps = np.diff(s)
    assert gaps.max() - gaps.min() <= 1
    assert live.spread(c, 0).tolist() == c.tolist()
    assert live.spread(c, 5000).tolist() == c.tolist()
    assert live.spread(np.array([3, 9]), 1).tolist() == [3]
    with pytest.raises(AssertionError):
        live.spread(c, -1)


# ---- scoring ---------------------------------------------------------------------------------

def test_list_rank():
    assert live.list_rank(["x", "y", "z"], "x") == 0
    assert live.list_rank(["x", "y", "z"], "z") == 2
    assert live.list_rank(["x", "y"], "q") == MISS
    assert live.list_rank([], "q") == MISS


def test_popularity_rank_agrees_with_rank_of():
    rng = np.random.default_rng(1)
    items = [f"i{j}" for j in rng.integers(0, 30, 400)]
    pop = live.PopularityCounts()
    pop.add(items)
    ids = sorted(set(items))
    counts = np.array([items.count(i) for i in ids], dtype=float)
    for t in range(0, len(ids), 3):
        seen = [ids[j] for j in rng.choice(len(ids), 5, replace=False)]
        expect = rank_of(counts, t, exclude=[ids.index(s) for s in seen])
        assert pop.rank(ids[t], seen) == expect


def test_popularity_ties_count_against_the_target_and_new_items_miss():
    pop = live.PopularityCounts()
    pop.add(["a", "a", "b", "c", "c"])
    assert pop.rank("a", []) == 1  # c ties with a
    assert pop.rank("c", []) == 1
    assert pop.rank("b", []) == 2
    assert pop.rank("b", ["a"]) == 1  # seen items are excluded
    assert pop.rank("a", ["a"]) == 1  # the target itself never is
    assert pop.rank("new", []) == MISS
    assert pop.top(2) == ["a", "c"]
    assert pop.top(5, seen=["a"]) == ["c", "b"]


def test_popularity_grows_past_its_initial_capacity():
    pop = live.PopularityCounts()
    pop.add(f"i{j}" for j in range(3000))
    pop.add(["i2999"])
    assert pop.rank("i2999", []) == 0
    assert pop.rank("i0", []) == 2999  # every other item is ahead or tied (ties count against it)


# ---- summary ---------------------------------------------------------------------------------

def test_metric_summary_matches_evaluate_ranks_and_has_standard_errors():
    ranks = [0, 3, 9, 10, MISS, 1, 50, 2]
    s = live.metric_summary(ranks, k=10)
    ref = evaluate_ranks(ranks, k=10)
    assert s["hr@10"] == pytest.approx(ref.hr) and s["ndcg@10"] == pytest.approx(ref.ndcg) and s["n"] == 8
    hits = np.array([1, 1, 1, 0, 0, 1, 0, 1], dtype=float)
    assert s["hr@10_se"] == pytest.approx(hits.std(ddof=1) / math.sqrt(8))
    assert math.isnan(live.metric_summary([])["hr@10"])


def test_paired_difference():
    a, b = [0, 0, MISS, 5], [MISS, 0, MISS, 0]
    d = live.paired_difference(a, b, k=10)
    assert d["hr@10"] == pytest.approx(0.25)
    assert d["ndcg@10"] == pytest.approx((1.0 + 0 + 0 + 1 / math.log2(7) - 1.0) / 4)
    with pytest.raises(AssertionError):
        live.paired_difference([0], [0, 1])


def test_event_records():
    recs = live.event_records(["u"], ["i"], [np.int64(1_500_000_000_000)], "click", values=[None])
    assert recs == [{"user_id": "u", "item_id": "i", "timestamp": 1_500_000_000_000, "event_type": "click"}]
    assert type(recs[0]["timestamp"]) is int  # JSON-serialisable
    assert live.event_records(["u"], ["i"], [1], None, values=[4.0])[0]["value"] == 4.0


# ---- catch-up --------------------------------------------------------------------------------

def _status(**over):
    s = {"model_version": 5, "served_version": 5,
         "lag": {"pending_files": 0, "clean_parts_behind": 0},
         "counts": {"accepted": 1000, "duplicates": 0, "quarantined": 0, "cleaned": 1000},
         "trainer": {"progress": {"events_seen": 1000, "pending_targets": 10}}}
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(s.get(key), dict):
            s[key] = {**s[key], **value}
        else:
            s[key] = value
    return s


def test_caught_up():
    assert live.catch_up_state(_status(), 1000, 50) == (True, "caught up")


@pytest.mark.parametrize("over, why", [
    ({"counts": {"accepted": 900, "cleaned": 900}}, "accepted 900 of 1000"),
    ({"counts": {"cleaned": 990}}, "cleaned 990 of 1000"),
    ({"lag": {"pending_files": 2}}, "2 landing files pending"),
    ({"lag": {"clean_parts_behind": 1}}, "1 clean parts behind"),
    ({"trainer": {"progress": {"events_seen": 500, "pending_targets": 0}}}, "trainer saw 500 of 1000"),
    ({"trainer": {"progress": {"events_seen": 1000, "pending_targets": 60}}}, "60 targets pending"),
    ({"trainer": {"progress": {}}}, "trainer saw None"),
    ({"model_version": 0, "served_version": 0}, "no model version yet"),
    ({"served_version": 4}, "serving v4, trainer at v5"),
    ({"phase": "catching_up"}, "phase 'catching_up'"),
])
def test_not_caught_up_says_why(over, why):
    ok, reason = live.catch_up_state(_status(**over), 1000, 50)
    assert not ok and why in reason


def test_an_update_at_the_read_offset_has_learned_the_pending_targets():
    # the trainer's progress report is sent before its update, so pending_targets stays stale
    offset = {"seq": 3, "row": 120}
    stale = {"events_seen": 1000, "pending_targets": 900, "offset": offset}
    assert live.catch_up_state(_status(trainer={"progress": stale, "last_update": {"offset": offset}}), 1000, 50)[0]
    older = {"offset": {"seq": 2, "row": 500}}
    assert not live.catch_up_state(_status(trainer={"progress": stale, "last_update": older}), 1000, 50)[0]


def test_streaming_phase_is_caught_up():
    assert live.catch_up_state(_status(phase="streaming"), 1000, 50)[0]


# ---- the CLI's Ray-free parts (bench/live_replay.py) -------------------------------------------

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("live_replay", os.path.join(ROOT, "bench", "live_replay.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # no side effects on import: no cluster, no file
    return module


def test_deploy_config_keeps_the_app_and_moves_data_and_port(cli):
    doc, args = cli.deploy_config(os.path.join(ROOT, "serve_config.yaml"), "/tmp/elsewhere", 4321)
    with open(os.path.join(ROOT, "serve_config.yaml"), encoding="utf-8") as f:
        original = yaml.safe_load(f)
    assert doc["http_options"] == {**original["http_options"], "host": "127.0.0.1", "port": 4321}
    app, orig_app = doc["applications"][0], original["applications"][0]
    assert app["deployments"] == orig_app["deployments"] and app["import_path"] == orig_app["import_path"]
    assert args["config"] == {**orig_app["args"]["config"], "data_dir": "/tmp/elsewhere"}
    assert app["args"] is args
    _, other = cli.deploy_config(os.path.join(ROOT, "serve_config.yaml"), "/tmp/elsewhere", 4321, "ml-latest-small")
    assert other == {**args, "profile": "ml-latest-small"}


def test_deploy_config_inlines_a_config_file(cli, tmp_path):
    (tmp_path / "app.yaml").write_text("model: {d_model: 32}\ndata_dir: /tmp/original\n")
    (tmp_path / "serve.yaml").write_text(yaml.safe_dump({"applications": [
        {"name": "x", "import_path": "increc_ray.serve.app:app_builder", "args": {"config_file": "app.yaml"}}]}))
    doc, args = cli.deploy_config(str(tmp_path / "serve.yaml"), "/tmp/d", 1)
    assert args == {"config": {"model": {"d_model": 32}, "data_dir": "/tmp/d"}}
    # a profile (what serve_config.yaml deploys): data_dir merged over it, the profile kept
    (tmp_path / "profile.yaml").write_text(yaml.safe_dump({"applications": [
        {"args": {"profile": "ml-100k", "config": {"data_dir": "/tmp/increc_ray"}}}]}))
    doc, args = cli.deploy_config(str(tmp_path / "profile.yaml"), "/tmp/d", 1)
    assert args == {"profile": "ml-100k", "config": {"data_dir": "/tmp/d"}}
    assert cli.resolved_config(args)["model"]["d_model"] == 128  # the profile's, resolved as app_builder does


def test_only_loopback_urls(cli):
    with pytest.raises(SystemExit, match="only loopback"):
        cli.Client("http://10.0.0.1:8000")
    assert cli.Client("http://127.0.0.1:1").http.base_url.host == "127.0.0.1"


def test_setting_differences(cli):
    harness = {"model": {"d_model": 128, "max_len": 25}, "incremental_trainer": {"lr": 2.5e-4, "use_gpu": "auto"}}
    resolved = {"model": {"d_model": 64, "max_len": 25}, "trainer": {"lr": 1e-3, "use_gpu": "false"}}
    assert cli.setting_differences(harness, resolved) == ["model.d_model: harness 128, deployed 64",
                                                          "trainer.lr: harness 0.00025, deployed 0.001"]
    assert cli.setting_differences(None, resolved) == []


def test_stream_reads_a_file_as_the_harness_does(cli, tmp_path):
    # a MovieLens u.data file: every rating is a positive under the default profile's cleaning
    (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n2\t20\t1\t881250950\n1\t30\t3\t881250948\n")
    stream = cli.Stream(str(tmp_path / "u.data"), limit=0)
    assert stream.n == 3 and stream.users == ["1", "1", "2"]  # time order


def test_windowed_flags_windows_where_live_loses_to_popularity():
    live_r = [0] * 50 + [MISS] * 50  # first window: live always hits; second: always misses
    pop_r = [MISS, 0] * 50
    w = live.windowed(live_r, pop_r, 50)
    assert [x["live_worse"] for x in w["windows"]] == [False, True] and w["live_worse"] == 1
    assert w["windows"][0]["live_ndcg@10"] == 1.0 and w["windows"][1]["popularity_ndcg@10"] == 0.5


def test_gate_summary_counts_served_versions_the_gate_later_demoted(cli):
    status = {"trainer": {"gate": {"enabled": True, "live_version": 9, "promoted": 5, "rejected": 3, "demoted": 1,
                                   "demoted_versions": [{"version": 4}], "last_decision": None}}}
    g = cli.gate_summary({"status_final": status}, [0, 0, 2, 4, 4, 9])
    assert g["served_then_found_worse"] == [4] and g["versions_served"] == 3 and g["demoted"] == 1
    assert cli.gate_summary({"status_final": {}}, [1]) is None
