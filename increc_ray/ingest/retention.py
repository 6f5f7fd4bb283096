"""Retention: the disk and the de-duplication memory bounded in event time (``ingest.retention_s``).

Without it the clean store, the processed landing files, the quarantine and the ledger keep every
event forever, and the pipeline holds every ``dedup_key`` ever accepted. With it, the cleaning
thread calls ``prune`` every ``ingest.prune_interval_s``; a pass takes the oldest clean parts that

* hold only events older than the retention horizon (the newest accepted event time minus
  ``retention_s``: ``Admission.horizon_ms``; a new event older than that is quarantined with reason
  ``retention``, so a pruned key can never be accepted again: nothing is applied twice),
* lie before the trainer's checkpointed offset (``CleanStore.consumed``: the trainer never reads
  them again; no checkpoint yet, nothing is pruned), and are not the newest part,

and with them the landing files their pass records name, the ledger files written before them and
those landing files' quarantine files. The ledger folds their counts in first
(``EventLedger.compact``), so ``received = applied + quarantined + duplicates + pending`` still
holds, across restarts. A landing file that two passes counted (a re-read after a crash) stops the
pass at the first record naming it that is still kept, so every landing file is pruned with all
the records that name it. What is pruned leaves the de-duplication keys and the id counts too.

Time is event time, as in every rule: a replay decides alike, and the trainer's and serving's ttls
(``trainer.*_ttl_s``, ``serving.*_ttl_s``; the config requires ``retention_s`` to be at least the
serving ones) forget users and items on the same clock.
"""

from __future__ import annotations

import json
import time

import pyarrow.fs as pafs

from increc_ray.ingest.ledger import PASS_KEY, read_stamp


def prune(pipeline) -> dict:
    """One retention pass over ``pipeline`` (an ``EventPipeline``); returns what it pruned. Runs in
    the cleaning thread, between cleaning passes."""
    started = time.monotonic()
    horizon = pipeline.admission.horizon_ms()
    consumed = pipeline.store.consumed()
    out = {"parts": 0, "landing_files": 0, "ledger_files": 0, "quarantine_files": 0, "keys": 0, "ids": 0,
           "events": 0, "horizon_ms": horizon, "trainer_seq": None if consumed is None else consumed["seq"]}
    if horizon is None or consumed is None:
        return out
    store, ledger, landing = pipeline.store, pipeline.ledger, pipeline.landing
    ledger.finish_compaction()  # a round a failed delete cut short ends first: its files are counted
    parts = store.parts()
    records = []  # (at, kind, ref, record) in pass order
    for seq, path in parts[:-1]:  # never the newest part: the writer numbers from it
        record = read_stamp(store.fs, path, PASS_KEY)
        newest = store.newest_event_ms(path) if seq < consumed["seq"] else None
        if record is None or newest is None or newest >= horizon:
            break
        records.append((record["at"], "part", path, record))
    if not records:
        return out
    # the pass record of the first part kept: the passes before it may go with the parts
    fence = read_stamp(store.fs, parts[len(records)][1], PASS_KEY)
    fence_at = fence["at"] if fence is not None else records[-1][0] + 1
    ledger_files = _ledger_files(ledger)
    for name in ledger_files:
        if name.startswith("pass-") and _at(name) < fence_at:  # e.g. a re-read after a crash
            with ledger.fs.open_input_stream(f"{ledger.root}/{name}") as f:
                record = json.loads(f.read())
            records.append((record["at"], "pass", name, record))
    records.sort(key=lambda r: r[0])
    processed = {landing.processed_name(p): p for p in landing.processed()}
    named: dict[str, int] = {}
    still_named: set[str] = set()  # named so far, and unprocessed or also named by a later record
    kept = 0
    for i, (_, _, _, record) in enumerate(records):
        for name in record["files"]:
            named[name] = named.get(name, 0) + 1
            closed = name in processed and named[name] == ledger.records_naming(name)
            (still_named.discard if closed else still_named.add)(name)
        if not still_named:  # the records up to here form a closed set
            kept = i + 1
    records = records[:kept]
    if not records:
        return out
    cutoff = records[-1][0]
    part_paths = [ref for _, kind, ref, _ in records if kind == "part"]
    names = sorted({n for _, _, _, r in records for n in r["files"]})
    ledger_names = [ref for _, kind, ref, _ in records if kind == "pass"]
    ledger_names += [n for n in ledger_files if n.startswith("http-") and _at(n) <= cutoff]
    keys = [k for p in part_paths if (t := store.read_if_there(p, ["dedup_key"])) is not None
            for k in t.column("dedup_key").to_pylist()]
    folded = ledger.compact(part_paths, [processed[n] for n in names], ledger_names)
    pipeline.keys.forget(keys)
    out["quarantine_files"] = pipeline.prune_quarantine(names, cutoff)
    out["ids"] = pipeline.admission.expire(horizon)
    out.update(parts=len(part_paths), landing_files=len(names), ledger_files=len(ledger_names), keys=len(keys),
               events=folded["received"], seconds=round(time.monotonic() - started, 3))
    return out


def _ledger_files(ledger) -> list[str]:
    return sorted(i.base_name for i in ledger.fs.get_file_info(pafs.FileSelector(ledger.root))
                  if i.base_name.endswith(".json") and i.base_name.startswith(("http-", "pass-")))


def _at(name: str) -> int:
    """The time_ns in a ledger file's name (``http-<at>.json``, ``pass-<at>.json``)."""
    return int(name.split("-", 1)[1].split(".", 1)[0])
