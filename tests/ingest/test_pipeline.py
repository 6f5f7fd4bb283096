"""The pipeline's bookkeeping (de-duplication across HTTP, files and restarts) without Ray."""

import json
import os
import shutil

import pyarrow.parquet as pq
import pytest

from increc_ray.config import Config
from increc_ray.ingest.pipeline import EventPipeline
from increc_ray.ingest.ray_job import clean_files_locally

T = 1_767_225_600


def ev(i, user="u1", **kw):
    return {"event_id": f"e{i}", "user_id": user, "item_id": f"i{i}", "event_type": "click", "timestamp": T + i, **kw}


@pytest.fixture
def cfg(tmp_path):
    return Config.from_dict({"data_dir": str(tmp_path / "data")})


def make(cfg):
    return EventPipeline(cfg, clean_files=clean_files_locally)


def test_http_ingest_counts_accepted_duplicates_and_rejected_and_writes_landing(cfg):
    p = make(cfg)
    report, clean = p.ingest([ev(1), ev(1), ev(2), {"user_id": "u1"}])
    assert (report.accepted, report.duplicates, report.rejected_count) == (2, 1, 1)
    assert report.rejected[0]["row"] == 3 and "item_id" in report.rejected[0]["reason"]
    assert clean.column("item_id").to_pylist() == ["i1", "i2"]
    assert pq.read_table(report.landing_file).num_rows == 2  # durable before the answer
    again, _ = p.ingest([ev(2), ev(3)])
    assert (again.accepted, again.duplicates) == (1, 1)
    quarantined = [pq.read_table(os.path.join(cfg.quarantine_dir, f)) for f in os.listdir(cfg.quarantine_dir)]
    assert sum(t.num_rows for t in quarantined) == 1


def test_processing_keeps_http_rows_once_and_reports_only_unseen_rows_as_fresh(cfg):
    p = make(cfg)
    p.ingest([ev(1), ev(2)])
    summary, fresh = p.process_pending()
    assert summary["cleaned"] == 2 and summary["duplicates"] == 0
    assert fresh.num_rows == 0, "rows accepted over HTTP are already in user histories"
    assert p.store.read_all().column("event_id").to_pylist() == ["e1", "e2"]
    assert p.status()["reserved_keys"] == 0 and p.landing.pending() == []


