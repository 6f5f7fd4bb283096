"""Where a trainer resumes: its Ray Train checkpoints, written and read.

Every ``trainer.checkpoint_every`` updates the worker (``increc_ray.learn.train``) reports a Ray
Train checkpoint holding the learner (model, optimizer, vocabulary, user sequences), the stream
offset and the version, as safetensors plus JSON (``learn.serialize``: nothing is unpickled),
written by a thread of its own (``CheckpointWriter``). A restarted worker resumes from the
checkpoint Ray Train registered, or, when a whole-cluster crash left none registered, from the
newest one on disk that reads whole.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from typing import Callable

from increc_ray.config import Config
from increc_ray.errors import ConfigError

logger = logging.getLogger("increc_ray.learn.train")

CHECKPOINT_NAME = "trainer_state"  # trainer_state.safetensors + trainer_state.json (learn.serialize)
LEGACY_CHECKPOINT_FILE = "trainer_state.pt"  # a torch pickle, before safetensors: read with weights_only
RUN_NAME = "increc-trainer"


def checkpoint_due(tcfg, updates_since: int, seconds_since: float, last_seconds: float) -> bool:
    """Whether the trainer checkpoints now: ``trainer.checkpoint_every`` updates since the last
    one, and at least its duration x (1 / ``trainer.checkpoint_max_share`` - 1) since it ended,
    so that checkpoints take at most that share of the trainer's time."""
    rest_s = last_seconds * (1.0 / tcfg.checkpoint_max_share - 1.0)
    return updates_since >= tcfg.checkpoint_every and seconds_since >= rest_s


class CheckpointWriter:
    """Writes the trainer's checkpoints in a thread of its own: the loop pays for the snapshot
    only, a copy into the last snapshot's memory (README table ``checkpoint-scale``: at 1M items
    0.65 s against 5.6 s for the whole checkpoint, all of which the trainer used to spend learning
    nothing). The write's file I/O runs without the GIL.

    One write at a time: ``start`` waits for the one before. A finished write is reported to Ray
    Train by the loop, at its next ``collect`` (Ray Train's reports stay the loop's, in order), and
    then ``reported(offset)`` runs with the stream offset it holds. With a local
    ``checkpoint_dir`` the thread writes into the run's folder, under a name that the listings skip
    until it is whole, and Ray Train copies nothing; a remote one is written to a temporary folder
    that Ray Train uploads from a thread of its own.
    """

    def __init__(self, checkpoint_dir: str, reported: Callable[[dict], None] = lambda offset: None,
                 report: Callable[[str, str, dict, bool], None] | None = None) -> None:
        self.root = None if "://" in checkpoint_dir else os.path.join(os.path.abspath(checkpoint_dir), RUN_NAME)
        self._reported, self._report = reported, report or _report_to_ray_train
        self._thread: threading.Thread | None = None
        self._written: tuple | None = None  # (folder, name, metrics, offset): written, not reported
        self._state: dict | None = None  # the last snapshot's learner state: the next one copies into it
        self.ended_at = time.monotonic()  # when the last write ended
        self.seconds = 0.0  # the last checkpoint, from its snapshot until written
        self.snapshot_seconds = 0.0  # of it, the loop's: the snapshot
        self.written = self.failed = 0
        if self.root is not None and os.path.isdir(self.root):  # left by a worker killed while writing
            for n in os.listdir(self.root):
                if n.endswith(".partial"):
                    shutil.rmtree(os.path.join(self.root, n), ignore_errors=True)

    @property
    def busy(self) -> bool:
        """A write is under way, or written and not reported yet."""
        return self._thread is not None

    def start(self, learner, offset: dict, version: int, n_updates: int, metrics: dict,
              live: dict | None) -> None:
        """Snapshot ``learner`` (and the rest of a checkpoint) now; write it in the background."""
        self.wait()
        started = time.monotonic()
        self._state = state = learner.state_dict(reuse=self._state)
        tree = {"learner": state, "offset": offset, "version": version, "n_updates": n_updates, "live": live}
        self.snapshot_seconds = time.monotonic() - started
        self._thread = threading.Thread(target=self._write, name="increc-checkpoint", daemon=True,
                                        args=(tree, self._name(version, n_updates), metrics, offset, started))
        self._thread.start()

    def collect(self) -> bool:
        """Report a write that has finished to Ray Train (True), if there is one."""
        if self._thread is None or self._thread.is_alive():
            return False
        self._thread.join()
        self._thread, written, self._written = None, self._written, None
        if written is None:  # it failed (logged): the next checkpoint tries again
            return False
        folder, name, metrics, offset = written
        self._report(folder, name, metrics, self.root is not None)
        self.written += 1
        self._reported(offset)
        return True

    def wait(self) -> bool:
        """Wait for the write under way, and report it."""
        if self._thread is not None:
            self._thread.join()
        return self.collect()

    def _name(self, version: int, n_updates: int) -> str:
        """``checkpoint_v<version>_u<updates>``, with a suffix where that is taken (a checkpoint at
        a stop may follow one with no update between): Ray Train deletes a folder it no longer
        keeps, and must not delete a newer checkpoint written over it."""
        name = base = f"checkpoint_v{version:08d}_u{n_updates:08d}"
        n = 0
        while self.root is not None and os.path.exists(os.path.join(self.root, name)):
            n += 1
            name = f"{base}_{n}"
        return name

    def _write(self, tree: dict, name: str, metrics: dict, offset: dict, started: float) -> None:
        from increc_ray.learn import serialize

        if self.root is None:
            folder = staging = tempfile.mkdtemp(prefix="increc-checkpoint-")
        else:
            folder, staging = os.path.join(self.root, name), os.path.join(self.root, f".{name}.partial")
        try:
            os.makedirs(staging, exist_ok=True)
            serialize.save_tree(tree, staging, CHECKPOINT_NAME)
            if staging != folder:
                os.rename(staging, folder)  # whole: now the listings see it
            self._written = (folder, name, metrics, offset)
        except Exception:
            self.failed += 1
            shutil.rmtree(staging, ignore_errors=True)
            logger.exception("checkpoint %s could not be written; the next one tries again", name)
        finally:
            self.ended_at = time.monotonic()
            self.seconds = self.ended_at - started


