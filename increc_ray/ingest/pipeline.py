"""Data maintenance: landing zone -> cleaned, de-duplicated, labelled clean store.

Two shells run the same cleaning rules (``increc_ray.ingest.clean``):

* ``ingest`` (HTTP): a request's events are cleaned inline, so the answer can
  name every rejected event and count duplicates; the accepted raw events are
  durably written to the landing zone before the answer is sent.
* ``process_pending`` (Ray Data): every landing file, whether written by HTTP
  ingest or dropped into the folder by anyone, is read and cleaned in a Ray
  Data job and appended to the clean store as one numbered part. A pass over
  at most ``ingest.inline_clean_max_bytes`` runs the same cleaning function in
  this process instead: a job's fixed cost is most of a small pass (``bench/clean_pass.py``).

De-duplication spans the whole history (``increc_ray.ingest.dedup``). Keys of
the clean store are reloaded on start, so a crash between writing a clean part
and moving its source files only causes a re-read whose rows are all
recognised as duplicates: nothing is lost or applied twice. The ledger
(``increc_ray.ingest.ledger``) proves it: every event received is counted once as applied,
quarantined, duplicate or pending, in counts written atomically with the rows they count.

With ``ingest.retention_s`` it spans the retained stream: old parts are pruned
(``increc_ray.ingest.retention``) and an event older than the retention is refused.

Clean events that are new then pass the stateful rules (``increc_ray.ingest.rate``: retention,
id cardinality, then the per-user rate), once: at HTTP ingest, or in the pass for rows of dropped
files. A refused event is quarantined with its reason and never reaches the clean store.
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from increc_ray import telemetry
from increc_ray.config import Config
from increc_ray.ingest.clean import clean_batch_tagged, split_tagged
from increc_ray.ingest.dedup import KeyLedger, drop_batch_duplicates
from increc_ray.ingest.events import RAW_COLUMNS, raw_table_from_records, rows_as_json
from increc_ray.ingest.landing import CleanStore, LandingZone, open_uri, write_parquet_atomic
from increc_ray.ingest.ledger import PASS_KEY, RECEIPT_KEY, EventLedger, stamp
from increc_ray.ingest.rate import CARDINALITY, RATE, RETENTION, Admission, rule_of
from increc_ray.ingest.ray_job import clean_files_locally, clean_files_with_ray_data
from increc_ray.ingest.retention import prune

MAX_REASONS_IN_ANSWER = 100  # a huge bad batch should not produce a huge answer
REFUSED_COUNTS = {RATE: "rate_limited", CARDINALITY: "cardinality_refused", RETENTION: "too_old"}  # rule -> key in status()


@dataclass
class IngestReport:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[dict] = field(default_factory=list)
    rejected_count: int = 0
    landing_file: str | None = None

    def to_json(self) -> dict:
        return {"accepted": self.accepted, "duplicates": self.duplicates,
                "rejected_count": self.rejected_count, "rejected": self.rejected}


class EventPipeline:
    """Ingest, clean and de-duplicate events; owns the landing zone and the clean store."""

    def __init__(self, cfg: Config, clean_files=None) -> None:
        """``clean_files(files, fs, cfg) -> tagged table`` defaults to the Ray Data job (a pass
        over at most ``ingest.inline_clean_max_bytes`` runs ``ray_job.clean_files_locally``);
        unit tests hand in ``clean_files_locally`` to test the bookkeeping without Ray."""
        self.cfg = cfg
        self.clean_files = clean_files or clean_files_with_ray_data
        self.landing = LandingZone(cfg.landing_uri)
        self.store = CleanStore(cfg.clean_dir)
        self.q_fs, self.q_root = open_uri(cfg.quarantine_dir)
        self._lock = threading.Lock()
        self.ledger = EventLedger(self.landing, self.store, cfg.ledger_dir)  # first: it ends a cut-short prune
        existing = self.store.read_all(columns=["dedup_key", "user_id", "item_id", "timestamp"])
        self.keys = KeyLedger(existing.column("dedup_key").to_pylist() if existing is not None else ())
        self.ledger.applied_twice = (existing.num_rows if existing is not None else 0) - len(self.keys.seen)
        self._next_seq = self.store.last_seq() + 1
        accepted = [existing] if existing is not None else []
        # HTTP files accepted before a restart but not cleaned yet hold their keys again, so a
        # client's retry of one of them is a duplicate, not a second copy.
        for path, rows in pending_http_rows(self.landing, cfg):
            keys = rows.column("dedup_key").to_pylist()
            self.keys.adopt(path, keys)
            # rows already in the store (a crash before the file was moved) are counted once
            accepted.append(rows.filter(pa.array([k not in self.keys.seen for k in keys], pa.bool_())))
        # knows every accepted event's ids, its user's last minute and the newest event time
        self.admission = Admission(cfg.cleaning, cfg.ingest.retention_s)
        if accepted:
            self.admission.seed(pa.concat_tables([t.select(["user_id", "item_id", "timestamp"]) for t in accepted]))
        self.counts = {"accepted": 0, "duplicates": 0, "quarantined": 0, "cleaned": 0, "files": 0,
                       "passes_ray_data": 0, "passes_inline": 0,
                       **{key: 0 for key in REFUSED_COUNTS.values()}}
        self.pruned = {"passes": 0, "parts": 0, "landing_files": 0, "ledger_files": 0, "quarantine_files": 0,
                       "keys": 0, "ids": 0, "events": 0, "last": None}  # retention, summed
        self.last_clean_time: float | None = None
        self.pass_started_at: float | None = None  # while a cleaning pass runs

    # ---- HTTP ingest -------------------------------------------------------------------------

    def ingest(self, records: list) -> tuple[IngestReport, pa.Table]:
        """Clean ``records`` inline, write accepted ones durably; returns (report, clean rows).

        The clean rows are what the caller adds to user histories
        (read-your-writes); the trainer gets them later through the clean store.
        """
        raw = raw_table_from_records(records)
        tagged = clean_batch_tagged(raw, self.cfg.cleaning, source="http")
        ok_rows = tagged.filter(pc.is_null(tagged.column("reason")))
        new = self.keys.unseen(ok_rows.column("dedup_key").to_pylist())
        reasons = self.admission.check(ok_rows, new)
        quarantined = pa.concat_tables([split_tagged(tagged).quarantined,
                                        refused_rows(ok_rows, reasons, raw.column("raw"))]).sort_by("row")
        report = IngestReport()
        self._quarantine(quarantined, "http")
        report.rejected_count = quarantined.num_rows
        report.rejected = [{"row": r, "reason": why} for r, why in zip(
            quarantined.column("row").to_pylist()[:MAX_REASONS_IN_ANSWER],
            quarantined.column("reason").to_pylist()[:MAX_REASONS_IN_ANSWER])]

        admitted = pa.array([r is None for r in reasons], pa.bool_())
        new = [n for n, r in zip(new, reasons) if r is None]
        ok_rows = ok_rows.filter(admitted)
        keys = ok_rows.column("dedup_key").to_pylist()
        keep, path = self.keys.reserve(keys, lambda: self.landing.new_path("http"))
        mask = pa.array(keep, type=pa.bool_())
        # Rows a concurrent request reserved since ``unseen`` are its duplicates: out of the rate window.
        self.admission.forget(ok_rows.filter(pa.array([n and not k for n, k in zip(new, keep)], pa.bool_())))
        accepted_rows = ok_rows.column("row").filter(mask)
        report.accepted = len(accepted_rows)
        report.duplicates = len(keys) - report.accepted
        receipt = self.ledger.receipt(raw.num_rows, report.accepted, report.duplicates, report.rejected_count)
        try:
            if path is None:
                self.ledger.answered_without_file(receipt)
            else:  # the receipt travels in the file's footer: counted if and only if the rows landed
                self.landing.write_to(path, stamp(raw.select([c for c in (*RAW_COLUMNS, "raw") if c in raw.column_names])
                                                  .take(accepted_rows), RECEIPT_KEY, receipt))
                self.ledger.landed(path, receipt)
                report.landing_file = path
        except Exception:
            if path is not None:
                self.keys.release(path)  # nothing was written: the keys are free again
                self.admission.forget(ok_rows.filter(mask))
            raise
        self.counts["accepted"] += report.accepted
        self.counts["duplicates"] += report.duplicates
        self.counts["quarantined"] += report.rejected_count
        self._count_refused(Counter(rule_of(r) for r in reasons if r))
        telemetry.inc("increc_events_accepted_total", report.accepted, source="http")
        telemetry.inc("increc_events_duplicate_total", report.duplicates, source="http")
        telemetry.inc("increc_events_quarantined_total", report.rejected_count, source="http")
        clean_accepted = split_tagged(ok_rows.filter(mask)).clean
        return report, clean_accepted

    # ---- Ray Data pass over the landing zone ----------------------------------------------------

    def process_pending(self) -> tuple[dict, pa.Table | None]:
        """Clean pending landing files with Ray Data into one clean part.

        Returns (summary, rows that user histories have not seen yet): rows
        accepted over HTTP were already added to histories at ingest time.
        """
        files = self.landing.pending()[: self.cfg.ingest.max_files_per_batch]
        if not files:
            return {"files": 0}, None
        started = self.pass_started_at = time.time()
        try:
            return self._process(files, started)
        finally:
            self.pass_started_at = None

    def _process(self, files: list[str], started: float) -> tuple[dict, pa.Table | None]:
        inline = sum(self.landing.sizes(files)) <= self.cfg.ingest.inline_clean_max_bytes
        tagged = (clean_files_locally if inline else self.clean_files)(files, self.landing.fs, self.cfg)
        clean_parts, fresh_parts, bad_parts, n_dup, n_bad, refused = [], [], [], 0, 0, Counter()
        per_file: dict[str, dict] = {}  # the ledger's counts of each file
        by_source = pc.fill_null(tagged.column("source"), "")
        seq = None
        try:
            for path in files:
                rows = tagged.filter(pc.equal(by_source, path))
                kept, fresh, refusals, dup = self._admit_file(rows.filter(pc.is_null(rows.column("reason"))), path)
                fresh_parts.append(fresh)  # admitted by the rules: forgotten again if the pass fails
                bad = pa.concat_tables([split_tagged(rows).quarantined, refusals]).sort_by("row")
                bad_parts.append((path, bad))
                n_bad += bad.num_rows
                n_dup += dup
                refused.update(map(rule_of, refusals.column("reason").to_pylist()))
                clean_parts.append(kept)
                per_file[path] = {"applied": kept.num_rows, "duplicates": dup, "quarantined": bad.num_rows}
            clean = pa.concat_tables(clean_parts)
            record = self.ledger.pass_record(per_file)
            if clean.num_rows:
                # Keep the clean stream in event-time order inside a part.
                clean = clean.take(pc.sort_indices(clean, sort_keys=[("timestamp", "ascending")]))
                with self._lock:
                    seq = self._next_seq
                    self._next_seq += 1
                self.store.append(stamp(clean, PASS_KEY, record), seq)  # the counts in its footer
        except BaseException:
            # Nothing was written: the files stay pending and the retry finds their rows new.
            self.keys.abort(files)
            if fresh_parts:
                self.admission.forget(pa.concat_tables(fresh_parts))
            if seq is not None:
                with self._lock:  # no gap in the stream offsets when nobody took the next one
                    if self._next_seq == seq + 1:
                        self._next_seq = seq
            telemetry.inc("increc_clean_pass_failures_total", 1)
            raise
        # The part is durable: its keys are seen from now on, whatever happens next (a crash
        # before the files are moved only causes a re-read whose rows are all duplicates).
        kept_keys = clean.column("dedup_key").to_pylist()
        self.ledger.applied_twice += sum(k in self.keys.seen for k in kept_keys)  # goal 0: the check of the above
        self.keys.commit(files, kept_keys)
        for path, bad in bad_parts:  # one quarantine file per landing file: a re-read overwrites it
            self._quarantine(bad, "file", name=path[len(self.landing.root):].lstrip("/").replace("/", "__"))
        self.ledger.cleaned(record, stamped=bool(clean.num_rows))  # before the files move: counted once
        self.landing.mark_processed(files)
        self.last_clean_time = time.time()
        self.counts["files"] += len(files)
        self.counts["passes_inline" if inline else "passes_ray_data"] += 1
        self.counts["cleaned"] += clean.num_rows
        self.counts["quarantined"] += n_bad
        self.counts["duplicates"] += n_dup
        self._count_refused(refused)
        from_files = sum(1 for f in files if not _is_http_file(f))
        telemetry.inc("increc_events_cleaned_total", clean.num_rows)
        telemetry.inc("increc_events_quarantined_total", n_bad, source="file")
        telemetry.inc("increc_events_duplicate_total", n_dup, source="file")
        telemetry.set_gauge("increc_ingest_lag_seconds", time.time() - started)
        fresh = pa.concat_tables(fresh_parts)
        self.counts["accepted"] += sum(t.num_rows for f, t in zip(files, fresh_parts) if not _is_http_file(f))
        summary = {"files": len(files), "from_folder": from_files, "cleaned": clean.num_rows,
                   "cleaned_by": "inline" if inline else "ray_data",
                   "duplicates": n_dup, "quarantined": n_bad, "seconds": round(time.time() - started, 3)}
        return summary, fresh

    def _admit_file(self, ok: pa.Table, path: str) -> tuple[pa.Table, pa.Table, pa.Table, int]:
        """For one landing file's tagged clean rows: (clean rows to keep, those of them not
        reserved at HTTP ingest, the rows the rules refused as quarantine rows, duplicates).
        Only rows not reserved at HTTP ingest face the rules: the others passed them then."""
        unique, _ = drop_batch_duplicates(ok)
        keep, fresh = self.keys.claim(unique.column("dedup_key").to_pylist(), path)
        kept = unique.filter(pa.array(keep, type=pa.bool_()))
        fresh = [f for f, k in zip(fresh, keep) if k]
        reasons = self.admission.check(kept, fresh)
        admitted = [r is None for r in reasons]
        return (split_tagged(kept.filter(pa.array(admitted, pa.bool_()))).clean,
                split_tagged(kept.filter(pa.array([f and a for f, a in zip(fresh, admitted)], pa.bool_()))).clean,
                refused_rows(kept, reasons), ok.num_rows - kept.num_rows)

    # ---- retention (increc_ray.ingest.retention) ------------------------------------------------------

    def prune(self) -> dict:
        """One retention pass (nothing without ``ingest.retention_s``); call it between passes."""
        if self.cfg.ingest.retention_s is None:
            return {}
        out = prune(self)
        if out["parts"]:
            self.pruned["passes"] += 1
            for k in ("parts", "landing_files", "ledger_files", "quarantine_files", "keys", "ids", "events"):
                self.pruned[k] += out[k]
            self.pruned["last"] = {**out, "at": time.time()}
            telemetry.inc("increc_pruned_events_total", out["events"])
        return out

    def prune_quarantine(self, landing_names: list[str], before_ns: int) -> int:
        """Delete the quarantine files of the pruned landing files ``landing_names`` and those
        HTTP ingest wrote before ``before_ns``; returns how many went."""
        doomed = {_quarantine_name("file", n) for n in landing_names}
        gone = 0
        for info in self.q_fs.get_file_info(pafs.FileSelector(self.q_root, allow_not_found=True)):
            m = _HTTP_QUARANTINE.fullmatch(info.base_name)
            if info.base_name in doomed or (m and int(m.group(1)) <= before_ns):
                try:
                    self.q_fs.delete_file(info.path)
                    gone += 1
                except FileNotFoundError:
                    pass
        return gone

    def _count_refused(self, by_rule: Counter) -> None:
        for rule, n in by_rule.items():
            self.counts[REFUSED_COUNTS[rule]] += n
            telemetry.inc("increc_events_refused_total", n, rule=rule)

    def _quarantine(self, table: pa.Table, origin: str, name: str | None = None) -> None:
        if table.num_rows:
            write_parquet_atomic(self.q_fs, f"{self.q_root}/{_quarantine_name(origin, name)}", table)

    def status(self) -> dict:
        return {**self.counts, "clean_parts": self._next_seq, "pending_files": len(self.landing.pending()),
                "seen_keys": len(self.keys.seen), "reserved_keys": self.keys.n_reserved,
                "last_clean_time": self.last_clean_time, "pass_started_at": self.pass_started_at, **self.admission.status(), "ledger": self.ledger.snapshot(),
                "pruned": self.pruned}


_HTTP_QUARANTINE = re.compile(r"http-(\d{20})\.parquet")  # _quarantine_name("http"): when it was written


def _quarantine_name(origin: str, landing_name: str | None = None) -> str:
    """The quarantine file of a landing file (one per file: a re-read overwrites it), or of an
    HTTP request (named by the time it was written)."""
    return f"{origin}-{landing_name.rsplit('.', 1)[0] if landing_name else f'{time.time_ns():020d}'}.parquet"


def refused_rows(rows: pa.Table, reasons: list[str | None], raw: pa.ChunkedArray | None = None) -> pa.Table:
    """The rows of the tagged clean ``rows`` that have a reason, as quarantine rows; their raw
    text is ``raw`` at their ``row`` (a request's records), else the clean event as JSON (a
    file's own text stayed in the Ray Data job)."""
    out = rows.filter(pa.array([r is not None for r in reasons], pa.bool_()))
    text = raw.take(out.column("row")) if raw is not None else rows_as_json(out.select(list(RAW_COLUMNS)))
    why = pa.array([r for r in reasons if r is not None], pa.string())
    out = out.set_column(out.schema.get_field_index("reason"), "reason", why)
    return split_tagged(out.set_column(out.schema.get_field_index("raw"), "raw", text)).quarantined


def pending_http_rows(landing: LandingZone, cfg: Config) -> list[tuple[str, pa.Table]]:
    """(path, clean rows) of each HTTP landing file not cleaned yet: events already acknowledged
    that the clean store does not hold yet (a restarted pipeline or user history reads them).
    A file that vanishes meanwhile (cleaned by a pass) is skipped."""
    out = []
    for path in landing.pending():
        if not _is_http_file(path):
            continue
        try:
            tagged = clean_files_locally([path], landing.fs, cfg)
        except FileNotFoundError:
            continue
        clean, _ = drop_batch_duplicates(split_tagged(tagged).clean)
        out.append((path, clean))
    return out


def _is_http_file(path: str) -> bool:
    return path.rsplit("/", 1)[-1].startswith("http-")
