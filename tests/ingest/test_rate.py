"""The stateful cleaning rules (per-user rate, id cardinality), alone and in the pipeline, without Ray."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from increc_ray.config import CleaningConfig, Config
from increc_ray.ingest.clean import clean_batch
from increc_ray.ingest.loaders import load_movielens
from increc_ray.ingest.pipeline import EventPipeline
from increc_ray.ingest.rate import Admission, IdCardinality, RateLimiter
from increc_ray.ingest.ray_job import clean_files_locally

from conftest import SHARED_DATA

T = 1_767_225_600
S = 1000  # ms


# ---- RateLimiter ------------------------------------------------------------------------------

def test_the_window_slides_with_event_time_and_refused_events_are_not_recorded():
    r = RateLimiter(max_per_minute=3, max_users_tracked=10)
    assert r.check(["u"] * 4, [0, 1 * S, 2 * S, 3 * S]) == [True, True, True, False]
    # 60.5 s: the event at 0 is a minute away, 1 s and 2 s are not; the refused 3 s left no trace
    assert r.check(["u"] * 3, [60_500, 60_600, 61_500]) == [True, False, True]
    assert r.check(["u"], [2 * S + 120 * S]) == [True]  # long after: all forgotten


def test_one_minute_apart_is_outside_the_window_and_users_are_counted_apart():
    r = RateLimiter(max_per_minute=1, max_users_tracked=10)
    assert r.check(["bot", "bot", "ann", "bot"], [0, 59_999, 30 * S, 60 * S]) == [True, False, True, True]


def test_events_arriving_out_of_event_time_order_are_counted_too():
    r = RateLimiter(max_per_minute=2, max_users_tracked=10)
    assert r.check(["bot"] * 4, [10 * S, 9 * S, 8 * S, 11 * S]) == [True, True, False, False]


def test_the_least_recently_seen_user_is_forgotten_past_max_users_tracked():
    r = RateLimiter(max_per_minute=1, max_users_tracked=2)
    assert r.check(["u1", "u2", "u1", "u3"], [0, 0, 0, 0]) == [True, True, False, True]
    assert len(r) == 2
    assert r.check(["u1", "u2"], [0, 0]) == [False, True], "u1 was seen last, u2 was forgotten"
    assert len(r) == 2


def test_a_disabled_rate_allows_everything_and_keeps_nothing():
    r = RateLimiter(max_per_minute=None, max_users_tracked=1)
    assert r.check(["bot"] * 5000, [0] * 5000) == [True] * 5000
    r.seed(["bot"], [0])
    assert len(r) == 0


def test_forget_and_seed():
    r = RateLimiter(max_per_minute=2, max_users_tracked=10)
    assert r.check(["u", "u"], [0, 0]) == [True, True]
    r.forget(["u", "u", "x"], [0, 5 * S, 0])  # one of the two; unknown ones are no error
    assert r.check(["u", "u"], [0, 0]) == [True, False]
    r = RateLimiter(max_per_minute=2, max_users_tracked=10)
    r.seed(["u"] * 3, [200 * S, 0, 199 * S])  # any order
    assert r.check(["u", "v"], [201 * S, 201 * S]) == [False, True]
    assert r.check(["u"], [261 * S]) == [True], "the seeded 200 s is a minute away now"


# ---- IdCardinality ----------------------------------------------------------------------------

def test_a_new_id_past_the_limit_is_refused_naming_the_setting_and_known_ids_pass():
    c = IdCardinality(max_users=2, max_items=None)
    assert c.check(["a", "b", "c", "a", "b"], ["i1", "i2", "i3", "i4", "i5"]) == [
        None, None, "cardinality: user_id 'c' would exceed cleaning.max_users=2", None, None]
    assert set(c.users) == {"a", "b"} and c.items is None


def test_both_limits_name_both_ids_and_a_refused_event_adds_neither():
    c = IdCardinality(max_users=1, max_items=1)
    assert c.check(["u1", "u2", "u1"], ["i1", "i2", "i1"]) == [
        None, "cardinality: user_id 'u2' would exceed cleaning.max_users=1; "
              "cardinality: item_id 'i2' would exceed cleaning.max_items=1", None]
    assert (set(c.users), set(c.items)) == ({"u1"}, {"i1"})


def test_seeded_ids_are_all_known_even_past_the_limit():
    c = IdCardinality(max_users=2, max_items=10)
    c.seed(["a", "b", "c"], ["i"])
    assert c.check(["c", "a", "d"], ["i", "i", "i"]) == [
        None, None, "cardinality: user_id 'd' would exceed cleaning.max_users=2"]


def test_no_limit_passes_everything_and_keeps_no_set():
    c = IdCardinality(max_users=None, max_items=None)
    assert c.check([f"u{i}" for i in range(100)], ["i"] * 100) == [None] * 100
    assert c.users is None and c.items is None


def test_an_event_refused_by_the_rate_adds_no_id():
    rules = Admission(CleaningConfig(rate_limit_per_minute=1, max_items=10))
    events = pa.table({"user_id": ["bot"] * 3, "item_id": ["i1", "i2", "i3"],
                       "timestamp": pa.array([T * S] * 3, pa.timestamp("ms", tz="UTC"))})
    assert rules.check(events, [True, True, False]) == [
        None, "rate: user 'bot' has more than 1 events in 60 s (cleaning.rate_limit_per_minute)", None]
    assert rules.status() == {"rate_users_tracked": 1, "known_users": 1, "known_items": 1, "retention_horizon": None}


# ---- in the pipeline --------------------------------------------------------------------------

def ev(i, user="bot", t=None):
    return {"event_id": f"{user}-{i}", "user_id": user, "item_id": f"i{i}", "event_type": "click",
            "timestamp": T + i if t is None else t}


def make(tmp_path, **cleaning):
    return EventPipeline(Config.from_dict({"data_dir": str(tmp_path / "data"), "cleaning": cleaning}),
                         clean_files=clean_files_locally)


def quarantined(p):
    d = p.cfg.quarantine_dir
    return pa.concat_tables([pq.read_table(os.path.join(d, f)) for f in sorted(os.listdir(d))]).to_pylist()


BOT_REASON = "rate: user 'bot' has more than 10 events in 60 s (cleaning.rate_limit_per_minute)"


def bot_and_ann():
    """50 bot events in 50 s (5x the limit of 10), with 3 of ann's among them."""
    events = [ev(i) for i in range(50)]
    for n, at in enumerate((0, 20, 40)):
        events.insert(at + n, ev(n, user="ann"))
    return events


