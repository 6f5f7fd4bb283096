"""The incremental trainer: a Ray Train ``TorchTrainer`` worker that never stops learning.

The worker tails the clean store (``increc_ray.landing.CleanStore``) from
its checkpointed offset, feeds new events to ``IncrementalLearner`` (the
Ray-free update step), and after each update hands a new numbered weight
version to the registry (``increc_ray.serve.registry``) through a Serve handle.
Every ``trainer.checkpoint_every`` updates it reports a Ray Train checkpoint
holding model, optimizer, vocabulary, user sequences, stream offset and
version (``increc_ray.learn.resume``), so a restarted trainer resumes exactly
where it stopped; the offset is a ``increc_ray.learn.cursor.StreamCursor``'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
import uuid


from increc_ray.config import Config
from increc_ray.learn import published
from increc_ray.learn.cursor import StreamCursor
from increc_ray.learn.resume import RUN_NAME, CheckpointWriter, checkpoint_due, restore

logger = logging.getLogger("increc_ray.learn.train")

PHASES = ("bootstrapping", "catching_up", "streaming")
# While idle the loop tells the registry its progress (``/status``) at most this often; after a
# slice or an update at once (the answer, read at the next report, carries a pending rollback)
REPORT_IDLE_S = 0.25


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: tail the clean store, update, gate, publish, checkpoint; forever."""
    _TrainWorker(loop_config).run()


