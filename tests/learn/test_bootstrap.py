"""Tests for increc_ray.learn.bootstrap (full passes) and the trainer's rules for running one
(``increc_ray.learn.train.full_pass_reason``, ``increc_ray.learn.cursor.StreamCursor``), Ray-free."""

import pytest

from increc_ray.config import BootstrapConfig, Config
from increc_ray.ingest.landing import CleanStore
from increc_ray.learn.bootstrap import Stopped, fit_events
from increc_ray.learn.gate import fresh_targets
from increc_ray.learn.gate import UNKNOWN_ITEM
from increc_ray.learn.learner import IncrementalLearner
from increc_ray.learn.cursor import StreamCursor
from increc_ray.learn.train import full_pass_reason

from test_learner import SMALL, events, planted_rows

CFG = Config.from_dict({
    "model": SMALL.model_dump(),
    "trainer": {"lr": 1e-3, "batch_size": 32, "min_new_events": 50},
    "bootstrap": {"epochs": 8, "eval_every": 2, "patience": 2, "lr": 5e-3, "batch_size": 32,
                  "holdout_fraction": 0.2},
})


def _planted():
    rows = planted_rows(n_users=120, length=15, seed=3)
    return sorted(rows, key=lambda r: r[2])  # arrival order is time order


def test_full_pass_learns_the_planted_structure_holds_out_the_newest_and_hands_over_to_the_trainer():
    rows = _planted()
    table = events(rows)
    epochs_told = []
    learner, report, cut = fit_events(table, CFG, progress=lambda p: epochs_told.append(p))
    n = len(rows)
    assert cut == n - round(0.2 * n) and report["n_train"] == cut and report["n_holdout"] == n - cut
    # it learned only the training part: the held-out rows are the caller's to stream in next
    assert learner.n_events == cut and learner.pending_targets == 0
    assert learner.trainer_cfg == CFG.trainer  # the incremental settings from here on
    assert report["holdout_ndcg@10"] > 2 * report["popularity_ndcg@10"] > 0
    assert report["best_epoch"] in [h["epoch"] for h in report["history"]]
    assert [p["epoch"] for p in epochs_told][:2] == [0, 1] and epochs_told[-1]["epoch"] == report["epochs"]
    assert all(p["eta_s"] >= 0 for p in epochs_told)
    # the best epoch's weights are the ones kept: scoring again gives the reported figure
    from increc_ray.learn.bootstrap import score_holdout
    h, t = fresh_targets(IncrementalLearner.from_state_dict(learner.state_dict()), table.slice(cut), 5000)
    assert score_holdout(learner, h, t, 10)[0] == pytest.approx(report["holdout_ndcg@10"])


def test_patience_stops_a_pass_that_no_longer_improves():
    cfg = Config.from_dict({**CFG.to_dict(), "bootstrap": {**CFG.bootstrap.model_dump(), "epochs": 40,
                                                          "eval_every": 1, "patience": 1, "lr": 0.05}})
    _, report, _ = fit_events(events(_planted()), cfg)
    assert report["stopped_by"] == "patience" and report["epochs"] < 40
    assert report["epochs"] == report["history"][-1]["epoch"] and report["best_epoch"] < report["epochs"]


def test_a_pass_asked_to_stop_raises_between_epochs():
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(Stopped):
        fit_events(events(_planted()), CFG, should_stop=stop)
    assert len(calls) == 3


def test_holdout_histories_include_earlier_held_out_items_and_unknown_items_are_misses():
    learner = IncrementalLearner(SMALL, CFG.trainer)
    learner.observe(events([("u", "a", 1), ("u", "b", 2), ("v", "a", 3)]))
    h, t = fresh_targets(learner, events([("u", "c", 4), ("u", "a", 5), ("w", "a", 6), ("w", "b", 7)]), 100)
    a, b = learner.vocab.lookup(["a", "b"]).tolist()
    # u: [a, b] -> c (unknown: a miss); then [a, b] -> a (c is skipped in histories); w: first is no target
    assert h == [[a, b], [a, b], [a]] and t.tolist() == [UNKNOWN_ITEM, a, b]
    assert len(fresh_targets(learner, events([("u", "a", t) for t in range(10, 30)]), 5)[1]) == 5


