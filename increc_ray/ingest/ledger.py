"""The event ledger: durable counts that prove every acknowledged event is accounted for.

    received = applied + quarantined + duplicates + pending

received     events of the ``POST /events`` requests the pipeline answered (and of those it
             landed but could not answer: a crash right after the write), plus the rows of a
             dropped landing file once a pass has read it
applied      rows written to the clean store, the trainer's input
quarantined  rows refused with a reason, at HTTP ingest or in a cleaning pass
duplicates   rows dropped as repeats of an event already accepted
pending      events accepted over HTTP whose landing file is not cleaned yet
applied_twice  clean-store rows whose ``dedup_key`` an earlier row has (goal 0), counted apart

Each count is written in the same atomic file write as the rows it counts, so no crash leaves
a count without its rows or rows without their count:

* a request's receipt ``{received, accepted, duplicates, rejected}`` is in the schema metadata
  of its landing file; a request that lands nothing (all duplicates or refused) writes its
  receipt as a file under ``ledger/``;
* a cleaning pass's counts per landing file ``{applied, duplicates, quarantined}`` are in the
  metadata of its clean part; a pass that writes no part writes them under ``ledger/``.

A landing file cleaned twice (a crash after its part was written, before the file was moved)
is counted by its first pass only. The totals are rebuilt at start from file footers and the
small ledger files: no event row is read.
"""

from __future__ import annotations

import json
import threading
import time

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from increc_ray.ingest.landing import CleanStore, LandingZone, open_uri, write_bytes_atomic

RECEIPT_KEY = b"increc_receipt"  # in a landing file: the request that wrote it
PASS_KEY = b"increc_pass"  # in a clean part: the pass that wrote it, per landing file
TOTALS = ("received", "applied", "quarantined", "duplicates")


def stamp(table: pa.Table, key: bytes, record: dict) -> pa.Table:
    """``table`` carrying ``record`` (JSON) in its schema metadata under ``key``."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), key: json.dumps(record).encode()})


def read_stamp(fs: pafs.FileSystem, path: str, key: bytes) -> dict | None:
    """The record ``stamp`` left in the Parquet file ``path`` (its footer only), or None."""
    try:
        meta = pq.read_schema(path, filesystem=fs).metadata or {}
    except (OSError, pa.ArrowInvalid):  # vanished meanwhile, or not Parquet (a dropped CSV file)
        return None
    return json.loads(meta[key]) if key in meta else None


class EventLedger:
    """The totals of ``received = applied + quarantined + duplicates + pending``, kept durable
    by the files they are stamped into (module docstring); thread-safe."""

    def __init__(self, landing: LandingZone, store: CleanStore, root: str) -> None:
        self.landing, self.store = landing, store
        self.fs, self.root = open_uri(root)
        self.fs.create_dir(self.root, recursive=True)
        self.totals = dict.fromkeys(TOTALS, 0)
        self.applied_twice = 0
        self._pending: dict[str, int] = {}  # HTTP landing file -> events accepted, not cleaned yet
        self._receipted: set[str] = set()  # landing files whose receipt counted their events received
        self._cleaned: set[str] = set()  # landing files a pass has counted
        self._lock = threading.Lock()
        self._load()

    # ---- what the pipeline records -------------------------------------------------------------

    @staticmethod
    def receipt(received: int, accepted: int, duplicates: int, rejected: int) -> dict:
        return {"received": received, "accepted": accepted, "duplicates": duplicates, "rejected": rejected,
                "at": time.time_ns()}

    def landed(self, path: str, receipt: dict) -> None:
        """``receipt`` was stamped into the landing file ``path``, now durably written."""
        with self._lock:
            self._count_receipt(self._name(path), receipt, pending=True)

    def answered_without_file(self, receipt: dict) -> None:
        """A request that landed nothing: its receipt is written as a ledger file."""
        self._write(f"http-{receipt['at']:020d}.json", receipt)
        with self._lock:
            self._count_receipt(None, receipt, pending=False)

    def pass_record(self, per_file: dict[str, dict]) -> dict:
        """The record of a pass: ``{landing path: {applied, duplicates, quarantined}}``."""
        return {"at": time.time_ns(), "files": {self._name(p): c for p, c in per_file.items()}}

    def cleaned(self, record: dict, stamped: bool) -> None:
        """A pass finished: its part (stamped with ``record``) is durable, or, with no part
        (``stamped`` false), the record is written as a ledger file now."""
        if not stamped:
            self._write(f"pass-{record['at']:020d}.json", record)
        with self._lock:
            self._count_pass(record)

    def snapshot(self) -> dict:
        with self._lock:
            out = {**self.totals, "pending": sum(self._pending.values()), "applied_twice": self.applied_twice}
        out["balanced"] = out["received"] == out["applied"] + out["quarantined"] + out["duplicates"] + out["pending"]
        return out

    # ---- bookkeeping ---------------------------------------------------------------------------

    def _count_receipt(self, name: str | None, r: dict, pending: bool) -> None:
        self.totals["received"] += r["received"]
        self.totals["duplicates"] += r["duplicates"]
        self.totals["quarantined"] += r["rejected"]
        if name is not None:
            self._receipted.add(name)
            if pending and name not in self._cleaned:
                self._pending[name] = r["accepted"]

    def _count_pass(self, record: dict) -> None:
        for name, c in record["files"].items():
            if name in self._cleaned:  # a re-read after a crash: its first pass counted it
                continue
            self._cleaned.add(name)
            self._pending.pop(name, None)
            self.totals["applied"] += c["applied"]
            self.totals["duplicates"] += c["duplicates"]
            self.totals["quarantined"] += c["quarantined"]
            if name not in self._receipted:  # a dropped file (or one landed before receipts): received when read
                self.totals["received"] += c["applied"] + c["duplicates"] + c["quarantined"]

    def _load(self) -> None:
        receipts, passes = [], []
        for path, pending in [(p, True) for p in self.landing.pending()] + [(p, False) for p in self.landing.processed()]:
            if (r := read_stamp(self.landing.fs, path, RECEIPT_KEY)) is not None:
                receipts.append((self._name(path), r, pending))
        for info in self.fs.get_file_info(pafs.FileSelector(self.root)):
            if info.base_name.endswith(".json") and not info.base_name.startswith("_"):
                with self.fs.open_input_stream(info.path) as f:
                    record = json.loads(f.read())
                if info.base_name.startswith("http-"):
                    receipts.append((None, record, False))
                else:
                    passes.append(record)
        for _, part in self.store.parts():
            if (record := read_stamp(self.store.fs, part, PASS_KEY)) is not None:
                passes.append(record)
        for name, r, pending in receipts:
            if name is not None:
                self._receipted.add(name)
        for record in sorted(passes, key=lambda r: r["at"]):  # first pass over a file wins
            self._count_pass(record)
        for name, r, pending in receipts:
            self._count_receipt(name, r, pending)

    def _name(self, path: str) -> str:
        """A landing file's name, the same before and after it is moved to ``_processed/``."""
        return self.landing.processed_name(path)

    def _write(self, name: str, record: dict) -> None:
        write_bytes_atomic(self.fs, f"{self.root}/{name}", json.dumps(record).encode())