def _report_to_ray_train(folder: str, name: str, metrics: dict, local: bool) -> None:
    """Register the checkpoint in ``folder``: one in the run's folder as it is; a temporary one
    uploaded by Ray Train's thread, then deleted."""
    import ray.train
    from ray.train import CheckpointUploadMode

    checkpoint = ray.train.Checkpoint.from_directory(folder)
    if local:
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name,
                         checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD)
    else:
        ray.train.report(metrics, checkpoint=checkpoint, checkpoint_dir_name=name,
                         checkpoint_upload_mode=CheckpointUploadMode.ASYNC, delete_local_checkpoint_after_upload=True)


def restore(cfg: Config, device: str):
    """(learner, cursor offset, last version, n_updates, live weights or None) from the latest
    checkpoint, or a fresh start."""
    import ray.train

    from increc_ray.learn.learner import IncrementalLearner

    ckpt = ray.train.get_checkpoint()
    state = None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = read_checkpoint(d, device)
    else:
        state = _unregistered_checkpoint(cfg, device)
    if state is not None:
        # the deployed settings, not the saved ones; a model shape it cannot apply fails the start
        learner = IncrementalLearner.from_state_dict(state["learner"], device=device, model_cfg=cfg.model,
                                                     trainer_cfg=cfg.trainer)
        logger.info("resumed from checkpoint: version %s offset %s", state["version"], state["offset"])
        return learner, state["offset"], state["version"], state["n_updates"], state.get("live")
    return IncrementalLearner(cfg.model, cfg.trainer, device=device), {"seq": -1, "row": 0}, 0, 0, None


def checkpoints_on_disk(cfg: Config) -> list[str]:
    """The checkpoint folders of the run on a local ``checkpoint_dir``, newest first (their names
    order by version, then updates, then suffix)."""

    root = os.path.join(cfg.checkpoint_dir, RUN_NAME)
    if "://" in cfg.checkpoint_dir or not os.path.isdir(root):
        return []
    named = [(m.group(1), int(m.group(2) or 0), m.group(0)) for m in
             (re.fullmatch(r"(checkpoint_v\d{8}_u\d{8})(?:_(\d+))?", n) for n in os.listdir(root)) if m]
    return [os.path.join(root, n) for *_, n in sorted(named, reverse=True)]


def _unregistered_checkpoint(cfg: Config, device: str) -> dict | None:
    """With no checkpoint registered by Ray Train: the newest one on disk that reads whole. A
    whole-cluster crash between the worker writing a checkpoint and the controller recording it
    in its run snapshot would otherwise start the trainer cold."""
    for path in checkpoints_on_disk(cfg):
        try:
            state = read_checkpoint(path, device)
        except Exception as e:  # cut short by the crash: try the one before
            logger.warning("skipping checkpoint %s (%s)", path, type(e).__name__)
            continue
        logger.warning("Ray Train has no checkpoint registered; resuming from %s", path)
        return state
    return None


def read_checkpoint(directory: str, device: str = "cpu") -> dict:
    """The trainer state in a checkpoint directory: safetensors + JSON (``learn.serialize``), or a
    legacy torch pickle read with torch's ``weights_only`` unpickler (tensors and plain values
    only: it runs no code); anything else raises ``ConfigError`` saying what to do."""
    from increc_ray.learn import serialize

    if serialize.exists(directory, CHECKPOINT_NAME):
        return serialize.load_tree(directory, CHECKPOINT_NAME, device)
    legacy = os.path.join(directory, LEGACY_CHECKPOINT_FILE)
    if os.path.exists(legacy):
        import torch

        try:
            return torch.load(legacy, map_location=device, weights_only=True)
        except Exception as e:
            raise ConfigError(f"{legacy}: a legacy pickle checkpoint that the safe reader refuses "
                              f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); it is never unpickled "
                              "in full. Start from an empty data_dir/checkpoints (the clean store is kept "
                              "and is learned again)") from None
    raise ConfigError(f"{directory}: no trainer checkpoint ({CHECKPOINT_NAME}.json) in it")
