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

With ``ingest.retention_s`` old parts, the landing files they name and old ledger files are
pruned (``increc_ray.ingest.retention``). Their counts are folded first into ``compacted-<at>.json``,
which holds the totals of everything pruned so far and names the files of its own round; a
crash before those files are gone leaves them to the next start, which deletes them uncounted.
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
COMPACTED = "compacted-"  # ledger/compacted-<at>.json: the counts of everything pruned so far


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


class _Tally:
    """The counts and the per-file bookkeeping behind them, from receipts and pass records."""

    def __init__(self) -> None:
        self.totals = dict.fromkeys(TOTALS, 0)
        self.pending: dict[str, int] = {}  # HTTP landing file -> events accepted, not cleaned yet
        self.receipted: set[str] = set()  # landing files whose receipt counted their events received
        self.cleaned: dict[str, int] = {}  # landing files a pass has counted -> records naming them

    @classmethod
    def of(cls, passes: list[dict], receipts: list[tuple[str | None, dict, bool]]) -> "_Tally":
        """The counts of pass records and (landing name or None, receipt, pending) receipts read
        from files: every receipted name is known before the passes count (the first wins)."""
        t = cls()
        t.receipted = {name for name, _, _ in receipts if name is not None}
        for record in sorted(passes, key=lambda r: r["at"]):
            t.count_pass(record)
        for name, r, pending in receipts:
            t.count_receipt(name, r, pending)
        return t

    def count_receipt(self, name: str | None, r: dict, pending: bool) -> None:
        self.totals["received"] += r["received"]
        self.totals["duplicates"] += r["duplicates"]
        self.totals["quarantined"] += r["rejected"]
        if name is not None:
            self.receipted.add(name)
            if pending and name not in self.cleaned:
                self.pending[name] = r["accepted"]

    def count_pass(self, record: dict) -> None:
        for name, c in record["files"].items():
            if name in self.cleaned:  # a re-read after a crash: its first pass counted it
                self.cleaned[name] += 1
                continue
            self.cleaned[name] = 1
            self.pending.pop(name, None)
            self.totals["applied"] += c["applied"]
            self.totals["duplicates"] += c["duplicates"]
            self.totals["quarantined"] += c["quarantined"]
            if name not in self.receipted:  # a dropped file (or one landed before receipts): received when read
                self.totals["received"] += c["applied"] + c["duplicates"] + c["quarantined"]


