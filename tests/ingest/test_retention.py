"""Retention (``ingest.retention_s``): old parts, landing files, ledger and quarantine files are
pruned, the ledger still balances across restarts, and nothing pruned can be accepted again."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from increc_ray.config import Config
from increc_ray.errors import ConfigError
from increc_ray.ingest.ledger import EventLedger
from increc_ray.ingest.pipeline import EventPipeline
from increc_ray.ingest.ray_job import clean_files_locally

DAY = 86_400
T = 1_767_225_600


def ev(i, day, user="u1", **kw):
    return {"event_id": f"e{i}", "user_id": user, "item_id": f"i{i}", "event_type": "click",
            "timestamp": T + day * DAY + i, **kw}


@pytest.fixture
def cfg(tmp_path):
    return Config.from_dict({"data_dir": str(tmp_path / "data"),
                             "ingest": {"retention_s": 10 * DAY},
                             "serving": {"user_ttl_s": 10 * DAY, "item_ttl_s": 10 * DAY}})


def make(cfg):
    return EventPipeline(cfg, clean_files=clean_files_locally)


def files(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if not n.startswith("_")) if os.path.isdir(folder) else []


def stream(p, days, per_day=3, bad=True):
    """``per_day`` events a day over HTTP, each day cleaned into its own part, with a refused
    event and a duplicate a day (so quarantine files and duplicate counts exist too)."""
    n = 0
    for day in days:
        batch = [ev(n + k, day, user=f"u{day}") for k in range(per_day)]
        n += per_day
        p.ingest(batch + [batch[0]] + ([{"user_id": "x"}] if bad else []))
        p.process_pending()
    return n


def totals(p):
    snap = p.ledger.snapshot()
    assert snap["balanced"], snap
    return snap


def test_prune_takes_old_parts_behind_the_trainer_and_keeps_the_ledger_balanced_across_a_restart(cfg):
    p = make(cfg)
    stream(p, range(0, 30, 2))  # 15 parts over 30 days
    before = totals(p)
    assert p.prune()["parts"] == 0, "nothing is pruned before the trainer has checkpointed an offset"
    p.store.write_consumed({"seq": 10, "row": 0})
    out = p.prune()
    # horizon: the newest event (day 28, second 44) minus 10 days: the parts of days 0..18 are all
    # older, but the trainer has read only up to part 10: parts 0..9 go
    assert out["parts"] == 10 and out["landing_files"] == 10 and out["keys"] == 30
    assert [s for s, _ in p.store.parts()] == list(range(10, 15))
    assert len(files(os.path.join(cfg.landing_uri, "_processed"))) == 5
    assert [n for n in files(cfg.ledger_dir) if n.startswith("compacted-")] == files(cfg.ledger_dir)
    after = totals(p)
    assert after == before, "pruning moves counts into the ledger, it does not change them"
    assert make(cfg).ledger.snapshot() == before  # rebuilt from the compacted file and what is left
    assert p.status()["pruned"]["parts"] == 10 and p.status()["seen_keys"] == 5 * 3
    assert p.prune()["parts"] == 0  # nothing more is old enough
    p.store.write_consumed({"seq": 14, "row": 0})
    assert p.prune()["parts"] == 0, "the newer parts are inside the retention (the day-18 part was not yet)"


def test_the_trainer_offset_and_the_newest_part_bound_what_is_pruned(cfg):
    p = make(cfg)
    stream(p, range(0, 30, 2))
    p.store.write_consumed({"seq": 3, "row": 5})  # part 3 is being read: only 0..2 may go
    assert p.prune()["parts"] == 3
    assert p.store.parts()[0][0] == 3


def test_an_event_older_than_the_retention_is_quarantined_not_applied_again(cfg):
    p = make(cfg)
    stream(p, range(0, 30, 2))
    p.store.write_consumed({"seq": 14, "row": 0})
    p.prune()
    old = ev(0, 0, user="u0")  # a client's retry of a pruned event
    report, _ = p.ingest([old, ev(100, 27)])
    assert (report.accepted, report.rejected_count) == (1, 1)
    assert report.rejected[0]["reason"].startswith("retention: ") and "ingest.retention_s" in report.rejected[0]["reason"]
    assert p.status()["too_old"] == 1
    totals(p)


def test_a_dropped_file_is_judged_against_the_horizon_before_it_not_its_own_newest_row(cfg):
    """A file spanning more than the retention (a backfill) keeps its own old rows."""
    p = make(cfg)
    with open(os.path.join(cfg.landing_uri, "backfill.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(ev(i, 3 * i)) for i in range(10)) + "\n")
    summary, _ = p.process_pending()
    assert summary["cleaned"] == 10 and summary["quarantined"] == 0


def interrupted_prune(cfg, monkeypatch, error: BaseException):
    """(pipeline, ledger totals before): a prune over 30 days of parts raised ``error`` once it had
    written its compacted file, before it deleted what that covers (its first call of
    ``finish_compaction`` ends an earlier round: there is none)."""
    p = make(cfg)
    stream(p, range(0, 30, 2))
    before = totals(p)
    p.store.write_consumed({"seq": 10, "row": 0})
    real, calls = EventLedger.finish_compaction, []

    def interrupted(self):
        calls.append(1)
        if len(calls) > 1:
            raise error
        real(self)

    monkeypatch.setattr(EventLedger, "finish_compaction", interrupted)
    with pytest.raises(type(error)):
        p.prune()
    monkeypatch.undo()
    return p, before


def test_a_prune_cut_short_after_its_ledger_write_is_finished_by_the_next_start(cfg, monkeypatch):
    p, before = interrupted_prune(cfg, monkeypatch, KeyboardInterrupt("killed"))
    assert len(p.store.parts()) == 15
    for _, path in p.store.parts()[:2]:  # ...or a little later, two parts deleted
        os.remove(path)
    restarted = make(cfg)
    assert [s for s, _ in restarted.store.parts()] == list(range(10, 15)), "the start ends the round"
    assert restarted.ledger.snapshot() == before
    assert len(files(os.path.join(cfg.landing_uri, "_processed"))) == 5
    assert restarted.status()["seen_keys"] == 15


def test_a_prune_whose_deletes_failed_ends_that_round_before_it_chooses_again(cfg, monkeypatch):
    """In a live process: the next prune deletes the last round's files; it never folds them twice."""
    p, before = interrupted_prune(cfg, monkeypatch, OSError("disk"))
    assert p.prune()["parts"] == 0 and len(p.store.parts()) == 5
    assert totals(p) == before and make(cfg).ledger.snapshot() == before


