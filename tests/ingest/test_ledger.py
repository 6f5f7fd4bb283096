"""The event ledger alone: counts stamped into the files they count, rebuilt from them."""

from __future__ import annotations

import pyarrow as pa

from increc_ray.ingest.landing import CleanStore, LandingZone
from increc_ray.ingest.ledger import PASS_KEY, RECEIPT_KEY, EventLedger, read_stamp, stamp


def _zone(tmp_path):
    return LandingZone(str(tmp_path / "landing")), CleanStore(str(tmp_path / "clean")), str(tmp_path / "ledger")


def _rows(n: int) -> pa.Table:
    return pa.table({"user_id": [str(i) for i in range(n)]})


def test_a_stamp_survives_the_write_and_is_read_from_the_footer(tmp_path):
    landing, _, _ = _zone(tmp_path)
    path = landing.write(stamp(_rows(3), RECEIPT_KEY, {"received": 5}))
    assert read_stamp(landing.fs, path, RECEIPT_KEY) == {"received": 5}
    assert read_stamp(landing.fs, path, PASS_KEY) is None
    assert read_stamp(landing.fs, str(tmp_path / "missing.parquet"), RECEIPT_KEY) is None


def _request(ledger, landing, received, accepted, duplicates, rejected):
    receipt = ledger.receipt(received, accepted, duplicates, rejected)
    if not accepted:
        ledger.answered_without_file(receipt)
        return None
    path = landing.write(stamp(_rows(accepted), RECEIPT_KEY, receipt))
    ledger.landed(path, receipt)
    return path


def _clean(ledger, landing, store, files: dict, seq: int):
    """A pass over ``files`` ({path: (applied, duplicates, quarantined)})."""
    record = ledger.pass_record({p: {"applied": a, "duplicates": d, "quarantined": q} for p, (a, d, q) in files.items()})
    applied = sum(a for a, _, _ in files.values())
    if applied:
        store.append(stamp(_rows(applied), PASS_KEY, record), seq)
    ledger.cleaned(record, stamped=bool(applied))
    return record


def test_the_identity_holds_through_ingest_cleaning_and_a_restart(tmp_path):
    landing, store, root = _zone(tmp_path)
    ledger = EventLedger(landing, store, root)
    a = _request(ledger, landing, received=10, accepted=7, duplicates=2, rejected=1)
    _request(ledger, landing, received=4, accepted=0, duplicates=4, rejected=0)  # lands nothing
    b = _request(ledger, landing, received=5, accepted=5, duplicates=0, rejected=0)
    snap = ledger.snapshot()
    assert snap == {"received": 19, "applied": 0, "quarantined": 1, "duplicates": 6, "pending": 12,
                    "applied_twice": 0, "balanced": True}
    _clean(ledger, landing, store, {a: (6, 0, 1)}, seq=0)  # one row fails the re-clean
    landing.mark_processed([a])
    dropped = landing.write(_rows(3), prefix="drop")  # a dropped file: received once read
    _clean(ledger, landing, store, {dropped: (2, 1, 0)}, seq=1)
    landing.mark_processed([dropped])
    snap = ledger.snapshot()
    assert snap["received"] == 22 and snap["applied"] == 8 and snap["pending"] == 5 and snap["balanced"]
    assert EventLedger(landing, store, root).snapshot() == snap  # rebuilt from the files alone
    _clean(ledger, landing, store, {b: (5, 0, 0)}, seq=2)
    landing.mark_processed([b])
    assert ledger.snapshot()["pending"] == 0 and EventLedger(landing, store, root).snapshot() == ledger.snapshot()


def test_a_file_cleaned_twice_after_a_crash_counts_once(tmp_path):
    """The part was written, then the process died before moving the file: the next pass reads it
    again and finds every row a duplicate; the ledger keeps the first pass's counts."""
    landing, store, root = _zone(tmp_path)
    ledger = EventLedger(landing, store, root)
    a = _request(ledger, landing, received=6, accepted=6, duplicates=0, rejected=0)
    _clean(ledger, landing, store, {a: (6, 0, 0)}, seq=0)  # ...crash: `a` is still pending
    restarted = EventLedger(landing, store, root)
    assert restarted.snapshot()["pending"] == 0  # its pass is in the part
    _clean(restarted, landing, store, {a: (0, 6, 0)}, seq=1)  # the re-read: all duplicates, no part
    landing.mark_processed([a])
    for ledger in (restarted, EventLedger(landing, store, root)):
        snap = ledger.snapshot()
        assert (snap["received"], snap["applied"], snap["duplicates"], snap["balanced"]) == (6, 6, 0, True)


def test_a_pass_that_failed_before_its_part_counts_nothing(tmp_path):
    landing, store, root = _zone(tmp_path)
    ledger = EventLedger(landing, store, root)
    _request(ledger, landing, received=3, accepted=3, duplicates=0, rejected=0)
    ledger.pass_record({})  # built, never written: the part's write failed
    assert EventLedger(landing, store, root).snapshot() == ledger.snapshot() == {
        "received": 3, "applied": 0, "quarantined": 0, "duplicates": 0, "pending": 3, "applied_twice": 0,
        "balanced": True}