@pytest.mark.parametrize("unread, learned, since, expect", [
    (1999, 0, 0, None),  # cold, but fewer than min_events: stream incrementally
    (2000, 0, 0, "cold start"),
    (5000, 6000, 0, None),  # a backlog smaller than what was learned
    (6000, 6000, 0, "backlog"),
    (100, 6000, 30000, "consolidation"),
])
def test_full_pass_rules(unread, learned, since, expect):
    b = BootstrapConfig(min_events=2000, backlog_ratio=1.0, consolidate_every_events=30000)
    reason = full_pass_reason(b, unread, learned, since)
    assert (reason is None) if expect is None else (reason is not None and reason.startswith(expect))
    assert full_pass_reason(BootstrapConfig(min_events=0, consolidate_every_events=0), unread, learned, since) is None


def test_cursor_counts_unread_rows_reads_everything_and_seeks_to_any_row(tmp_path):
    store = CleanStore(str(tmp_path))
    sizes = [3, 0, 5, 2]
    rows = [(f"u{j}", f"i{j}", j) for j in range(sum(sizes))]
    at = 0
    for seq, size in enumerate(sizes):
        store.append(events(rows[at:at + size]), seq)
        at += size
    cur = StreamCursor(store)
    assert cur.unread() == 10
    table, starts = cur.read_all()
    assert table["item_id"].to_pylist() == [r[1] for r in rows] and cur.unread() == 10  # it did not move
    for index in range(10):
        cur.seek(StreamCursor.offset_of(starts, index))
        assert cur.unread() == 10 - index
        piece, _ = cur.next_slice(100)
        assert piece["item_id"][0].as_py() == f"i{index}"  # the same row, whichever part holds it
    assert cur.unread() == 0 and cur.next_slice(4) == (None, None)
    assert StreamCursor(store, 2, 5).unread() == 2
    # a slice spans parts (the empty one included) up to max_rows, and the next one goes on from there
    cur = StreamCursor(store, 0, 1)
    first, _ = cur.next_slice(6)
    assert first["item_id"].to_pylist() == [f"i{j}" for j in range(1, 7)] and cur.offset() == {"seq": 2, "row": 4}
    rest, _ = cur.next_slice(100)
    assert rest["item_id"].to_pylist() == [f"i{j}" for j in range(7, 10)] and cur.unread() == 0


def test_cursor_finds_new_parts_by_name_and_lists_only_to_get_past_a_gap(tmp_path):
    store = CleanStore(str(tmp_path))
    listings = []
    parts = store.parts
    store.parts = lambda after=-1: listings.append(after) or parts(after)
    cur = StreamCursor(store)
    assert cur.next_slice(10) == (None, None) and listings == [-1]  # the first look lists the folder
    for seq in range(3):  # then each look stats the next expected names only
        store.append(events([(f"u{seq}", f"i{seq}", seq)]), seq)
        piece, written = cur.next_slice(10)
        assert piece["item_id"].to_pylist() == [f"i{seq}"] and written is not None
    assert cur.unread() == 0 and listings == [-1]
    store.append(events([("u4", "i4", 4)]), 4)  # part 3 never written: a gap
    assert cur.next_slice(10) == (None, None) and listings == [-1]
    cur.RELIST_S = 0.0  # past the interval without a new part: a listing finds what lies beyond
    piece, _ = cur.next_slice(10)
    assert piece["item_id"].to_pylist() == ["i4"] and listings == [-1, 2]
    cur.seek({"seq": 0, "row": 0})  # back before what it knows: it lists again
    assert cur.unread() == 4 and listings[-1] == -1