def test_a_landing_file_counted_by_two_passes_is_pruned_only_with_both(cfg):
    """A crash between a part's write and the file's move: the re-read's record names the file too;
    the first part cannot go while the second record stays."""
    p = make(cfg)
    stream(p, [0])
    processed = os.path.join(cfg.landing_uri, "_processed")
    (name,) = files(processed)
    shutil.copy(os.path.join(processed, name), os.path.join(cfg.landing_uri, name))  # pending again
    os.remove(os.path.join(processed, name))
    p = make(cfg)
    p.process_pending()  # all duplicates: a pass record under ledger/, naming the same file
    stream(p, range(20, 30, 2))
    before = totals(p)
    p.store.write_consumed({"seq": 5, "row": 0})
    out = p.prune()
    assert out["parts"] == 1 and out["landing_files"] == 1 and out["ledger_files"] >= 1, out
    assert totals(p) == before and make(cfg).ledger.snapshot() == before


def test_quarantine_files_of_pruned_events_go_too(cfg):
    p = make(cfg)
    stream(p, range(0, 30, 2))
    assert len(files(cfg.quarantine_dir)) == 15
    p.store.write_consumed({"seq": 10, "row": 0})
    assert p.prune()["quarantine_files"] == 10
    assert len(files(cfg.quarantine_dir)) == 5


def test_known_ids_expire_with_their_events(tmp_path):
    cfg = Config.from_dict({"data_dir": str(tmp_path), "ingest": {"retention_s": 10 * DAY},
                            "serving": {"user_ttl_s": DAY, "item_ttl_s": DAY},
                            "cleaning": {"max_users": 1000}})
    p = make(cfg)
    stream(p, range(0, 30, 2))
    assert p.status()["known_users"] == 15
    p.store.write_consumed({"seq": 14, "row": 0})
    p.prune()
    assert p.status()["known_users"] == 5 and make(cfg).status()["known_users"] == 5  # u20..u28


def test_retention_shorter_than_what_serving_keeps_is_a_config_error():
    with pytest.raises(ConfigError, match="ingest.retention_s"):
        Config.from_dict({"ingest": {"retention_s": DAY}})  # serving keeps 90 days by default
