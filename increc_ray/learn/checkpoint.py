"""The learner's checkpoint state: everything needed to resume an ``IncrementalLearner`` exactly.

Only tensors and plain Python values. The state carries the model shape and the trainer
settings it was written with; a resume may run other trainer settings (the deployed ones),
but not another model shape, which would need the weights to be rebuilt.
"""

from __future__ import annotations

import warnings
from itertools import chain, repeat
from operator import itemgetter

import numpy as np
import torch

from increc_ray.config import ModelConfig, TrainerConfig, replace
from increc_ray.errors import ConfigError

STATE_FORMAT = 2  # 2: the item table has its own optimizer param group


def learner_state(learner, reuse: dict | None = None) -> dict:
    """The resumable state of ``learner`` (an ``IncrementalLearner``): a copy, which the learner's
    later updates leave alone (a checkpoint is written from it in a thread of its own,
    ``resume.CheckpointWriter``). ``reuse``, an earlier state nobody reads any more: its tensors
    take the copies where their shapes match, so the copy needs no fresh memory (at 1M items the
    item table and its AdamW moments are 1.5 GiB; fresh pages cost more than the copy)."""
    reuse = reuse or {}
    # the sequences as flat arrays; map and chain loop in C: a learner that knows 1M users took
    # 1.1 s here with comprehensions, on the loop (bench/checkpoint_scale.py)
    users = list(learner._seqs)
    seqs = list(learner._seqs.values())
    items, weights = list(map(itemgetter(0), seqs)), list(map(itemgetter(1), seqs))
    lens = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
    total = int(lens.sum())
    ema = learner._ema.state
    return {
        "format": STATE_FORMAT,
        "model_config": learner.model_cfg.model_dump(),
        "trainer_config": learner.trainer_cfg.model_dump(),
        "capacity": learner.model.capacity,
        "model": _copy(learner.model.state_dict(), reuse.get("model")),
        "optimizer": _copy(learner.optimizer.state_dict(), reuse.get("optimizer")),
        "vocab": learner.vocab.to_list(),
        "users": users,
        "seq_offsets": torch.from_numpy(np.concatenate([[0], np.cumsum(lens)])),
        "seq_items": torch.from_numpy(np.fromiter(chain.from_iterable(items), dtype=np.int64, count=total)),
        "seq_weights": torch.from_numpy(np.fromiter(chain.from_iterable(weights), dtype=np.float64, count=total)),
        "pending": dict(learner._pending),
        "n_pending_targets": learner._n_pending_targets,
        "reservoir": list(learner._reservoir),
        "n_users_seen": learner._n_users_seen,
        "lr_scale": learner._lr_scale,
        "loss_ema": learner._loss_ema,
        "np_rng": learner._rng.bit_generator.state,
        "torch_rng": learner._torch_rng.clone(),
        "n_updates": learner.n_updates,
        "n_events": learner.n_events,
        "ema": None if ema is None else _copy(ema, reuse.get("ema")),
        "ema_items": learner._ema.n_items,
        "item_counts": torch.tensor(learner._item_counts),  # copies: the learner goes on counting
        # expiry (absent before it existed: everything counts as seen at the next pass)
        "clock": learner._clock,
        "last_expiry": learner._last_expiry,
        "item_seen": torch.tensor(learner._item_seen),
        "user_seen": torch.from_numpy(np.fromiter(map(learner._user_seen.get, users, repeat(0)), dtype=np.int64,
                                                  count=len(users))),
        "expired": [learner.n_expired_users, learner.n_expired_items],
    }


def restore_learner(cls, state: dict, device: str = "cpu", model_cfg: ModelConfig | None = None,
                    trainer_cfg: TrainerConfig | None = None):
    """An ``cls`` (``IncrementalLearner``) resumed from ``state``.

    ``trainer_cfg`` (default: the saved one) is what the resumed learner runs. ``model_cfg``, when
    given, must be the saved shape: a different one raises ``ConfigError`` naming both.
    """
    fmt = state.get("format")
    if fmt not in (1, STATE_FORMAT):
        raise ConfigError(f"learner checkpoint format {fmt!r} is not readable here (expected 1 or {STATE_FORMAT})")
    saved = ModelConfig(**state["model_config"])
    if model_cfg is not None and _shape(model_cfg) != _shape(saved):
        raise ConfigError(f"the checkpoint's model shape {_shape(saved)} differs from the configured "
                          f"{_shape(model_cfg)}: a resumed trainer cannot change it (restore the old "
                          "model settings, or start from an empty data_dir/checkpoints)")
    if model_cfg is not None:
        saved = replace(saved, dropout=model_cfg.dropout)  # dropout is no shape: it may change
    self = cls(saved, trainer_cfg or saved_trainer_config(state["trainer_config"]), device=device)
    with torch.random.fork_rng(devices=[]):  # grow's fresh rows are overwritten by the load below
        self.model.grow(state["capacity"])
    self._rebuild_optimizer()  # on the grown parameter
    self.model.load_state_dict(state["model"])
    if fmt == STATE_FORMAT:
        configured = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        self.optimizer.load_state_dict(state["optimizer"])
        for group, hyper in zip(self.optimizer.param_groups, configured):
            group.update(hyper)  # the moments are kept; lr, decay and multipliers are the configured ones
    else:  # format 1 grouped the item table with the encoder: resume with fresh optimizer moments
        warnings.warn("learner state format 1: optimizer moments are reset (the model, sequences "
                      "and offset are kept)", stacklevel=2)
    from increc_ray.learn.vocab import ItemVocab

    self.vocab = ItemVocab.from_list(state["vocab"])
    off = state["seq_offsets"].tolist()
    items, weights = state["seq_items"].tolist(), state["seq_weights"].tolist()
    self._seqs = {u: (items[off[i]:off[i + 1]], weights[off[i]:off[i + 1]]) for i, u in enumerate(state["users"])}
    self._pending = dict(state["pending"])
    self._n_pending_targets = state["n_pending_targets"]
    self._reservoir = list(state["reservoir"])
    self._n_users_seen = state["n_users_seen"]
    self._lr_scale, self._loss_ema = state["lr_scale"], state["loss_ema"]
    self._rng.bit_generator.state = state["np_rng"]
    self._torch_rng = state["torch_rng"].cpu().clone()  # map_location may have moved it
    self.n_updates, self.n_events = state["n_updates"], state["n_events"]
    ema = state.get("ema") if self.trainer_cfg.ema_decay > 0 else None  # absent before ema_decay existed
    self._ema.state = None if ema is None else {k: v.to(self.device) for k, v in ema.items()}
    self._ema.n_items = state.get("ema_items", self.n_items)  # absent in checkpoints before it existed
    counts = state.get("item_counts")  # absent before rare-item steps: count the kept histories
    self._item_counts = (counts.numpy().copy() if counts is not None
                         else np.bincount(state["seq_items"].numpy(), minlength=self.n_items + 1))
    self._clock, self._last_expiry = state.get("clock"), state.get("last_expiry")
    item_seen = state.get("item_seen")
    self._item_seen = item_seen.numpy().copy() if item_seen is not None else np.zeros(self.n_items + 1, np.int64)
    user_seen = state.get("user_seen")
    if user_seen is not None:
        self._user_seen = {u: t for u, t in zip(state["users"], user_seen.tolist()) if t}
    self.n_expired_users, self.n_expired_items = state.get("expired", (0, 0))
    self._holes = torch.as_tensor(self.vocab.holes(), device=self.device)
    return self


