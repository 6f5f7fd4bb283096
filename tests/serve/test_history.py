import math

import pytest
import pyarrow as pa

from increc_ray.serve.history import HISTORY_COLUMNS, UserHistoryIndex


def events(rows):
    return pa.table({
        "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
        "timestamp": pa.array([r[2] * 1000 for r in rows], pa.timestamp("ms", tz="UTC")),
        "label": pa.array([r[3] for r in rows], pa.int8()),
        "weight": pa.array([float(r[3]) for r in rows], pa.float32()),
    })


def test_history_is_time_ordered_and_bounded_and_seen_includes_negatives():
    idx = UserHistoryIndex(history_len=2)
    idx.append(events([("u", "b", 20, 1), ("u", "a", 10, 1), ("u", "c", 30, 1), ("u", "z", 40, 0)]))
    hist, seen = idx.get("u")
    assert hist == ["b", "c"]
    assert seen == ["a", "b", "c", "z"]
    assert idx.get("nobody") == ([], [])


def test_popularity_decays_in_event_time_and_excludes():
    idx = UserHistoryIndex(half_life_s=10)
    # "old" gets 3 events at t=0; "new" gets 2 at t=100 (10 half-lives later): new wins.
    idx.append(events([("u1", "old", 0, 1), ("u2", "old", 0, 1), ("u3", "old", 0, 1),
                       ("u1", "new", 100, 1), ("u2", "new", 100, 1)]))
    assert [i for i, _ in idx.popular(2)] == ["new", "old"]
    assert [i for i, _ in idx.popular(2, exclude=["new"])] == ["old"]


def test_half_life_zero_keeps_all_time_counts():
    idx = UserHistoryIndex(half_life_s=0)
    idx.append(events([("u1", "old", 0, 1), ("u2", "old", 0, 1), ("u3", "old", 0, 1),
                       ("u1", "new", 10**9, 1), ("u2", "new", 10**9, 1)]))
    assert idx.popular(2) == [("old", pytest.approx(math.log(3))), ("new", pytest.approx(math.log(2)))]


def test_popularity_survives_long_spans_without_overflow():
    idx = UserHistoryIndex(half_life_s=1)
    idx.append(events([("u", "a", 0, 1), ("u", "b", 10_000, 1), ("v", "b", 10_001, 1)]))
    top = idx.popular(2)
    assert [i for i, _ in top] == ["b", "a"]
    assert all(s == s for _, s in top)  # no NaN from overflow


def test_appending_is_idempotent_by_dedup_key():
    idx = UserHistoryIndex(half_life_s=0)
    batch = events([("u", "a", 10, 1), ("v", "a", 11, 1)]).append_column("dedup_key", pa.array(["k1", "k2"]))
    assert idx.append(batch) == 2
    assert idx.append(batch.slice(1)) == 0, "the same event handed over again"
    assert idx.get("v")[0] == ["a"] and idx.popular(1) == [("a", pytest.approx(math.log(2)))]
    assert idx.stats()["duplicate_appends"] == 1 and idx.stats()["events"] == 2


def test_a_rebuilt_history_knows_stored_and_acknowledged_but_uncleaned_events_once(tmp_path):
    from increc_ray.config import Config
    from increc_ray.ingest.landing import CleanStore, LandingZone
    from increc_ray.ingest.pipeline import EventPipeline, pending_http_rows
    from increc_ray.ingest.ray_job import clean_files_locally

    cfg = Config.from_dict({"data_dir": str(tmp_path / "data")})
    p = EventPipeline(cfg, clean_files=clean_files_locally)
    live = UserHistoryIndex(half_life_s=0)

    def post(evs):
        _, clean = p.ingest(evs)
        live.append(clean.select(HISTORY_COLUMNS))

    ev = lambda i, u: {"event_id": f"e{i}", "user_id": u, "item_id": f"i{i % 3}", "event_type": "click",
                       "timestamp": 1_767_225_600 + i}
    post([ev(i, "u1") for i in range(4)])
    p.process_pending()
    post([ev(i, "u2") for i in range(4, 7)] + [ev(1, "u1")])  # acknowledged, not cleaned; one retry
    rebuilt = UserHistoryIndex(half_life_s=0)
    rebuilt.rebuild(CleanStore(cfg.clean_dir).read_all(columns=HISTORY_COLUMNS),
                    [t.select(HISTORY_COLUMNS) for _, t in pending_http_rows(LandingZone(cfg.landing_uri), cfg)])
    for user in ("u1", "u2"):
        assert rebuilt.get(user) == live.get(user)
    assert rebuilt.popular(3) == live.popular(3) and rebuilt.stats()["events"] == 7