def test_http_bot_over_the_rate_is_quarantined_and_a_normal_user_in_the_same_request_is_accepted(tmp_path):
    p = make(tmp_path, rate_limit_per_minute=10)
    events = bot_and_ann()
    report, clean = p.ingest(events)
    assert (report.accepted, report.duplicates, report.rejected_count) == (13, 0, 40)
    assert {r["reason"] for r in report.rejected} == {BOT_REASON}
    bot_rows = [i for i, e in enumerate(events) if e["user_id"] == "bot"]
    assert [r["row"] for r in report.rejected] == bot_rows[10:], "the first 10 in request order pass"
    assert sorted(clean.column("user_id").to_pylist()) == ["ann"] * 3 + ["bot"] * 10
    assert pq.read_table(report.landing_file).num_rows == 13
    q = quarantined(p)
    assert len(q) == 40 and q[0]["source"] == "http" and json.loads(q[0]["raw"]) == events[bot_rows[10]]
    assert (p.status()["rate_limited"], p.status()["quarantined"], p.status()["reserved_keys"]) == (40, 40, 13)
    # The accepted ones resent are duplicates, not more events; a refused one resent is refused again.
    again, _ = p.ingest(events[:5] + [ev(49)])
    assert (again.accepted, again.duplicates, again.rejected_count) == (0, 5, 1)
    # A minute later the bot may post again; rows accepted over HTTP are not judged twice by the pass.
    later, _ = p.ingest([ev(i, t=T + 200 + i) for i in range(100, 112)])
    assert (later.accepted, later.rejected_count) == (10, 2)
    summary, _ = p.process_pending()
    assert (summary["cleaned"], summary["quarantined"]) == (23, 0)