def rollback_weights(learner, state: dict[str, torch.Tensor] | None, vocab: list[str] | None = None) -> None:
    """Roll ``learner``'s weights back to ``state``, a snapshot whose item rows are those of the
    ids ``vocab`` (None: a fresh model). Rows are matched by item id, not position (a full pass
    since may have numbered the items otherwise); an id the learner does not know is added, and
    an item the snapshot never saw starts near its mean item. The optimizer moments, the moving
    average and the adaptive lr start afresh (they may hold the NaNs that caused the rollback).
    User sequences are data, and stay."""
    from increc_ray.learn.ema import WeightAverage
    from increc_ray.learn.model import SeqRecModel

    if state is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(learner.trainer_cfg.seed)
            state, vocab = SeqRecModel(learner.model_cfg).state_dict(), []
    n_old = learner.n_items
    rows_of = [i + 1 for i, item_id in enumerate(vocab) if item_id is not None]  # the snapshot's holes stay out
    vocab = [vocab[r - 1] for r in rows_of]
    known = learner.vocab.lookup(vocab)
    added = learner.vocab.add(vocab)
    reused = np.unique(added[(known == 0) & (added <= n_old)])
    if len(reused):
        learner._reuse_rows(reused)
    if learner.n_items > n_old:
        learner._add_item_rows(n_old)
        learner._item_counts = np.pad(learner._item_counts, (0, learner.n_items + 1 - len(learner._item_counts)))
        learner._item_seen = np.pad(learner._item_seen, (0, learner.n_items + 1 - len(learner._item_seen)))
        learner._counts_changed()
    with torch.no_grad():
        live = learner.model.state_dict()
        for key, value in state.items():
            if key != "item_emb.weight":
                live[key].copy_(value)
                continue
            rows, emb = value[torch.as_tensor(rows_of, dtype=torch.long)].to(live[key].device), live[key]
            emb[0] = value[0].to(emb.device)  # padding
            if len(vocab):
                emb[1: learner.n_items + 1] = rows.mean(0)
                emb[torch.as_tensor(learner.vocab.lookup(vocab), device=emb.device)] = rows
            else:  # a fresh model: every item starts afresh
                learner._add_item_rows(0)
    learner._rebuild_optimizer()
    learner._row_log.invalidate()  # every row may have moved
    learner._ema = WeightAverage(learner.trainer_cfg.ema_decay)
    learner._lr_scale, learner._loss_ema = 1.0, None


# trainer_config keys written before issue 10 renamed them (old -> new)
RENAMED_TRAINER_KEYS = {"history_len": "kept_items_per_user", "poll_interval_s": "clean_store_poll_interval_s"}


def saved_trainer_config(saved: dict) -> TrainerConfig:
    """The TrainerConfig of a checkpoint's ``trainer_config``, old key names mapped to new ones."""
    return TrainerConfig(**{RENAMED_TRAINER_KEYS.get(k, k): v for k, v in saved.items()})


def _shape(cfg: ModelConfig) -> dict:
    """The fields that fix the weights' shapes (dropout does not)."""
    d = cfg.model_dump()
    return {k: d[k] for k in ("arch", "d_model", "n_layers", "n_heads", "max_len")}


def _copy(obj, old=None):
    """``obj`` (tensors, and dicts and lists of them) copied to the CPU, each tensor into ``old``'s
    tensor at the same place where that has its shape and type."""
    if torch.is_tensor(obj):
        obj = obj.detach()
        if (torch.is_tensor(old) and old.device.type == "cpu" and old.shape == obj.shape
                and old.dtype == obj.dtype and old.is_contiguous()):
            return old.copy_(obj)
        return obj.cpu().clone()
    if isinstance(obj, dict):
        old = old if isinstance(old, dict) else {}
        return {k: _copy(v, old.get(k)) for k, v in obj.items()}
    if isinstance(obj, list):
        old = old if isinstance(old, list) and len(old) == len(obj) else [None] * len(obj)
        return [_copy(v, o) for v, o in zip(obj, old)]
    return obj
