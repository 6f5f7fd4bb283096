"""The read-your-writes core of replica-local user history (increc_ray.serve.sync), Ray-free:
the change log's retention and epochs, the leases, and a simulated copy that follows the log."""

import heapq
import math
import pickle
import random

import pyarrow as pa
import pytest

from increc_ray.serve.history import TOP_CACHE, UserHistoryIndex
from increc_ray.serve.sync import ChangeLog, Leases, Snapshots


def rows(*pairs, t0=1000):
    return pa.table({"user_id": [u for u, _ in pairs], "item_id": [i for _, i in pairs],
                     "timestamp": pa.array([(t0 + n) * 1000 for n in range(len(pairs))], pa.timestamp("ms", tz="UTC")),
                     "label": pa.array([1] * len(pairs), pa.int8()),
                     "weight": pa.array([1.0] * len(pairs), pa.float32()),
                     "dedup_key": [f"{u}/{i}/{t0 + n}" for n, (u, i) in enumerate(pairs)]})


def test_the_log_answers_deltas_and_asks_for_a_snapshot_when_it_cannot():
    log = ChangeLog(retain_rows=3)
    assert log.since(None, 0) is None, "a new copy starts from a snapshot"
    assert log.since(log.epoch, 0) == []
    s1 = log.add(rows(("u", "a")))
    s2 = log.add(rows(("u", "b"), ("v", "c")))
    assert (s1, s2) == (1, 2)
    assert [t.num_rows for t in log.since(log.epoch, 0)] == [1, 2]
    assert [t.num_rows for t in log.since(log.epoch, 1)] == [2]
    log.add(rows(("w", "d"), ("w", "e")))  # 5 rows kept > 3: the first entries go
    assert log.since(log.epoch, 0) is None and log.since(log.epoch, 1) is None, "entries it needs are gone"
    assert [t.num_rows for t in log.since(log.epoch, 2)] == [2]
    assert log.since("another-epoch", 3) is None, "the history replica restarted"
    assert log.since(log.epoch, 9) is None, "a seq from the future is another epoch's"


def test_a_write_waits_for_live_copies_only_until_their_lease_runs_out():
    now = [0.0]
    leases = Leases(lease_s=3.0, clock=lambda: now[0])
    leases.ack("a", 0)
    leases.ack("b", 0)
    assert set(leases.behind(1)) == {"a", "b"}
    leases.ack("a", 1)
    assert set(leases.behind(1)) == {"b"} and leases.behind(1)["b"] == pytest.approx(3.0)
    now[0] = 2.9
    assert set(leases.behind(1)) == {"b"}
    now[0] = 3.1  # b stopped polling: it no longer holds writes up
    assert leases.behind(1) == {} and leases.expired == 2  # a too: its last poll was at 0
    leases.ack("b", 0)  # b is back, behind: it holds writes up again until it catches up
    assert set(leases.behind(1)) == {"b"} and leases.live() == 1


def test_a_copy_following_the_log_answers_like_the_index_it_copies():
    """Random appends (with replayed duplicates), a copy polling at random moments, snapshots
    after restarts of the log: at every ack the copy equals the source."""
    rng = random.Random(4)
    source = UserHistoryIndex(history_len=5, half_life_s=0)
    log = ChangeLog(retain_rows=40)
    copy, epoch, seq = None, None, 0
    sent = []
    for step in range(300):
        if rng.random() < 0.6:
            batch = rows(*[(f"u{rng.randrange(20)}", f"i{rng.randrange(50)}") for _ in range(rng.randrange(1, 6))],
                         t0=step * 10)
            if sent and rng.random() < 0.2:
                batch = sent[rng.randrange(len(sent))]  # an event handed over twice
            sent.append(batch)
            added = source.append_new(batch)
            if added.num_rows:
                log.add(added)
        if rng.random() < 0.02:
            log = ChangeLog(retain_rows=40)  # the history replica restarted: a new epoch
        if rng.random() < 0.5:  # the copy polls
            delta = log.since(epoch, seq)
            if delta is None:
                copy = pickle.loads(pickle.dumps(source))
            else:
                for t in delta:
                    copy.append(t)
            epoch, seq = log.epoch, log.seq
            for u in (f"u{i}" for i in range(20)):
                assert copy.get(u) == source.get(u)
            assert copy.popular(10) == source.popular(10)


def test_copies_starting_later_share_one_snapshot_and_replay_the_log_from_it():
    now = [0.0]
    source, log = UserHistoryIndex(history_len=5, half_life_s=0), ChangeLog(retain_rows=5)
    snaps = Snapshots(max_age_s=60, clock=lambda: now[0])

    def write(*pairs, t0):
        log.add(source.append_new(rows(*pairs, t0=t0)))

    def start_copy():  # what a new Recommender replica does with UserHistory.follow's snapshot answer
        data, since = snaps.get(log, lambda: pickle.dumps(source))
        copy = pickle.loads(data)
        for t in since:
            copy.append(t)
        assert all(copy.get(u) == source.get(u) for u in ("u", "v", "w")) and copy.popular(5) == source.popular(5)

    write(("u", "a"), t0=0)
    start_copy()
    write(("v", "b"), ("u", "c"), t0=10)
    now[0] = 30.0
    start_copy()  # the first snapshot, and the 2 rows since it
    assert (snaps.made, snaps.reused) == (1, 1)
    write(("w", "d"), ("w", "e"), ("v", "f"), ("u", "g"), t0=20)  # the log no longer holds what followed it
    start_copy()
    assert (snaps.made, snaps.reused) == (2, 1)
    now[0] = 95.0  # older than max_age_s: made anew even though the log still covers it
    start_copy()
    assert (snaps.made, snaps.reused) == (3, 1)


def test_the_ranked_popular_list_matches_a_full_scan():
    rng = random.Random(1)
    idx = UserHistoryIndex(half_life_s=50.0)
    n_items = TOP_CACHE * 3
    for step in range(60):
        idx.append(rows(*[(f"u{rng.randrange(100)}", f"i{int(rng.paretovariate(0.8)) % n_items if rng.random() < 0.5 else rng.randrange(n_items)}") for _ in range(200)],
                        t0=step * 200))
        exclude = {f"i{rng.randrange(40)}" for _ in range(rng.randrange(30))}
        full = heapq.nlargest(50 + len(exclude), idx._pop.items(), key=lambda kv: (kv[1], kv[0]))
        want = [(i, math.log(s)) for i, s in full if i not in exclude][:50]
        got = idx.popular(50, exclude)
        assert [i for i, _ in got] == [i for i, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want])
    # excluding more than the ranked list holds: the full scan answers
    ranked = [i for i, _ in idx.popular(TOP_CACHE)]
    assert len(ranked) == TOP_CACHE
    assert len(idx.popular(5, ranked)) == 5 and not set(i for i, _ in idx.popular(5, ranked)) & set(ranked)
