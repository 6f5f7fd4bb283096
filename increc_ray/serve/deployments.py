"""The back-end deployments behind the Recommender, one replica each.

* ``UserHistory``: users' recent items and the popularity fallback (read-your-writes).
* ``EventIngest``: HTTP events -> landing zone, durably; a background thread keeps cleaning
  the landing zone with Ray Data into the clean store and feeds new rows to ``UserHistory``.
* ``ModelTrainer``: supervises the Ray Train worker (``increc_ray.learn.train``) and holds the
  ``WeightRegistry`` that replicas long-poll for new weight versions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import threading
import time
import uuid

import pyarrow as pa
from ray import serve
from ray.serve.handle import DeploymentHandle

from increc_ray import telemetry
from increc_ray.config import Config
from increc_ray.ingest.landing import CleanStore, LandingZone
from increc_ray.ingest.pipeline import EventPipeline, pending_http_rows
from increc_ray.learn.train import TrainerRunner
from increc_ray.learn.versions import WeightArchive
from increc_ray.serve import gcwatch
from increc_ray.serve.history import HISTORY_COLUMNS, UserHistoryIndex
from increc_ray.serve.quantized import Int8Settings
from increc_ray.serve.registry import WeightRegistry
from increc_ray.serve.sync import ChangeLog, Leases, Snapshots

logger = logging.getLogger("increc_ray.serve")


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1000)
class UserHistory:
    """Users' recent items and the popularity fallback, shared by all serving replicas.

    Recommender replicas keep copies of the index, fed by ``follow`` (a long-poll on the change
    log); ``append`` answers once every live copy has the rows (``increc_ray.serve.sync``)."""

    def __init__(self, config: dict) -> None:
        cfg = Config.from_dict(config)
        self.index = UserHistoryIndex(cfg.serving.recent_items_per_user, cfg.serving.popularity_half_life_s,
                                      cfg.serving.user_ttl_s, cfg.serving.item_ttl_s)
        # Pending files first, then the store: a file cleaned in between is read twice (and
        # counted once, by dedup_key), never missed.
        pending = [rows.select(HISTORY_COLUMNS) for _, rows in pending_http_rows(LandingZone(cfg.landing_uri), cfg)]
        self.index.rebuild(CleanStore(cfg.clean_dir).read_all(columns=HISTORY_COLUMNS), pending)
        self.log = ChangeLog()
        self.leases = Leases(cfg.serving.history_lease_s)
        self._logged = asyncio.Condition()  # new log entries
        self._acked = asyncio.Condition()  # a subscriber acknowledged (or its lease may have run out)
        self._snapshots = Snapshots()  # one snapshot serves the copies starting within a minute
        gcwatch.watch()  # its collections, timed from here on (``stats``)

    async def append(self, events: pa.Table) -> int:
        added = self.index.append_new(events)
        if not added.num_rows:
            return 0
        seq = self.log.add(added.select([c for c in HISTORY_COLUMNS if c in added.column_names]))
        async with self._logged:
            self._logged.notify_all()
        await self._until_acknowledged(seq)
        return added.num_rows

    async def _until_acknowledged(self, seq: int) -> None:
        """Until every subscriber with a live lease has applied ``seq`` (or its lease ran out)."""
        async with self._acked:
            while behind := self.leases.behind(seq):
                try:
                    await asyncio.wait_for(self._acked.wait(), timeout=min(behind.values()) + 0.01)
                except asyncio.TimeoutError:
                    pass

    async def follow(self, sub: str, epoch: str | None, after: int, timeout_s: float) -> dict:
        """A copy's long-poll: it has applied the log up to ``after`` (of ``epoch``). Answers the
        rows logged since, at once or within ``timeout_s``; or a snapshot of the whole index when
        the copy is new, of an earlier epoch (this replica restarted), or too far behind."""
        self.leases.ack(sub, after if epoch == self.log.epoch else -1)
        async with self._acked:
            self._acked.notify_all()
        if (rows := self.log.since(epoch, after)) is None:
            # pickled between two appends (now or up to a minute ago), with the rows logged since
            # it: the answer describes the index at log.seq, as a poll's must (a copy trusts itself
            # from the moment it sent the poll, so an append answered before then must be in it)
            snapshot, rows = self._snapshots.get(self.log, lambda: pickle.dumps(self.index))
            return {"epoch": self.log.epoch, "seq": self.log.seq, "snapshot": snapshot, "rows": rows}
        if not rows:
            async with self._logged:
                try:
                    await asyncio.wait_for(self._logged.wait_for(lambda: self.log.seq > after), timeout_s)
                except asyncio.TimeoutError:
                    return {"epoch": self.log.epoch, "seq": after, "rows": None}
            if (rows := self.log.since(epoch, after)) is None:
                return await self.follow(sub, epoch, after, timeout_s)
        return {"epoch": self.log.epoch, "seq": self.log.seq, "rows": rows}

    def context(self, user_id: str) -> tuple[list[str], list[str]]:
        return self.index.get(user_id)

    def popular(self, k: int, exclude: list[str]) -> list[tuple[str, float]]:
        return self.index.popular(k, exclude)

    def stats(self) -> dict:
        return {**self.index.stats(), "pid": os.getpid(), "log_seq": self.log.seq, "copies": self.leases.live(),
                "snapshots": self._snapshots.made, "snapshots_reused": self._snapshots.reused,
                "lease_expiries": self.leases.expired, "gc": gcwatch.watch().stats()}


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
class EventIngest:
    """Ingests HTTP events durably and keeps cleaning the landing zone with Ray Data."""

    def __init__(self, config: dict, history: DeploymentHandle) -> None:
        from ray.data import DataContext

        self.cfg = Config.from_dict(config)
        self.pipeline = EventPipeline(self.cfg)
        self.history = history
        self.last_error: str | None = None
        self.last_batch: dict = {}
        DataContext.get_current().enable_progress_bars = False
        gcwatch.watch()  # its collections, timed from here on (``status``)
        for kind in ("received", "applied", "quarantined", "duplicates", "pending", "applied_twice"):
            telemetry.watch("increc_ledger_events", lambda kind=kind: self.pipeline.ledger.snapshot()[kind], kind=kind)
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by an HTTP ingest: its landing file is cleaned now, not at the next poll
        threading.Thread(target=self._clean_forever, name="increc-cleaner", daemon=True).start()

    async def ingest(self, records: list) -> dict:
        report, clean = await asyncio.to_thread(self.pipeline.ingest, records)
        if clean.num_rows:
            await self.history.append.remote(clean)  # before answering: read-your-writes
            self._wake.set()
        return report.to_json()

    def _clean_forever(self) -> None:
        self._hand_over_last_part()
        pruned_at = -float("inf")
        while not self._stop.is_set():
            try:
                if time.monotonic() - pruned_at >= self.cfg.ingest.prune_interval_s:
                    pruned_at = time.monotonic()  # a failing prune waits for the next interval too
                    self._prune()
                summary, fresh = self.pipeline.process_pending()
                if fresh is not None and fresh.num_rows:
                    self.history.append.remote(fresh).result()
                if summary["files"]:
                    self.last_batch = summary
                    continue  # more may be waiting
            except Exception as e:  # keep the loop alive; the files stay in the landing zone
                self.last_error = f"{type(e).__name__}: {e}"
                logger.exception("cleaning pass failed")
                self._stop.wait(self.cfg.ingest.landing_poll_interval_s)  # a failing pass is not retried at once
            # dropped files are found at the next poll; an HTTP ingest wakes the loop at once
            self._wake.wait(self.cfg.ingest.landing_poll_interval_s)
            self._wake.clear()

    def _prune(self) -> None:
        """A retention pass (``increc_ray.ingest.retention``), between cleaning passes: no part is
        being written. A failure is logged and shown in ``/status``; the cleaning goes on."""
        try:
            self.pipeline.prune()
        except Exception as e:
            self.last_error = f"prune: {type(e).__name__}: {e}"
            logger.exception("retention pass failed")

    def _hand_over_last_part(self) -> None:
        """A replica killed between writing a clean part and handing its rows to user history
        would leave them out of history until that replica restarts: hand the newest part over
        again (appending is idempotent by dedup_key, so rows it already has count once)."""
        while not self._stop.is_set():
            try:
                last = self.pipeline.store.parts()[-1:]
                if last:
                    self.history.append.remote(self.pipeline.store.read(last[0][1], HISTORY_COLUMNS)).result()
                return
            except Exception:
                logger.exception("handing the newest clean part to user history failed; retrying")
                self._stop.wait(1.0)

    def status(self) -> dict:
        return {**self.pipeline.status(), "last_batch": self.last_batch, "last_error": self.last_error,
                "pid": os.getpid(), "gc": gcwatch.watch().stats()}

    def __del__(self) -> None:
        self._stop.set()
        self._wake.set()


# graceful_shutdown_timeout_s: time for the trainer to checkpoint and release its worker.
@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000,
                  graceful_shutdown_timeout_s=60)
class ModelTrainer:
    """Runs the incremental Ray Train trainer and holds the published weight versions."""

    def __init__(self, config: dict) -> None:
        self.cfg = Config.from_dict(config)
        self.registry = WeightRegistry(int8=Int8Settings.of(self.cfg.serving) if self.cfg.serving.index == "int8" else None)
        self._progress: dict = {}
        self._rollback: dict | None = None  # {version, id} until the worker has published it
        self._rolled_back: dict[str, int] = {}  # request id -> the version it was published as
        ctx = serve.get_replica_context()
        self.runner = TrainerRunner(self.cfg, ctx.app_name, ctx.deployment).start()

    async def publish(self, weights: dict) -> int:
        version = await self.registry.publish(weights)
        if self._rollback and weights.get("metrics", {}).get("rollback_id") == self._rollback["id"]:
            self._rolled_back[self._rollback["id"]] = version  # done (then cleared: the key reads it)
            self._rollback = None
        return version

    async def wait_newer(self, after: int, timeout_s: float):
        return await self.registry.wait_newer(after, timeout_s)

    async def int8_rows(self, base_id: str, timeout_s: float):
        return await self.registry.int8_rows(base_id, timeout_s)

    def progress(self, progress: dict) -> dict | None:
        """The trainer's read position, sent after every slice it consumes; answered with the
        pending rollback request, if any (the train worker carries it out)."""
        self._progress = progress
        return self._rollback

    async def rollback(self, version: int, wait_s: float = 30.0) -> dict:
        """Ask the train worker to serve the kept version ``version`` again (``learn.train``);
        waits up to ``wait_s`` for it to be published under its new number."""
        kept = WeightArchive(self.cfg.published_dir, self.cfg.trainer.keep_versions).versions()
        if version not in kept:
            return {"error": f"version {version} is not kept; these are: {kept}", "available": kept}
        request = self._rollback = {"version": version, "id": uuid.uuid4().hex}
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if (done := self._rolled_back.get(request["id"])) is not None:
                return {"status": "done", "rolled_back_to": version, "version": done}
            await asyncio.sleep(0.2)
        return {"status": "pending", "rolled_back_to": version, "version": None}

    def __del__(self) -> None:
        # Serve calls this on shutdown (redeploy, scale-down): stop cleanly so the next
        # trainer resumes from a fresh checkpoint and finds its CPU free.
        if not self.runner.stop(timeout_s=45):
            logger.warning("trainer did not stop within 45 s; its resources are released when its actors die")

    def status(self) -> dict:
        latest = self.registry.latest
        store = CleanStore(self.cfg.clean_dir)
        consumed = self._progress.get("offset", {}).get("seq", -1)
        return {"model_version": self.registry.version,
                "last_update_time": latest.published_at if latest else None,
                "last_update": latest.metrics if latest else None,
                "published": {**self.registry.counts, "weights_mib": round(self.registry.counts["weights_mib"], 1),
                              **({"int8": c} if (c := self.registry.int8_counts) else {})},
                "clean_parts_behind": max(0, store.last_seq() - consumed),
                "progress": {k: v for k, v in self._progress.items() if k != "gate"},
                "gate": self._progress.get("gate"),  # the champion/challenger decisions (learn.gate)
                "rollback_pending": self._rollback,
                "trainer": self.runner.status()}
