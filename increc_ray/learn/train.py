"""The incremental trainer: a Ray Train ``TorchTrainer`` worker that never stops learning.

The worker tails the clean store (``increc_ray.landing.CleanStore``) from
its checkpointed offset, feeds new events to ``IncrementalLearner`` (the
Ray-free update step), and after each update hands a new numbered weight
version to the registry (``increc_ray.serve.registry``) through a Serve handle.
Every ``trainer.checkpoint_every`` updates it reports a Ray Train checkpoint
holding model, optimizer, vocabulary, user sequences, stream offset and
version, so a restarted trainer resumes exactly where it stopped.

The offset is (part seq, rows consumed in that part): a large part (say a
whole MovieLens file dropped into the landing folder) is learned in slices
of ``trainer.max_new_events`` without ever re-applying a row.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
import uuid

import pyarrow as pa

from increc_ray.config import Config

logger = logging.getLogger("increc_ray.learn.train")

CHECKPOINT_FILE = "trainer_state.pt"
RUN_NAME = "increc-trainer"


class StreamCursor:
    """Reads the clean store from an offset, in slices of at most ``max_rows`` rows."""

    def __init__(self, store, seq: int = -1, row: int = 0) -> None:
        self.store, self.seq, self.row = store, seq, row  # next row to read is `row` of part `seq`
        self._cache: tuple[int, pa.Table] | None = None

    def next_slice(self, max_rows: int) -> tuple[pa.Table | None, float | None]:
        """Up to ``max_rows`` unread rows and the write time of the part they come from."""
        parts = self.store.parts(after=self.seq - 1)
        for seq, path in parts:
            if self._cache is None or self._cache[0] != seq:
                self._cache = (seq, self.store.read(path))
            table = self._cache[1]
            start = self.row if seq == self.seq else 0
            if start >= table.num_rows:
                continue
            piece = table.slice(start, max_rows)
            self.seq, self.row = seq, start + piece.num_rows
            written = self.store.fs.get_file_info(path).mtime_ns
            return piece, (written / 1e9 if written else None)
        return None, None

    def offset(self) -> dict:
        return {"seq": self.seq, "row": self.row}


def _save_checkpoint(learner, cursor: StreamCursor, version: int, n_updates: int, metrics: dict,
                     live: dict | None) -> None:
    import torch
    import ray.train

    with tempfile.TemporaryDirectory() as tmp:
        torch.save({"learner": learner.state_dict(), "offset": cursor.offset(), "version": version,
                    "n_updates": n_updates, "live": live}, os.path.join(tmp, CHECKPOINT_FILE))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_v{version:08d}_u{n_updates:08d}")


def _restore(cfg: Config, device: str):
    """(learner, cursor offset, last version, n_updates, live weights or None) from the latest
    checkpoint, or a fresh start."""
    import torch
    import ray.train

    from increc_ray.learn.learner import IncrementalLearner

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = torch.load(os.path.join(d, CHECKPOINT_FILE), map_location=device, weights_only=False)
        # the deployed settings, not the saved ones; a model shape it cannot apply fails the start
        learner = IncrementalLearner.from_state_dict(state["learner"], device=device, model_cfg=cfg.model,
                                                     trainer_cfg=cfg.trainer)
        logger.info("resumed from checkpoint: version %s offset %s", state["version"], state["offset"])
        return learner, state["offset"], state["version"], state["n_updates"], state.get("live")
    return IncrementalLearner(cfg.model, cfg.trainer, device=device), {"seq": -1, "row": 0}, 0, 0, None


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: tail the clean store, update, gate, publish, checkpoint; forever."""
    import ray
    import ray.train.torch
    from ray import serve

    from increc_ray import telemetry
    from increc_ray.ingest.landing import CleanStore
    from increc_ray.learn.gate import Gate, GateKeeper, Snapshot
    from increc_ray.learn.versions import VersionCounter

    cfg = Config.from_dict(loop_config["config"])
    tcfg, gcfg = cfg.trainer, cfg.gate
    device = str(ray.train.torch.get_device())
    learner, offset, version, n_updates, saved_live = _restore(cfg, device)
    versions = VersionCounter(cfg.version_file, at_least=version)
    cursor = StreamCursor(CleanStore(cfg.clean_dir), offset["seq"], offset["row"])
    registry = serve.get_deployment_handle(loop_config["registry_deployment"], loop_config["app_name"])
    stop_file = loop_config.get("stop_file")
    last_ckpt_updates = n_updates
    gate = Gate(gcfg)

    def publish(weights: dict) -> int:
        registry.publish.remote(weights).result()
        telemetry.set_gauge("increc_model_version", weights["version"])
        return weights["version"]

    # What serving has live: the registry's version if it outlived us, else the checkpoint's live
    # weights, republished under a new number (versions never repeat).
    got = registry.wait_newer.remote(0, 0.1).result()
    live_weights = ray.get(got[1][0]) if got else saved_live
    if live_weights is not None and not got:
        live_weights = {**live_weights, "version": versions.next(), "created_at": time.time()}
        publish(live_weights)
    if live_weights is not None:
        gate.live = Snapshot.from_weights(live_weights)

    def report_progress() -> None:
        # Consumed is not the same as published: tell the registry so /status shows true lag.
        registry.progress.remote({"offset": cursor.offset(), "pending_targets": learner.pending_targets,
                                  "events_seen": learner.n_events, "n_items": learner.n_items,
                                  "version": versions.last, "gate": gate.status(), "worker_pid": os.getpid()})

    keeper = GateKeeper(learner, gate, versions.next, publish)

    report_progress()
    # clean events read since the last update: an update runs once trainer.min_new_events wait,
    # the step the stream replay (increc_ray.evaluate) takes too
    waiting = learner.pending_targets
    while not (stop_file and os.path.exists(stop_file)):
        events, written_at = cursor.next_slice(tcfg.max_new_events)
        if events is None:
            time.sleep(tcfg.clean_store_poll_interval_s)
            continue
        if gcfg.enabled:  # the candidate, the live version and popularity meet the events first
            _log_decision(keeper.test(events))
        online = learner.evaluate_next(events, k=10) if versions.last else None  # test-then-train quality
        learner.observe(events)
        telemetry.inc("increc_events_applied_total", events.num_rows)
        report_progress()
        waiting += events.num_rows
        if waiting < tcfg.min_new_events:
            continue
        waiting = 0
        stats = learner.update()
        if stats is None:
            continue
        n_updates += 1
        metrics = {"loss": stats.loss, "n_targets": stats.n_targets, "n_sequences": stats.n_sequences,
                   "n_replay": stats.n_replay, "lr": stats.lr, "update_seconds": stats.seconds,
                   "n_items": stats.n_items, "updates": n_updates, "offset": cursor.offset(),
                   "device": device}
        if online is not None:
            metrics["online_hr10"] = online
            telemetry.set_gauge("increc_online_hr10", online)
        telemetry.set_gauge("increc_update_loss", stats.loss)
        telemetry.set_gauge("increc_update_seconds", stats.seconds)
        if written_at:
            telemetry.set_gauge("increc_train_lag_seconds", max(0.0, time.time() - written_at))
        if not gcfg.enabled:
            if n_updates % tcfg.publish_every == 0:
                publish(learner.export_weights(versions.next(), metrics))
        else:
            _log_decision(keeper.after_update())
        if n_updates - last_ckpt_updates >= tcfg.checkpoint_every:
            _save_checkpoint(learner, cursor, versions.last, n_updates,
                             {k: v for k, v in metrics.items() if k != "offset"}, _live_artifact(learner, gate))
            last_ckpt_updates = n_updates
        report_progress()
    _save_checkpoint(learner, cursor, versions.last, n_updates, {"stopped": True}, _live_artifact(learner, gate))


def _log_decision(decision) -> None:
    from increc_ray import telemetry

    if decision is None:
        return
    telemetry.inc("increc_gate_decisions_total", outcome="promoted" if decision.promoted else "rejected")
    log = logger.info if decision.promoted else logger.warning
    log("gate: %s", decision.to_json())


def _live_artifact(learner, gate) -> dict | None:
    """The live weights as a publishable artifact, for a checkpoint (None while nothing is live)."""
    if gate.live is None:
        return None
    return learner.export_weights(gate.live.version, {"restored": True}, snapshot=gate.live)


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