def test_a_dropped_file_with_a_bot_is_refused_in_the_pass_and_its_keys_stay_unseen(tmp_path):
    p = make(tmp_path, rate_limit_per_minute=10)
    events = bot_and_ann()
    with open(os.path.join(p.cfg.landing_uri, "drop.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(e) for e in events + [ev(0), "nope"]) + "\n")  # + a duplicate, a bad line
    summary, fresh = p.process_pending()
    assert (summary["cleaned"], summary["quarantined"], summary["duplicates"]) == (13, 41, 1)
    assert sorted(fresh.column("user_id").to_pylist()) == ["ann"] * 3 + ["bot"] * 10
    assert p.store.read_all().num_rows == 13
    q = quarantined(p)
    refused = [r for r in q if r["reason"].startswith("rate")]
    assert len(refused) == 40 and {r["reason"] for r in refused} == {BOT_REASON}
    assert sorted(r["row"] for r in refused) == [i for i, e in enumerate(events) if e["user_id"] == "bot"][10:]
    assert json.loads(refused[0]["raw"])["user_id"] == "bot" and refused[0]["source"].endswith("drop.jsonl")
    status = p.status()
    assert (status["rate_limited"], status["seen_keys"], status["reserved_keys"]) == (40, 13, 0)


def test_a_failed_pass_does_not_count_its_events_against_the_rate(tmp_path, monkeypatch):
    p = make(tmp_path, rate_limit_per_minute=10)
    with open(os.path.join(p.cfg.landing_uri, "drop.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(ev(i)) for i in range(30)) + "\n")
    real_append = p.store.append
    monkeypatch.setattr(p.store, "append", lambda table, seq: (_ for _ in ()).throw(OSError(28, "disk full")))
    with pytest.raises(OSError):
        p.process_pending()
    assert p.status()["rate_limited"] == 0
    monkeypatch.setattr(p.store, "append", real_append)
    summary, _ = p.process_pending()
    assert (summary["cleaned"], summary["quarantined"]) == (10, 20)
    assert p.status()["rate_limited"] == 20


def test_a_failed_landing_write_does_not_count_its_events_against_the_rate(tmp_path, monkeypatch):
    p = make(tmp_path, rate_limit_per_minute=10)
    real_write = p.landing.write_to
    monkeypatch.setattr(p.landing, "write_to", lambda path, table: (_ for _ in ()).throw(OSError(28, "disk full")))
    with pytest.raises(OSError):
        p.ingest([ev(i) for i in range(10)])
    monkeypatch.setattr(p.landing, "write_to", real_write)
    report, _ = p.ingest([ev(i) for i in range(10)])  # the client's retry
    assert (report.accepted, report.rejected_count) == (10, 0)


def test_a_new_id_past_the_cardinality_is_refused_with_a_clear_reason(tmp_path):
    p = make(tmp_path, max_users=2, max_items=3)
    report, _ = p.ingest([ev(1, user="a"), ev(2, user="b"), ev(3, user="c"), ev(4, user="a"), ev(5, user="b")])
    assert (report.accepted, report.rejected_count) == (3, 2)
    assert report.rejected == [  # c's refused event did not take the last item place
        {"row": 2, "reason": "cardinality: user_id 'c' would exceed cleaning.max_users=2"},
        {"row": 4, "reason": "cardinality: item_id 'i5' would exceed cleaning.max_items=3"}]
    status = p.status()
    assert (status["cardinality_refused"], status["known_users"], status["known_items"]) == (2, 2, 3)


def test_the_state_is_rebuilt_from_the_clean_store_and_pending_http_files(tmp_path):
    p = make(tmp_path, rate_limit_per_minute=10)
    assert p.ingest([ev(i) for i in range(5)] + [ev(0, user="a"), ev(0, user="b"), ev(0, user="c")])[0].accepted == 8
    p.process_pending()  # into the clean store
    assert p.ingest([ev(i) for i in range(5, 10)])[0].accepted == 5  # acknowledged, still pending
    restarted = make(tmp_path, rate_limit_per_minute=10, max_users=2)
    status = restarted.status()
    assert (status["known_users"], status["rate_users_tracked"], status["reserved_keys"]) == (4, 4, 5)
    report, _ = restarted.ingest([ev(10), ev(1, user="c"), ev(0, user="d")])
    assert [r["reason"] for r in report.rejected] == [
        BOT_REASON, "cardinality: user_id 'd' would exceed cleaning.max_users=2"]
    assert report.accepted == 1, "c is in the store: known, though past the limit"


# ---- MovieLens: the default rate flags nothing --------------------------------------------------

@pytest.mark.parametrize("name, peak", [("ml-100k/u.data", 30), ("ml-latest-small/ratings.csv", 392)])
def test_the_default_rate_flags_no_movielens_event_and_the_measured_peak_is_exact(name, peak):
    path = os.path.join(SHARED_DATA, name)
    if not os.path.exists(path):
        pytest.skip(f"{path} not found")
    clean = clean_batch(load_movielens(path), CleaningConfig(), "ml").clean
    users = clean.column("user_id").to_pylist()
    ts = clean.column("timestamp").cast(pa.int64()).to_pylist()
    default = CleaningConfig().rate_limit_per_minute
    assert default >= 2 * peak
    assert RateLimiter(default, 1_000_000).check(users, ts).count(False) == 0, "in file order"
    # The peak (most events of one user within 60 s) is what the limiter sees in time order:
    order = sorted(range(len(ts)), key=ts.__getitem__)
    in_time = [users[i] for i in order], [ts[i] for i in order]
    assert RateLimiter(peak, 1_000_000).check(*in_time).count(False) == 0
    assert RateLimiter(peak - 1, 1_000_000).check(*in_time).count(False) > 0
