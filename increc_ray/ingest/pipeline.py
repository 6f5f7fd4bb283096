"""Data maintenance: landing zone -> cleaned, de-duplicated, labelled clean store.

Two shells run the same cleaning rules (``increc_ray.ingest.clean``):

* ``ingest`` (HTTP): a request's events are cleaned inline, so the answer can
  name every rejected event and count duplicates; the accepted raw events are
  durably written to the landing zone before the answer is sent.
* ``process_pending`` (Ray Data): every landing file, whether written by HTTP
  ingest or dropped into the folder by anyone, is read and cleaned in a Ray
  Data job and appended to the clean store as one numbered part.

De-duplication spans the whole history (``increc_ray.ingest.dedup``). Keys of
the clean store are reloaded on start, so a crash between writing a clean part
and moving its source files only causes a re-read whose rows are all
recognised as duplicates: nothing is lost or applied twice.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from increc_ray import telemetry
from increc_ray.config import Config
from increc_ray.ingest.clean import clean_batch_tagged, split_tagged
from increc_ray.ingest.dedup import KeyLedger, drop_batch_duplicates
from increc_ray.ingest.events import RAW_COLUMNS, raw_table_from_records
from increc_ray.ingest.landing import CleanStore, LandingZone, open_uri, write_parquet_atomic
from increc_ray.ingest.ray_job import clean_files_locally, clean_files_with_ray_data

MAX_REASONS_IN_ANSWER = 100  # a huge bad batch should not produce a huge answer


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
        """``clean_files(files, fs, cfg) -> tagged table`` defaults to the Ray Data job;
        unit tests hand in ``ray_job.clean_files_locally`` to test the bookkeeping without Ray."""
        self.cfg = cfg
        self.clean_files = clean_files or clean_files_with_ray_data
        self.landing = LandingZone(cfg.landing_uri)
        self.store = CleanStore(cfg.clean_dir)
        self.q_fs, self.q_root = open_uri(cfg.quarantine_dir)
        self._lock = threading.Lock()
        existing = self.store.read_all(columns=["dedup_key"])
        self.keys = KeyLedger(existing.column("dedup_key").to_pylist() if existing is not None else ())
        self._next_seq = self.store.last_seq() + 1
        # HTTP files accepted before a restart but not cleaned yet hold their keys again, so a
        # client's retry of one of them is a duplicate, not a second copy.
        for path, rows in pending_http_rows(self.landing, cfg):
            self.keys.adopt(path, rows.column("dedup_key").to_pylist())
        self.counts = {"accepted": 0, "duplicates": 0, "quarantined": 0, "cleaned": 0, "files": 0}
        self.last_clean_time: float | None = None

    # ---- HTTP ingest -------------------------------------------------------------------------

    def ingest(self, records: list) -> tuple[IngestReport, pa.Table]:
        """Clean ``records`` inline, write accepted ones durably; returns (report, clean rows).

        The clean rows are what the caller adds to user histories
        (read-your-writes); the trainer gets them later through the clean store.
        """
        raw = raw_table_from_records(records)
        tagged = clean_batch_tagged(raw, self.cfg.cleaning, source="http")
        result = split_tagged(tagged)
        report = IngestReport()
        self._quarantine(result.quarantined, "http")
        report.rejected_count = result.quarantined.num_rows
        report.rejected = [{"row": r, "reason": why} for r, why in zip(
            result.quarantined.column("row").to_pylist()[:MAX_REASONS_IN_ANSWER],
            result.quarantined.column("reason").to_pylist()[:MAX_REASONS_IN_ANSWER])]

        ok_rows = tagged.filter(pc.is_null(tagged.column("reason")))
        keys = ok_rows.column("dedup_key").to_pylist()
        keep, path = self.keys.reserve(keys, lambda: self.landing.new_path("http"))
        mask = pa.array(keep, type=pa.bool_())
        accepted_rows = ok_rows.column("row").filter(mask)
        report.accepted = len(accepted_rows)
        report.duplicates = len(keys) - report.accepted
        if path is not None:
            try:
                self.landing.write_to(path, raw.select([c for c in (*RAW_COLUMNS, "raw") if c in raw.column_names])
                                      .take(accepted_rows))
            except Exception:
                self.keys.release(path)  # nothing was written: the keys are free again
                raise
            report.landing_file = path
        self.counts["accepted"] += report.accepted
        self.counts["duplicates"] += report.duplicates
        self.counts["quarantined"] += report.rejected_count
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
        started = time.time()
        tagged = self.clean_files(files, self.landing.fs, self.cfg)
        clean_parts, fresh_parts, bad_parts, n_dup, n_bad = [], [], [], 0, 0
        by_source = pc.fill_null(tagged.column("source"), "")
        seq = None
        try:
            for path in files:
                result = split_tagged(tagged.filter(pc.equal(by_source, path)))
                bad_parts.append((path, result.quarantined))
                n_bad += result.quarantined.num_rows
                clean, dup_in_file = drop_batch_duplicates(result.clean)
                kept, fresh, dup = self._dedup_file(clean, path)
                n_dup += dup_in_file + dup
                clean_parts.append(kept)
                fresh_parts.append(fresh)
            clean = pa.concat_tables(clean_parts)
            if clean.num_rows:
                # Keep the clean stream in event-time order inside a part.
                clean = clean.take(pc.sort_indices(clean, sort_keys=[("timestamp", "ascending")]))
                with self._lock:
                    seq = self._next_seq
                    self._next_seq += 1
                self.store.append(clean, seq)
        except BaseException:
            # Nothing was written: the files stay pending and the retry finds their rows new.
            self.keys.abort(files)
            if seq is not None:
                with self._lock:  # no gap in the stream offsets when nobody took the next one
                    if self._next_seq == seq + 1:
                        self._next_seq = seq
            telemetry.inc("increc_clean_pass_failures_total", 1)
            raise
        # The part is durable: its keys are seen from now on, whatever happens next (a crash
        # before the files are moved only causes a re-read whose rows are all duplicates).
        self.keys.commit(files, clean.column("dedup_key").to_pylist())
        for path, bad in bad_parts:  # one quarantine file per landing file: a re-read overwrites it
            self._quarantine(bad, "file", name=path[len(self.landing.root):].lstrip("/").replace("/", "__"))
        self.landing.mark_processed(files)
        self.last_clean_time = time.time()
        self.counts["files"] += len(files)
        self.counts["cleaned"] += clean.num_rows
        self.counts["quarantined"] += n_bad
        self.counts["duplicates"] += n_dup
        from_files = sum(1 for f in files if not _is_http_file(f))
        telemetry.inc("increc_events_cleaned_total", clean.num_rows)
        telemetry.inc("increc_events_quarantined_total", n_bad, source="file")
        telemetry.inc("increc_events_duplicate_total", n_dup, source="file")
        telemetry.set_gauge("increc_ingest_lag_seconds", time.time() - started)
        fresh = pa.concat_tables(fresh_parts)
        self.counts["accepted"] += sum(t.num_rows for f, t in zip(files, fresh_parts) if not _is_http_file(f))
        summary = {"files": len(files), "from_folder": from_files, "cleaned": clean.num_rows,
                   "duplicates": n_dup, "quarantined": n_bad, "seconds": round(time.time() - started, 3)}
        return summary, fresh

    def _dedup_file(self, clean: pa.Table, path: str) -> tuple[pa.Table, pa.Table, int]:
        """(kept rows, kept rows not reserved at HTTP ingest, duplicates) for one landing file."""
        keep, fresh = self.keys.claim(clean.column("dedup_key").to_pylist(), path)
        kept = clean.filter(pa.array(keep, type=pa.bool_()))
        return kept, clean.filter(pa.array(fresh, type=pa.bool_())), clean.num_rows - kept.num_rows

    def _quarantine(self, table: pa.Table, origin: str, name: str | None = None) -> None:
        if table.num_rows:
            name = f"{origin}-{name.rsplit('.', 1)[0] if name else f'{time.time_ns():020d}'}.parquet"
            write_parquet_atomic(self.q_fs, f"{self.q_root}/{name}", table)

    def status(self) -> dict:
        return {**self.counts, "clean_parts": self._next_seq, "pending_files": len(self.landing.pending()),
                "seen_keys": len(self.keys.seen), "reserved_keys": self.keys.n_reserved,
                "last_clean_time": self.last_clean_time}


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
