"""Where a trainer resumes: its Ray Train checkpoints, written and read.

Every ``trainer.checkpoint_every`` updates the worker (``increc_ray.learn.train``) reports a Ray
Train checkpoint holding the learner (model, optimizer, vocabulary, user sequences), the stream
offset and the version, as safetensors plus JSON (``learn.serialize``: nothing is unpickled). A
restarted worker resumes from the checkpoint Ray Train registered, or, when a whole-cluster crash
left none registered, from the newest one on disk that reads whole.
"""

from __future__ import annotations

import logging
import os
import tempfile

from increc_ray.config import Config
from increc_ray.errors import ConfigError
from increc_ray.learn.cursor import StreamCursor

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


def save_checkpoint(learner, cursor: StreamCursor, version: int, n_updates: int, metrics: dict,
                     live: dict | None) -> None:
    import ray.train

    from increc_ray.learn import serialize

    with tempfile.TemporaryDirectory() as tmp:
        serialize.save_tree({"learner": learner.state_dict(), "offset": cursor.offset(), "version": version,
                             "n_updates": n_updates, "live": live}, tmp, CHECKPOINT_NAME)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"checkpoint_v{version:08d}_u{n_updates:08d}")


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
    order by version, then updates)."""
    import re

    root = os.path.join(cfg.checkpoint_dir, RUN_NAME)
    if "://" in cfg.checkpoint_dir or not os.path.isdir(root):
        return []
    names = sorted((n for n in os.listdir(root) if re.fullmatch(r"checkpoint_v\d{8}_u\d{8}", n)), reverse=True)
    return [os.path.join(root, n) for n in names]


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