class _TrainWorker:
    """The train loop's state: learner, cursor, gate, version counter, and the phase it is in
    (``bootstrapping`` during a full pass, ``catching_up`` while unread events wait,
    ``streaming`` otherwise), all of it reported to the registry for ``/status``."""

    def __init__(self, loop_config: dict) -> None:
        import ray.train.torch
        from ray import serve

        from increc_ray.ingest.landing import CleanStore
        from increc_ray.learn.gate import Gate, GateKeeper, Snapshot
        from increc_ray.learn.versions import KeepNewest, VersionCounter, WeightArchive
        from increc_ray.serve.registry import resolve

        cfg = self.cfg = Config.from_dict(loop_config["config"])
        self.device = str(ray.train.torch.get_device())
        self.learner, offset, version, self.n_updates, saved_live = restore(cfg, self.device)
        self.versions = VersionCounter(cfg.version_file, at_least=version)
        self.archive = WeightArchive(cfg.published_dir, cfg.trainer.keep_versions)
        self._archiver = KeepNewest(self._keep)
        self._bases_sent: list[str] = []  # the overlay bases the registry was sent last, newest first
        self._published_at = -float("inf")  # monotonic time of the last publish
        self.coalesced = 0  # updates whose version was left out while catching up (trainer.catch_up_publish_s)
        self._rollback: dict | None = None  # a POST /admin/rollback the registry handed over
        self._rolled_back: str | None = None  # the id of the last one done
        self.cursor = StreamCursor(CleanStore(cfg.clean_dir), offset["seq"], offset["row"])
        self.registry = serve.get_deployment_handle(loop_config["registry_deployment"], loop_config["app_name"])
        self.stop_file = loop_config.get("stop_file")
        self.last_ckpt_updates = self.n_updates
        # Registered: the parts before a checkpoint's offset are never read again (the ingest may prune them).
        self._checkpoints = CheckpointWriter(cfg.checkpoint_dir, reported=self.cursor.store.write_consumed)
        self.loop_seconds: dict[str, float] = {}
        self.gate = Gate(cfg.gate)
        self.phase, self.full_pass_progress, self.last_full_pass = "", None, None
        self.set_phase("streaming")
        self.pass_covered = self.learner.n_events  # events up to the end of the last full pass (or the resume)

        # What serving has live: the registry's version if it outlived us, else the checkpoint's
        # live weights, republished under a new number (versions never repeat).
        got = self.registry.wait_newer.remote(0, 0.1).result()
        live_weights = resolve(ray.get(got[1][0])) if got else saved_live
        if live_weights is not None and not got:
            live_weights = {**live_weights, "version": self.versions.next(), "created_at": time.time()}
            self.publish(live_weights, pin=True)
        if live_weights is not None and not live_weights.get("fallback"):  # a marker: popularity is live
            self.gate.live = Snapshot.from_weights(live_weights)
        self.keeper = GateKeeper(self.learner, self.gate, self.versions.next, self.publish)

    def set_phase(self, phase: str) -> None:
        from increc_ray import telemetry

        if phase != self.phase:
            for p in PHASES:
                telemetry.set_gauge("increc_trainer_phase", float(p == phase), phase=p)
        self.phase = phase

    def stopping(self) -> bool:
        return bool(self.stop_file and os.path.exists(self.stop_file))

    def publish(self, weights: dict, pin: bool = False) -> int:
        from increc_ray import telemetry

        # Kept for rollback by a thread of its own (a safetensors write and an fsync per version,
        # which no longer stand between an event and its version going live); a rollback waits for
        # the writes before it reads (``KeepNewest.wait``), so it can return to whatever serving had.
        # One version waits at most, the newest: a version published while the one before it
        # still waits replaces it (``archive_skipped``). At 1M items a version is 500 MiB and its
        # write takes longer than an update, and a queue of them grew without bound.
        self._archiver.submit(weights, pin)  # pinned: kept even if newer versions follow at once
        # an overlay version (``learn.published``) leaves out a base the registry holds already; a
        # registry that does not hold it (it restarted) publishes nothing and answers 0: sent whole
        base_id = weights[published.ITEM_ROWS]["base_id"] if published.is_overlay(weights) else None
        sent = published.without_base(weights) if base_id is not None and base_id in self._bases_sent else weights
        if not self.registry.publish.remote(sent).result():
            self.registry.publish.remote(weights).result()
        if base_id is not None and base_id not in self._bases_sent:
            self._bases_sent = [base_id, *self._bases_sent][: published.BaseCopies.KEEP]
        telemetry.set_gauge("increc_model_version", weights["version"])
        self._published_at = time.monotonic()
        return weights["version"]

    def coalescing(self) -> bool:
        """Whether this update's version may be left out: see ``coalescing``."""
        return coalescing(self.cfg.trainer, self._unread, time.monotonic() - self._published_at)

    def _keep(self, weights: dict) -> None:
        try:
            self.archive.save(weights)  # an overlay: its base once, then the rows moved (read back whole)
        except OSError:
            logger.exception("could not keep version %s for rollback", weights["version"])

    def rollback(self) -> None:
        """Serve the kept version the pending ``POST /admin/rollback`` names again, under a new
        number (``rolled_back_to`` in its metrics), and learn on from its weights: the gate's live
        version is it, a candidate under test is dropped."""
        from increc_ray.learn.checkpoint import rollback_weights
        from increc_ray.learn.gate import Snapshot

        request, self._rollback = self._rollback, None
        self._rolled_back = request["id"]
        target = int(request["version"])
        self._archiver.wait()  # the archive writes in flight
        try:
            weights = self.archive.load(target)
        except KeyError:  # the registry checked it was kept; it was dropped since
            logger.warning("rollback to %d: not kept any more (kept: %s)", target, self.archive.versions())
            return
        weights = {**weights, "version": self.versions.next(), "created_at": time.time(),
                   "metrics": {"rolled_back_to": target, "rollback_id": request["id"]}}
        live = Snapshot.from_weights(weights)
        rollback_weights(self.learner, live.state(), live.vocab)
        self.gate.live, self.gate.candidate = live, None
        self.keeper.distrust()  # an operator went back: updates wait for a candidate to pass again
        self.publish(weights, pin=True)
        logger.warning("rolled back to version %d, serving it as version %d", target, weights["version"])
        self.checkpoint({"rolled_back_to": target})

    def report_progress(self, idle: bool = False) -> None:
        """Tell the registry what has been read and learned (``/status`` shows true lag: consumed is
        not published). Sent without waiting: the answer (a pending ``POST /admin/rollback``, if
        any) is read at the next report, so the loop does not wait a round trip per slice."""
        now = time.monotonic()
        if idle and now - self._reported_at < REPORT_IDLE_S:
            return
        self._reported_at = now
        learner = self.learner
        call, previous = self.registry.progress.remote({
            "offset": self.cursor.offset(), "pending_targets": learner.pending_targets,
            "events_seen": learner.n_events, "n_items": learner.n_items, "version": self.versions.last,
            "expiry": {"live_items": learner.vocab.n_live, "item_rows": learner.n_items, "users": learner.n_users,
                       "expired_items": learner.n_expired_items, "expired_users": learner.n_expired_users},
            "gate": {**self.gate.status(), "mode": self.cfg.gate.mode, "trusted": self.keeper.trusted,
                     "rolled_back": self.keeper.rolled_back},
            "worker_pid": os.getpid(), "phase": self.phase,
            "unread_events": self._unread, "full_pass": self.full_pass_progress,
            "loop_seconds": {k: round(v, 2) for k, v in self.loop_seconds.items()},
            "checkpoints": {"written": self._checkpoints.written, "failed": self._checkpoints.failed,
                            "last_seconds": round(self._checkpoints.seconds, 2),
                            "last_snapshot_seconds": round(self._checkpoints.snapshot_seconds, 2)},
            "archive_skipped": self._archiver.skipped, "coalesced_versions": self.coalesced,
            "last_full_pass": self.last_full_pass}), self._report
        self._report = call
        if previous is None:
            return
        try:  # bounded: a registry that is shutting down (a redeploy) must not hold the loop
            with self._timed("report"):
                request = previous.result(timeout_s=5.0)
        except Exception:
            return
        if request and request["id"] != self._rolled_back:  # answered: a rollback is asked for
            self._rollback = request

    _unread = 0
    _reported_at = -float("inf")
    _report = None  # the last report sent, its answer not read yet

    @contextlib.contextmanager
    def _timed(self, step: str):
        """Wall seconds of the loop by step, since start (``/status`` trainer.progress.loop_seconds:
        where the trainer's time goes, e.g. what an event waits for before it is learned)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.loop_seconds[step] = self.loop_seconds.get(step, 0.0) + time.perf_counter() - started

    def full_pass_reason(self, unread: int) -> str | None:
        # new events learned beyond what the last pass covered (its held-out tail is the pass's data)
        since = max(0, self.learner.n_events - self.pass_covered)
        return full_pass_reason(self.cfg.bootstrap, unread, self.learner.n_events, since)

    def full_pass(self, reason: str) -> None:
        """Train a fresh model on the whole store (``increc_ray.learn.bootstrap``); serving keeps the
        live version meanwhile. The cursor goes back to the first held-out event, so the held-out
        events and whatever arrived meanwhile are learned incrementally next."""
        from increc_ray import telemetry
        from increc_ray.learn.bootstrap import Stopped, fit_events
        from increc_ray.learn.gate import Snapshot

        events, starts = self.cursor.read_all()
        if events is None:
            return
        logger.info("full pass (%s) over %d events", reason, events.num_rows)
        started = time.time()
        self.full_pass_progress = {"reason": reason, "started_at": started}  # reported with the phase
        self.set_phase("bootstrapping")

        def progress(p: dict) -> None:
            self.full_pass_progress = {"reason": reason, "started_at": started, **p}
            self.report_progress()

        before = self.cursor.unread()
        try:
            learner, report, cut = fit_events(events, self.cfg, self.device, progress, self.stopping)
        except Stopped:  # shutting down: the checkpoint keeps the state from before the pass
            logger.info("full pass stopped: the deployment is shutting down")
            self.full_pass_progress = None
            return
        self.cursor.seek(self.cursor.offset_of(starts, cut))
        telemetry.inc("increc_events_applied_total", max(0, before - self.cursor.unread()))
        telemetry.inc("increc_full_passes_total", reason=reason.split(" ")[0])
        self.learner = self.keeper.learner = learner
        self.keeper.distrust()  # a fresh model: judged before any of its updates go live
        self.pass_covered = events.num_rows
        self.last_full_pass = {"reason": reason, "started_at": started, "finished_at": time.time(), **report}
        self.full_pass_progress = None
        logger.info("full pass done: %s", {k: v for k, v in report.items() if k != "history"})
        self.n_updates += 1
        if not self.cfg.gate.enabled:
            self.publish(learner.export_weights(self.versions.next(), {"full_pass": self.last_full_pass}))
        else:  # the fresh model is the next candidate
            self.gate.candidate = None
            decision = self.gate.propose(Snapshot.of(learner))
            if decision is None:  # judged at once only when nothing is live (see judge_on_holdout)
                decision = self.keeper.judge_on_holdout(events.slice(cut))
            _log_decision(decision)
        self.checkpoint({"full_pass": True})

    def checkpoint(self, metrics: dict, wait: bool = False) -> None:
        """Snapshot the trainer now and write it in the background (``wait``: and wait for it)."""
        self._checkpoints.start(self.learner, self.cursor.offset(), self.versions.last, self.n_updates, metrics,
                                _live_artifact(self.learner, self.gate))
        self.last_ckpt_updates = self.n_updates
        if wait:
            self._checkpoints.wait()

    def checkpoint_due(self) -> bool:
        """A checkpoint is due, none being written. Its share (``trainer.checkpoint_max_share``)
        counts the whole write, not only the loop's snapshot: a write takes disk and a core too."""
        ckpt = self._checkpoints
        return not ckpt.busy and checkpoint_due(self.cfg.trainer, self.n_updates - self.last_ckpt_updates,
                                                time.monotonic() - ckpt.ended_at, ckpt.seconds)

    def run(self) -> None:
        from increc_ray import telemetry

        tcfg, gcfg = self.cfg.trainer, self.cfg.gate
        if tcfg.nice:
            lower_priority(tcfg.nice)
        self.report_progress()
        # clean events read since the last update: an update runs once trainer.min_new_events
        # wait, the step the stream replay (increc_ray.evaluate) takes too; when behind, the loop
        # reads exactly that many, so an update covers the same events as in the replay
        waiting = self.learner.pending_targets
        waiting_since = time.monotonic()  # when the oldest event of those waiting was read
        online = None  # HR@10 of the weights before an update on the first slice it will learn

        def overdue() -> bool:  # trainer.max_update_delay_s: a slow stream updates on time, not count
            return bool(waiting and tcfg.max_update_delay_s and time.monotonic() - waiting_since >= tcfg.max_update_delay_s)

        while not self.stopping():
            self._checkpoints.collect()  # a write that has finished is registered with Ray Train
            if self._rollback:
                self.rollback()
            with self._timed("read"):
                self._unread = unread = self.cursor.unread()
            reason = self.full_pass_reason(unread)
            if reason:
                self.full_pass(reason)
                waiting, online = 0, None
                continue
            self.set_phase("catching_up" if unread > tcfg.min_new_events else "streaming")
            with self._timed("read"):
                events, written_at = self.cursor.next_slice(max(1, tcfg.min_new_events - waiting))
            learner = self.learner
            if events is None and not overdue():
                self.report_progress(idle=True)
                poll_s = tcfg.clean_store_poll_interval_s
                if waiting and tcfg.max_update_delay_s:  # look often enough to update on time
                    poll_s = min(poll_s, tcfg.max_update_delay_s / 4)
                with self._timed("idle"):
                    time.sleep(poll_s)
                continue
            if events is not None:
                self._unread = max(0, unread - events.num_rows)
                if gcfg.enabled:  # the candidate, the live version and popularity meet the events first
                    with self._timed("gate_test"):
                        _log_decision(self.keeper.test(events))
                if online is None and self.versions.last and not self.coalescing():  # test-then-train, on the first slice since an update
                    with self._timed("online_metric"):
                        online = learner.evaluate_next(events, k=10)
                with self._timed("observe"):
                    learner.observe(events)
                telemetry.inc("increc_events_applied_total", events.num_rows)
                if not waiting:
                    waiting_since = time.monotonic()
                waiting += events.num_rows
            if waiting < tcfg.min_new_events and not overdue():
                self.report_progress()
                continue
            waiting, update_online, online = 0, online, None
            with self._timed("update"):
                stats = learner.update()
            if stats is None:
                continue
            self.n_updates += 1
            metrics = {"loss": stats.loss, "n_targets": stats.n_targets, "n_sequences": stats.n_sequences,
                       "n_replay": stats.n_replay, "lr": stats.lr, "update_seconds": stats.seconds,
                       "n_items": stats.n_items, "updates": self.n_updates, "offset": self.cursor.offset(),
                       "events_seen": learner.n_events,
                       "device": self.device}
            if update_online is not None:
                metrics["online_hr10"] = update_online
                telemetry.set_gauge("increc_online_hr10", update_online)
            telemetry.set_gauge("increc_update_loss", stats.loss)
            telemetry.set_gauge("increc_update_seconds", stats.seconds)
            if written_at:
                telemetry.set_gauge("increc_train_lag_seconds", max(0.0, time.time() - written_at))
            with self._timed("publish"):  # the gate's judgment and publishing included
                coalesce = self.coalescing()
                if coalesce:
                    self.coalesced += 1
                    telemetry.inc("increc_coalesced_versions_total", 1)
                if not gcfg.enabled:
                    if self.n_updates % tcfg.publish_every == 0 and not coalesce:
                        self.publish(learner.export_weights(self.versions.next(), metrics))
                else:
                    _log_decision(self.keeper.after_update(publish=not coalesce))
            if self.checkpoint_due():
                with self._timed("checkpoint"):
                    self.checkpoint({k: v for k, v in metrics.items() if k != "offset"})
            self.report_progress()
        self.checkpoint({"stopped": True}, wait=True)
        self._archiver.shutdown()  # the version published last is kept before the worker exits