def test_dropped_file_duplicating_a_pending_http_event_is_dropped(cfg):
    p = make(cfg)
    p.ingest([ev(1)])  # accepted, not yet processed
    with open(os.path.join(cfg.landing_uri, "drop.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(e) for e in [ev(1), ev(5), ev(5), "nope"]) + "\n")
    summary, fresh = p.process_pending()
    assert summary["cleaned"] == 2 and summary["duplicates"] == 2 and summary["quarantined"] == 1
    assert sorted(p.store.read_all().column("event_id").to_pylist()) == ["e1", "e5"]
    assert fresh.column("event_id").to_pylist() == ["e5"]


def test_restart_rebuilds_seen_keys_and_reprocessing_applies_nothing_twice(cfg):
    p = make(cfg)
    p.ingest([ev(1), ev(2)])
    p.process_pending()
    # A crash after the clean part was written but before the file was moved away:
    processed = os.path.join(cfg.landing_uri, "_processed")
    for name in os.listdir(processed):
        shutil.copy(os.path.join(processed, name), os.path.join(cfg.landing_uri, "replayed.parquet"))
    restarted = make(cfg)
    summary, _ = restarted.process_pending()
    assert summary["cleaned"] == 0 and summary["duplicates"] == 2
    assert restarted.store.read_all().num_rows == 2
    report, _ = restarted.ingest([ev(2), ev(3)])
    assert (report.accepted, report.duplicates) == (1, 1)


def test_unreadable_file_is_quarantined_whole_with_a_reason(cfg):
    p = make(cfg)
    with open(os.path.join(cfg.landing_uri, "notes.txt"), "w") as f:
        f.write("hello")
    summary, _ = p.process_pending()
    assert summary["quarantined"] == 1 and summary["cleaned"] == 0
    (name,) = os.listdir(cfg.quarantine_dir)
    row = pq.read_table(os.path.join(cfg.quarantine_dir, name)).to_pylist()[0]
    assert row["source"].endswith("notes.txt") and row["reason"].startswith("file:")
    assert p.landing.pending() == []


def balanced(p: EventPipeline) -> dict:
    """The ledger's identity holds, its applied count is the store's rows, and a restarted
    pipeline (rebuilding it from the files alone) reads the same figures."""
    snap = p.ledger.snapshot()
    stored = p.store.read_all()
    assert snap["balanced"], snap
    assert snap["applied"] == (stored.num_rows if stored is not None else 0) and snap["applied_twice"] == 0
    assert make(p.cfg).ledger.snapshot() == snap
    return snap


def drop(cfg, name, events):
    with open(os.path.join(cfg.landing_uri, name), "w") as f:
        f.write("\n".join(json.dumps(e) for e in events) + "\n")


def test_a_failed_clean_write_is_an_error_and_the_retry_loses_nothing_and_doubles_nothing(cfg, monkeypatch):
    p = make(cfg)
    p.ingest([ev(1), ev(2)])
    drop(cfg, "drop.jsonl", [ev(3), ev(1), {"user_id": "u1"}])
    real_append = p.store.append

    def disk_full(table, seq):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(p.store, "append", disk_full)
    with pytest.raises(OSError, match="No space left"):
        p.process_pending()
    assert len(p.landing.pending()) == 2, "nothing is marked done"
    assert p.store.read_all() is None and p.status()["seen_keys"] == 0
    assert p.status()["reserved_keys"] == 2, "the HTTP files still hold their keys"
    assert not os.path.exists(cfg.quarantine_dir) or os.listdir(cfg.quarantine_dir) == []
    again, _ = p.ingest([ev(2)])  # a client's retry while the write is failing
    assert (again.accepted, again.duplicates) == (0, 1)
    assert balanced(p) == {"received": 3, "applied": 0, "quarantined": 0, "duplicates": 1, "pending": 2,
                           "applied_twice": 0, "balanced": True}

    monkeypatch.setattr(p.store, "append", real_append)
    summary, fresh = p.process_pending()
    assert sorted(p.store.read_all().column("event_id").to_pylist()) == ["e1", "e2", "e3"]
    assert [seq for seq, _ in p.store.parts()] == [0], "no gap in the stream offsets"
    assert fresh.column("event_id").to_pylist() == ["e3"]
    assert summary["quarantined"] == 1 and p.landing.pending() == []
    assert p.status()["reserved_keys"] == 0 and p.status()["seen_keys"] == 3
    snap = balanced(p)  # the dropped file's 3 rows: e3 applied, e1 a duplicate, one quarantined
    assert (snap["received"], snap["applied"], snap["duplicates"], snap["quarantined"]) == (6, 3, 2, 1)


def test_a_failure_after_the_part_is_written_rereads_as_duplicates_and_quarantines_once(cfg, monkeypatch):
    p = make(cfg)
    drop(cfg, "drop.jsonl", [ev(1), "nope"])
    real_mark = p.landing.mark_processed
    monkeypatch.setattr(p.landing, "mark_processed", lambda paths: (_ for _ in ()).throw(PermissionError("denied")))
    with pytest.raises(PermissionError):
        p.process_pending()
    monkeypatch.setattr(p.landing, "mark_processed", real_mark)
    summary, fresh = p.process_pending()
    assert summary["cleaned"] == 0 and summary["duplicates"] == 1 and fresh.num_rows == 0
    assert p.store.read_all().column("event_id").to_pylist() == ["e1"]
    quarantined = [pq.read_table(os.path.join(cfg.quarantine_dir, f)) for f in os.listdir(cfg.quarantine_dir)]
    assert sum(t.num_rows for t in quarantined) == 1, "the re-read overwrote the file's quarantine"
    snap = balanced(p)  # counted by its first pass: 1 applied, 1 quarantined, no duplicate
    assert (snap["received"], snap["applied"], snap["duplicates"], snap["quarantined"]) == (2, 1, 0, 1)


def test_the_same_event_in_two_dropped_files_of_one_pass_is_kept_once(cfg):
    p = make(cfg)
    drop(cfg, "a.jsonl", [ev(5), ev(6)])
    drop(cfg, "b.jsonl", [ev(5)])
    summary, fresh = p.process_pending()
    assert sorted(p.store.read_all().column("event_id").to_pylist()) == ["e5", "e6"]
    assert summary["duplicates"] == 1 and sorted(fresh.column("event_id").to_pylist()) == ["e5", "e6"]


def test_a_restart_keeps_pending_http_files_reserved_so_retries_are_duplicates(cfg):
    p = make(cfg)
    p.ingest([ev(1), ev(2)])  # acknowledged, not cleaned yet: then the replica dies
    restarted = make(cfg)
    assert restarted.status()["reserved_keys"] == 2
    report, _ = restarted.ingest([ev(2), ev(3)])
    assert (report.accepted, report.duplicates) == (1, 1)
    summary, fresh = restarted.process_pending()
    assert sorted(restarted.store.read_all().column("event_id").to_pylist()) == ["e1", "e2", "e3"]
    assert fresh.num_rows == 0, "HTTP rows reach user histories at ingest (or when a history rebuilds)"


def test_the_ledger_accounts_for_every_event_through_refusals_failures_and_restarts(cfg, monkeypatch):
    """received = applied + quarantined + duplicates + pending after every step, durably."""
    p = make(cfg)
    p.ingest([ev(1), ev(2), {"user_id": "u1", "item_id": "x"}])  # one without a timestamp
    p.ingest([ev(1), ev(2)])  # a retry: all duplicates, no landing file
    assert balanced(p)["pending"] == 2
    monkeypatch.setattr(p.landing, "write_to", lambda path, table: (_ for _ in ()).throw(OSError(13, "denied")))
    with pytest.raises(OSError):
        p.ingest([ev(3)])  # not acknowledged: nothing counted, nothing reserved
    monkeypatch.undo()
    p.ingest([ev(3)])
    drop(cfg, "drop.jsonl", [ev(4), ev(1)])
    p.process_pending()
    snap = balanced(p)
    # 6 posted (2 + 1 duplicates, 1 refused), 2 dropped (e4 new, e1 a duplicate); the failed post: none
    assert snap == {"received": 8, "applied": 4, "quarantined": 1, "duplicates": 3, "pending": 0,
                    "applied_twice": 0, "balanced": True}
    assert p.status()["ledger"] == snap


def test_a_small_pass_is_cleaned_inline_and_a_large_one_by_the_job(tmp_path):
    """``ingest.inline_clean_max_bytes``: the injected job (here a spy around the local cleaner)
    runs only for passes over the bound; both give the same rows and bookkeeping."""
    cfg = Config.from_dict({"data_dir": str(tmp_path), "ingest": {"inline_clean_max_bytes": 4096}})
    calls = []

    def job(files, fs, c):
        calls.append(len(files))
        return clean_files_locally(files, fs, c)

    p = EventPipeline(cfg, clean_files=job)
    p.ingest([ev(1)])
    assert p.process_pending()[0]["cleaned_by"] == "inline" and calls == []
    p.ingest([ev(i, item_pad="x" * 100) for i in range(2, 102)])
    summary, _ = p.process_pending()
    assert summary["cleaned_by"] == "ray_data" and calls == [1] and summary["cleaned"] == 100
    assert (p.status()["passes_inline"], p.status()["passes_ray_data"]) == (1, 1)
    balanced(p)
