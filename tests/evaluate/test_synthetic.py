"""The synthetic stream: schema, determinism, planted successors, new items, drift."""

from collections import Counter

import pytest

from increc_ray.evaluate.synthetic import EVENT_TYPES, SyntheticStream


def _follow_rate(events, stream):
    """Share of each user's consecutive events where the second is the planted successor of the first."""
    last, follows, pairs = {}, 0, 0
    for e in events:
        prev = last.get(e["user_id"])
        if prev is not None:
            pairs += 1
            follows += stream.successor(prev) == e["item_id"]
        last[e["user_id"]] = e["item_id"]
    return follows / pairs


def _static(**kwargs):
    """A stream with neither new items nor drift, so successors never change."""
    return SyntheticStream(new_item_every=0, drift_every=0, **kwargs)


def test_events_follow_the_event_schema():
    events = SyntheticStream(seed=3).next_events(500)
    for e in events:
        assert set(e) == {"event_id", "user_id", "item_id", "event_type", "timestamp", "value"}
        assert e["user_id"].startswith("u") and e["item_id"].startswith("i")
        assert e["event_type"] in EVENT_TYPES
        assert isinstance(e["timestamp"], float)
        assert e["value"] is None
    counts = Counter(e["event_type"] for e in events)
    assert counts["view"] + counts["click"] > 0.7 * len(events)
    assert counts["purchase"] > 0


def test_same_seed_same_stream_other_seed_other_stream():
    a = SyntheticStream(seed=7).next_events(3000)
    b = SyntheticStream(seed=7).next_events(3000)
    c = SyntheticStream(seed=8).next_events(3000)
    assert a == b
    assert [e["item_id"] for e in a] != [e["item_id"] for e in c]


def test_next_events_continues_the_stream():
    whole = SyntheticStream(seed=1).next_events(1200)
    stream = SyntheticStream(seed=1)
    pieces = stream.next_events(499) + stream.next_events(1) + stream.next_events(700)
    assert pieces == whole
    assert stream.n_events == 1200


def test_ids_unique_and_timestamps_increasing():
    stream = SyntheticStream(start_time=1000.0, seconds_per_event=0.5, seed=2)
    events = stream.next_events(1000) + stream.next_events(1000)
    assert len({e["event_id"] for e in events}) == len(events)
    assert events[0]["event_id"] == "syn-2-0"
    assert events[0]["timestamp"] == 1000.0
    assert events[-1]["timestamp"] == 1000.0 + 1999 * 0.5
    assert all(b["timestamp"] > a["timestamp"] for a, b in zip(events, events[1:]))


def test_successors_form_cycles_within_clusters():
    stream = _static(n_items=100, n_clusters=5)
    items = stream.items
    assert items == [f"i{j}" for j in range(100)]
    assert sorted(stream.successor(i) for i in items) == sorted(items)  # a permutation
    for i in items:
        assert stream.cluster_of(stream.successor(i)) == stream.cluster_of(i)
        assert stream.predecessor(stream.successor(i)) == i
    # Walking the successors from one item visits its whole cluster (one cycle each).
    start = items[0]
    cycle, item = [start], stream.successor(start)
    while item != start:
        cycle.append(item)
        item = stream.successor(item)
    assert len(cycle) == sum(stream.cluster_of(i) == stream.cluster_of(start) for i in items) == 20


def test_planted_successor_followed_at_about_p_follow():
    stream = _static(n_items=100, n_clusters=5, p_follow=0.8, seed=4)
    rate = _follow_rate(stream.next_events(20_000), stream)
    # A random pick from a 20-item cluster hits the successor 1 time in 20.
    assert rate == pytest.approx(0.8 + 0.2 / 20, abs=0.02)


def test_p_follow_bounds():
    always = _static(p_follow=1.0, seed=5)
    assert _follow_rate(always.next_events(2000), always) == 1.0
    never = _static(p_follow=0.0, seed=5)
    assert _follow_rate(never.next_events(5000), never) < 0.1


def test_users_stay_in_their_taste_cluster_without_drift():
    stream = _static(p_follow=0.0, seed=6)
    for e in stream.next_events(2000):
        assert stream.cluster_of(e["item_id"]) == stream.taste_of(e["user_id"])


def test_introduce_item_splices_into_a_chain():
    stream = _static(n_items=30, n_clusters=3, seed=9)
    before = {i: stream.successor(i) for i in stream.items}
    new = stream.introduce_item()
    assert new == "i30"
    assert stream.items[-1] == new and stream.new_items == [new]
    pred = stream.predecessor(new)
    assert stream.successor(pred) == new
    assert stream.successor(new) == before[pred]
    assert stream.predecessor(before[pred]) == new
    assert stream.cluster_of(new) == stream.cluster_of(pred)
    # Every other link is untouched.
    assert all(stream.successor(i) == s for i, s in before.items() if i != pred)


def test_new_items_arrive_during_the_stream_and_get_traffic():
    stream = SyntheticStream(new_item_every=100, drift_every=0, p_follow=0.9, seed=11)
    events = stream.next_events(3000)
    assert stream.new_items == [f"i{100 + j}" for j in range(30)]
    assert stream.items[100:] == stream.new_items
    seen = {e["item_id"] for e in events}
    assert set(stream.new_items[:20]) <= seen  # reached through their planted predecessor
    # After it arrives, a new item is reached by following its predecessor.
    first = stream.new_items[0]
    last, follows = {}, 0
    for e in events[100:]:
        if last.get(e["user_id"]) == stream.predecessor(first):
            follows += e["item_id"] == first
        last[e["user_id"]] = e["item_id"]
    assert follows > 0


def test_tastes_drift():
    stream = SyntheticStream(n_users=200, drift_every=100, new_item_every=0, seed=12)
    tastes = {f"u{j}": stream.taste_of(f"u{j}") for j in range(200)}
    stream.next_events(99)
    assert all(stream.taste_of(u) == c for u, c in tastes.items())
    stream.next_events(1)
    moved = [u for u, c in tastes.items() if stream.taste_of(u) != c]
    assert len(moved) == 20


@pytest.mark.parametrize("kwargs", [
    {"n_users": 0}, {"n_clusters": 0}, {"n_items": 3, "n_clusters": 5}, {"p_follow": 1.5},
    {"new_item_every": -1}, {"drift_every": -1}, {"seconds_per_event": 0.0},
])
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        SyntheticStream(**kwargs)