class EventLedger:
    """The totals of ``received = applied + quarantined + duplicates + pending``, kept durable
    by the files they are stamped into (module docstring); thread-safe."""

    def __init__(self, landing: LandingZone, store: CleanStore, root: str) -> None:
        self.landing, self.store = landing, store
        self.fs, self.root = open_uri(root)
        self.fs.create_dir(self.root, recursive=True)
        self.applied_twice = 0
        self._t = _Tally()
        self.compacted: dict = {"at": 0, "totals": dict.fromkeys(TOTALS, 0), "covers": {}}  # what pruning folded in
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
            self._t.count_receipt(self._name(path), receipt, pending=True)

    def answered_without_file(self, receipt: dict) -> None:
        """A request that landed nothing: its receipt is written as a ledger file."""
        self._write(f"http-{receipt['at']:020d}.json", receipt)
        with self._lock:
            self._t.count_receipt(None, receipt, pending=False)

    def pass_record(self, per_file: dict[str, dict]) -> dict:
        """The record of a pass: ``{landing path: {applied, duplicates, quarantined}}``."""
        return {"at": time.time_ns(), "files": {self._name(p): c for p, c in per_file.items()}}

    def cleaned(self, record: dict, stamped: bool) -> None:
        """A pass finished: its part (stamped with ``record``) is durable, or, with no part
        (``stamped`` false), the record is written as a ledger file now."""
        if not stamped:
            self._write(f"pass-{record['at']:020d}.json", record)
        with self._lock:
            self._t.count_pass(record)

    def records_naming(self, name: str) -> int:
        """How many pass records counted so far name landing file ``name``."""
        with self._lock:
            return self._t.cleaned.get(name, 0)

    def snapshot(self) -> dict:
        with self._lock:
            out = {**self.totals, "pending": sum(self._t.pending.values()), "applied_twice": self.applied_twice}
        out["balanced"] = out["received"] == out["applied"] + out["quarantined"] + out["duplicates"] + out["pending"]
        return out

    @property
    def totals(self) -> dict:
        """received, applied, quarantined, duplicates: what pruning folded in plus the files left."""
        return {k: self.compacted["totals"][k] + self._t.totals[k] for k in TOTALS}

    def _load(self) -> None:
        self._load_compacted()
        covered = {k: set(v) for k, v in self.compacted["covers"].items()}
        receipts, passes = [], []
        landing = [(p, True) for p in self.landing.pending()] + [(p, False) for p in self.landing.processed()]
        for path, pending in landing:
            if self._name(path) in covered.get("landing", ()):
                continue
            if (r := read_stamp(self.landing.fs, path, RECEIPT_KEY)) is not None:
                receipts.append((self._name(path), r, pending))
        for info in self.fs.get_file_info(pafs.FileSelector(self.root)):
            name = info.base_name
            if not name.endswith(".json") or name.startswith(("_", COMPACTED)) or name in covered.get("ledger", ()):
                continue
            with self.fs.open_input_stream(info.path) as f:
                record = json.loads(f.read())
            if name.startswith("http-"):
                receipts.append((None, record, False))
            else:
                passes.append(record)
        for _, part in self.store.parts():
            if part.rsplit("/", 1)[-1] in covered.get("parts", ()):
                continue
            if (record := read_stamp(self.store.fs, part, PASS_KEY)) is not None:
                passes.append(record)
        self._t = _Tally.of(passes, receipts)
        self.finish_compaction()

    # ---- retention: folding pruned files into the ledger ------------------------------------------

    def compact(self, part_paths: list[str], landing_paths: list[str], ledger_names: list[str]) -> dict:
        """Fold the counts of the clean parts ``part_paths``, the processed landing files
        ``landing_paths`` and the ledger files ``ledger_names`` into a new ``compacted-*.json``,
        then delete them. The caller (``increc_ray.ingest.retention``) hands in a closed set:
        every landing file a pruned record names is pruned with it and named by no record kept,
        so the totals are unchanged. Returns the counts folded in."""
        passes, receipts = [], []
        for part in part_paths:
            if (record := read_stamp(self.store.fs, part, PASS_KEY)) is not None:
                passes.append(record)
        for name in ledger_names:
            with self.fs.open_input_stream(f"{self.root}/{name}") as f:
                record = json.loads(f.read())
            (receipts.append((None, record, False)) if name.startswith("http-") else passes.append(record))
        for path in landing_paths:
            if (r := read_stamp(self.landing.fs, path, RECEIPT_KEY)) is not None:
                receipts.append((self._name(path), r, False))
        folded = _Tally.of(passes, receipts)
        at = time.time_ns()
        totals = {k: self.compacted["totals"][k] + folded.totals[k] for k in TOTALS}
        covers = {"parts": [p.rsplit("/", 1)[-1] for p in part_paths],
                  "landing": sorted({self._name(p) for p in landing_paths} | set(folded.cleaned)),
                  "ledger": list(ledger_names)}
        self._write(f"{COMPACTED}{at:020d}.json", {"at": at, "totals": totals, "covers": covers})
        with self._lock:  # the same totals: moved from the files' counts into the compacted ones
            self.compacted = {"at": at, "totals": totals, "covers": covers}
            for k in TOTALS:
                self._t.totals[k] -= folded.totals[k]
            for name in covers["landing"]:
                self._t.cleaned.pop(name, None)
                self._t.receipted.discard(name)
        self.finish_compaction()
        return folded.totals

    def _load_compacted(self) -> None:
        names = sorted(i.base_name for i in self.fs.get_file_info(pafs.FileSelector(self.root))
                       if i.base_name.startswith(COMPACTED) and i.base_name.endswith(".json"))
        if names:
            with self.fs.open_input_stream(f"{self.root}/{names[-1]}") as f:
                self.compacted = json.loads(f.read())

    def finish_compaction(self) -> None:
        """Delete what the newest compaction covers, and the compactions before it (a crash
        may have cut a round short: its files are gone, or counted only in it)."""
        covers, done = self.compacted["covers"], f"{self.landing.root}/_processed"
        paths = ([(self.store.fs, f"{self.store.root}/{n}") for n in covers.get("parts", ())]
                 + [(self.landing.fs, f"{done}/{n}") for n in covers.get("landing", ())]
                 + [(self.fs, f"{self.root}/{n}") for n in covers.get("ledger", ())])
        paths += [(self.fs, i.path) for i in self.fs.get_file_info(pafs.FileSelector(self.root))
                  if i.base_name.startswith(COMPACTED) and i.base_name < f"{COMPACTED}{self.compacted['at']:020d}.json"]
        for fs, path in paths:
            try:
                fs.delete_file(path)
            except FileNotFoundError:
                pass

    def _name(self, path: str) -> str:
        """A landing file's name, the same before and after it is moved to ``_processed/``."""
        return self.landing.processed_name(path)

    def _write(self, name: str, record: dict) -> None:
        write_bytes_atomic(self.fs, f"{self.root}/{name}", json.dumps(record).encode())
