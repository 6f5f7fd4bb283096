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


def _keyed(rows, keys):
    return events(rows).append_column("dedup_key", pa.array(keys))


def test_users_and_items_unseen_for_their_ttl_expire_and_state_stays_bounded():
    day = 86400
    idx = UserHistoryIndex(half_life_s=0, user_ttl_s=10 * day, item_ttl_s=20 * day)
    idx.append(_keyed([("old", "gone", 0, 1), ("old", "kept", 0, 1)], ["k0", "k1"]))
    # a steady stream of other users on "kept" for 40 days: "old" and "gone" fall out of it
    for d in range(1, 41):
        idx.append(_keyed([(f"u{d}", "kept", d * day, 1)], [f"k{d + 1}"]))
    assert idx.get("old") == ([], []), "a user unseen for longer than user_ttl_s is forgotten"
    assert [i for i, _ in idx.popular(5)] == ["kept"], "an item unseen for longer than item_ttl_s is forgotten"
    s = idx.stats()
    assert s["users"] <= 11 and s["expired_users"] >= 30, s  # only the last ten days' users are kept
    assert s["expired_items"] == 1 and s["items"] == 1, s
    assert s["dedup_keys"] <= 23, s  # keys of events older than the longest ttl (plus a sweep step) go too
    # a returning user starts afresh; a replayed recent event is still a duplicate
    idx.append(_keyed([("old", "new", 41 * day, 1)], ["k99"]))
    assert idx.get("old") == (["new"], ["new"])
    assert idx.append(_keyed([("u40", "kept", 40 * day, 1)], ["k41"])) == 0


def test_expiry_keeps_recent_users_and_the_ranked_popular_list_exact():
    day = 86400
    idx = UserHistoryIndex(half_life_s=0, user_ttl_s=5 * day, item_ttl_s=5 * day)
    # "hit" is the most popular item but stops at day 0; "steady" goes on
    idx.append(events([(f"a{i}", "hit", 0, 1) for i in range(10)] + [("b", "steady", 0, 1)]))
    for d in range(1, 12):
        idx.append(events([("b", "steady", d * day, 1), (f"c{d}", f"x{d}", d * day, 1)]))
    assert idx.get("b")[0][-1] == "steady" and idx.get("a0") == ([], [])
    top = [i for i, _ in idx.popular(3)]
    assert top[0] == "steady" and "hit" not in top
    n_users, n_items = idx.stats()["users"], idx.stats()["items"]
    assert idx.expire(now=1e12) == {"users": n_users, "items": n_items}
    assert idx.popular(3) == [] and idx.stats()["users"] == 0


def test_without_ttls_nothing_expires():
    idx = UserHistoryIndex(half_life_s=0)
    idx.append(events([("u", "a", 0, 1), ("v", "b", 10**9, 1)]))
    assert idx.get("u")[0] == ["a"] and idx.stats()["expired_users"] == 0