def lower_priority(nice: int) -> None:
    """Run this process at CPU priority ``nice`` (``trainer.nice``): every thread it has (on Linux
    a nice value is per thread, and torch's and Ray's threads already exist), and the threads they
    start later inherit it."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the process's priority
        tids = [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
        except OSError:  # a thread that has ended since the listing
            pass


def coalescing(tcfg, backlog: int, since_publish_s: float) -> bool:
    """Whether an update may leave its version (and the online metric) out: the trainer is catching
    up (``backlog``, the events still unread, is at least ``min_new_events``) and published less
    than ``catch_up_publish_s`` ago. The update that drains the backlog publishes."""
    return bool(tcfg.catch_up_publish_s) and backlog >= tcfg.min_new_events and since_publish_s < tcfg.catch_up_publish_s


def full_pass_reason(b, unread: int, learned: int, learned_since_full_pass: int) -> str | None:
    """Why the trainer should run a full pass now, or None (``b``: the bootstrap section):
    a cold trainer with ``min_events`` unread events; a backlog of at least ``min_events`` and
    ``backlog_ratio`` times the events learned (a burst, or a trainer that was down: a pass
    per doubling of what it has seen, so the passes cost at most twice the last one); or
    ``consolidate_every_events`` learned incrementally since the last pass."""
    if b.min_events and unread >= b.min_events:
        if not learned:
            return "cold start"
        if b.backlog_ratio and unread >= b.backlog_ratio * learned:
            return f"backlog of {unread} events against {learned} learned"
    if b.consolidate_every_events and learned_since_full_pass >= b.consolidate_every_events:
        return f"consolidation after {learned_since_full_pass} events"
    return None


def _log_decision(decision) -> None:
    from increc_ray import telemetry

    if decision is None:
        return
    telemetry.inc("increc_gate_decisions_total", outcome="promoted" if decision.promoted else "rejected")
    if not decision.promoted and decision.live_worse_than_popularity:  # the live version was demoted too
        telemetry.inc("increc_gate_decisions_total", outcome="demoted")
    log = logger.info if decision.promoted else logger.warning
    log("gate: %s", decision.to_json())


def _live_artifact(learner, gate) -> dict | None:
    """The live weights as a publishable artifact, for a checkpoint (None while nothing is live)."""
    if gate.live is None:
        return None
    return published.dense(learner.export_weights(gate.live.version, {"restored": True}, snapshot=gate.live))


def resolve_use_gpu(setting: str) -> bool:
    """``auto`` uses a GPU when the cluster has one."""
    if setting != "auto":
        return setting == "true"
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


class TrainerRunner:
    """Runs the TorchTrainer in a background thread, restarting it if it ever exits."""

    def __init__(self, cfg: Config, app_name: str, registry_deployment: str) -> None:
        self.cfg, self.app_name, self.registry_deployment = cfg, app_name, registry_deployment
        # The worker polls for this file between updates; a file (not an RPC) because the
        # replica that owns us may already be draining when it asks the trainer to stop.
        # Local temp dir: the train worker runs on this node (single-node for now).
        self.stop_file = os.path.join(tempfile.gettempdir(), f"increc-trainer-stop-{uuid.uuid4().hex}")
        self.use_gpu = resolve_use_gpu(cfg.trainer.use_gpu)
        self.runs = 0
        self.last_error: str | None = None
        self._thread = threading.Thread(target=self._run_forever, name="increc-trainer", daemon=True)

    def start(self) -> "TrainerRunner":
        self._thread.start()
        return self

    def _fit_once(self) -> None:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"config": self.cfg.to_dict(), "app_name": self.app_name,
                               "registry_deployment": self.registry_deployment, "stop_file": self.stop_file},
            scaling_config=ScalingConfig(num_workers=1, use_gpu=self.use_gpu,
                                         resources_per_worker={"CPU": 1, **({"GPU": 1} if self.use_gpu else {})}),
            run_config=RunConfig(name=RUN_NAME, storage_path=os.path.abspath(self.cfg.checkpoint_dir)
                                 if "://" not in self.cfg.checkpoint_dir else self.cfg.checkpoint_dir,
                                 checkpoint_config=CheckpointConfig(num_to_keep=2),
                                 failure_config=FailureConfig(max_failures=3)),
        )
        trainer.fit()

    def _run_forever(self) -> None:
        while not (self.stop_file and os.path.exists(self.stop_file)):
            self.runs += 1
            try:
                self._fit_once()
            except Exception as e:  # keep learning: log, back off, resume from the last checkpoint
                self.last_error = f"{type(e).__name__}: {e}"
                logger.exception("trainer run %d failed; restarting from the last checkpoint", self.runs)
                time.sleep(5.0)

    def stop(self, timeout_s: float) -> bool:
        """Ask the worker to checkpoint and exit, so its CPU/GPU reservation is released
        before a redeploy starts a new one; True if it stopped within ``timeout_s``."""
        with open(self.stop_file, "w"):
            pass
        self._thread.join(timeout_s)
        stopped = not self._thread.is_alive()
        if stopped:
            os.remove(self.stop_file)
        return stopped

    def status(self) -> dict:
        return {"runs": self.runs, "alive": self._thread.is_alive(), "use_gpu": self.use_gpu,
                "last_error": self.last_error}
