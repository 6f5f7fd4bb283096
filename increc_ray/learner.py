"""The incremental update step: the exact code the live Ray Train worker runs (no Ray here).

Data flow: ``observe(events)`` appends each user's positive events to their item sequence
(adding new items to the vocab, growing the model if needed) and marks the new positions as
pending targets; ``update()`` takes optimizer steps on those new positions plus replayed
sequences from a reservoir of past users, then clears the pending targets.

Training examples are *slices*: (user, end, n) scores the n targets just before position
``end`` of the user's sequence, each with up to ``max_len`` preceding items as context. A user
with more new events than ``max_len`` (a binge, or a large file landing at once) gives several
slices, so every new event is learned; ``train_epoch`` slices whole kept histories the same way.

Loss: full softmax cross-entropy over every known item (pad and spare capacity rows are
never candidates), weighted by the event weight of each target.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from increc_ray.config import ModelConfig, TrainerConfig
from increc_ray.model import INIT_STD, ItemVocab, SeqRecModel, left_pad, masked_scores

# Adaptive lr schedule: an update whose loss exceeds the running average by LR_RISE_RATIO
# halves the lr (down to LR_FLOOR x base); otherwise it recovers by LR_RECOVER per update.
LR_RISE_RATIO = 1.25
LR_DECAY = 0.5
LR_RECOVER = 1.05
LR_FLOOR = 0.05
LOSS_EMA = 0.7  # weight of the old running average of the update loss (a window of ~3 updates)
STATE_FORMAT = 2  # 2: the item table has its own optimizer param group
EVAL_MAX_USERS = 1024  # users scored by evaluate_next per call (keeps it cheap on big slices)


@dataclass
class UpdateStats:
    loss: float  # mean training loss over the update's steps
    n_sequences: int  # users with new targets trained on
    n_targets: int  # new target positions trained on
    n_replay: int  # replayed sequences
    lr: float  # lr used for this update
    seconds: float
    n_items: int


class IncrementalLearner:
    """Keeps user sequences, the model and its optimizer; learns from new events as they come."""

    def __init__(self, model_cfg: ModelConfig, trainer_cfg: TrainerConfig, device: str = "cpu") -> None:
        self.model_cfg, self.trainer_cfg, self.device = model_cfg, trainer_cfg, torch.device(device)
        self.vocab = ItemVocab()
        torch_gen = torch.Generator().manual_seed(trainer_cfg.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(trainer_cfg.seed)  # model init is seeded, and leaves the global RNG alone
            self.model = SeqRecModel(model_cfg).to(self.device).train()
        self.optimizer = _make_optimizer(self.model, trainer_cfg)
        self._seqs: dict[str, tuple[list[int], list[float]]] = {}  # user -> (items, weights), oldest first
        self._pending: dict[str, int] = {}  # user -> new items since the last update
        self._n_pending_targets = 0
        self._reservoir: list[str] = []  # replay candidates (reservoir sample of users)
        self._n_users_seen = 0
        self._lr_scale = 1.0
        self._loss_ema: float | None = None
        self._rng = np.random.default_rng(trainer_cfg.seed)
        self._torch_rng = torch_gen.get_state()  # dropout and warm-start noise, kept apart from global
        self.n_updates = 0
        self.n_events = 0
        self._ema: dict[str, torch.Tensor] | None = None  # published weights when trainer.ema_decay > 0
        self._ema_items = 0  # items the moving average has rows for (later ones join from the model)
        self._item_counts = np.zeros(1, dtype=np.int64)  # positive events of each item index (0: pad)
        self._rare: tuple[torch.Tensor, torch.Tensor] | None = None  # _rare_rows until counts change

    @property
    def n_items(self) -> int:
        return len(self.vocab)

    @property
    def pending_targets(self) -> int:
        """New target positions waiting for the next ``update``."""
        return self._n_pending_targets

    def observe(self, events: pa.Table) -> int:
        """Add cleaned events (any order; processed by timestamp, stable). Returns new targets."""
        self.n_events += events.num_rows
        users, item_ids, weights = _positives(events)
        if not users:
            return 0
        n_old = self.n_items
        items = self.vocab.add(item_ids).tolist()
        if self.n_items > n_old:
            self._add_item_rows(n_old)
        self._item_counts = np.bincount(items, minlength=self.n_items + 1) + np.pad(
            self._item_counts, (0, self.n_items + 1 - len(self._item_counts)))
        self._rare = None

        keep = self._keep
        new_targets = 0
        for user, item, w in zip(users, items, weights):
            seq = self._seqs.get(user)
            if seq is None:
                seq = self._seqs[user] = ([], [])
                self._reservoir_add(user)
            seq[0].append(item)
            seq[1].append(w)
            n_pending = self._pending[user] = self._pending.get(user, 0) + 1
            if len(seq[0]) > keep + n_pending:  # pending items and their context stay until learned
                del seq[0][0], seq[1][0]
            if len(seq[0]) >= 2:  # a user's first item has no predecessor, so it is no target
                new_targets += 1
        self._n_pending_targets += new_targets
        return new_targets

    def update(self) -> UpdateStats | None:
        """Train on the pending targets plus replay; None when nothing is pending."""
        t0 = time.perf_counter()
        # slices over the new positions of each touched user (trimmed once they are learned)
        examples: list[tuple[str, int, int]] = []
        n_targets = 0
        for user, n_new in self._pending.items():
            L = len(self._seqs[user][0])
            n = min(n_new, L - 1)
            examples += self._slices(user, L, n)
            n_targets += n
        touched = list(self._pending)
        self._pending.clear()
        self._n_pending_targets = 0
        if not examples:
            self._trim_all(touched)
            return None
        replay = self._sample_replay(round(self.trainer_cfg.replay_ratio * len(examples)), {u for u, _, _ in examples})
        recent = self.trainer_cfg.replay_positions or self.model_cfg.max_len
        for u in replay:
            L = len(self._seqs[u][0])
            examples.append((u, L, min(recent, self.model_cfg.max_len, L - 1)))

        lr = self.trainer_cfg.lr * self._lr_scale
        self._set_lr(lr)
        bs = self.trainer_cfg.batch_size
        losses = []
        self.model.train()
        with self._own_torch_rng():
            for _ in range(self.trainer_cfg.steps_per_update):
                perm = self._rng.permutation(len(examples))
                for i in range(0, len(perm), bs):
                    losses.append(self._step([examples[j] for j in perm[i:i + bs]]))
        self._trim_all(touched)  # slice positions index the untrimmed sequences: trim after training
        self._update_ema()
        loss = float(np.mean(losses))
        self._adapt_lr(loss)
        self.n_updates += 1
        return UpdateStats(loss=loss, n_sequences=len(touched), n_targets=n_targets, n_replay=len(replay),
                           lr=lr, seconds=time.perf_counter() - t0, n_items=self.n_items)

    def train_epoch(self, users: Sequence[str] | None = None) -> float:
        """One shuffled pass over the whole kept sequence of each of ``users`` (default: all),
        in ``max_len``-long slices (every kept position is scored once).

        The offline (epoch-based) counterpart of ``update``: the same step and loss, every
        position of every sequence scored, at ``trainer.lr`` (times the adaptive scale, which
        only ``update`` moves). Pending targets are left alone. Returns the mean loss.
        """
        users = list(self._seqs) if users is None else list(users)
        examples = [ex for u in users for ex in self._slices(u, len(self._seqs[u][0]), len(self._seqs[u][0]) - 1)]
        assert examples, "train_epoch needs at least one user with two or more items"
        self._set_lr(self.trainer_cfg.lr * self._lr_scale)
        bs = self.trainer_cfg.batch_size
        losses, counts = [], []
        self.model.train()
        with self._own_torch_rng():
            perm = self._rng.permutation(len(examples))
            for i in range(0, len(perm), bs):
                batch = [examples[j] for j in perm[i:i + bs]]
                losses.append(self._step(batch))
                counts.append(len(batch))
        return float(np.average(losses, weights=counts))

    @torch.no_grad()
    def score_histories(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """Scores (B, n_items + 1) of every known item after each history of item indices
        (oldest first, last ``max_len`` used); column 0 (pad) is -inf. Eval mode, no dropout."""
        assert all(len(h) for h in histories), "every history needs at least one item"
        seqs = [list(h)[-self.model_cfg.max_len:] for h in histories]
        was_training = self.model.training
        self.model.eval()
        try:
            with self._published_weights():
                hidden = self.model(left_pad(seqs).to(self.device))[:, -1]  # (B, C)
                return masked_scores(self.model, hidden, self.n_items).cpu()
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def evaluate_next(self, events: pa.Table, k: int = 10) -> float | None:
        """Prequential HR@k: share of known users whose first new positive in ``events`` is in
        the current model's top-k. Call before ``observe(events)``; None when nobody qualifies."""
        users, item_ids, _ = _positives(events)
        first: dict[str, str] = {}
        for user, item in zip(users, item_ids):
            if user not in first and user in self._seqs and len(first) < EVAL_MAX_USERS:
                first[user] = item
        if not first:
            return None
        seqs = [self._seqs[u][0][-self.model_cfg.max_len:] for u in first]
        targets = torch.as_tensor(self.vocab.lookup(first.values()), device=self.device)  # (B,) 0 = new item: a miss
        self.model.eval()
        with self._published_weights():
            hidden = self.model(left_pad(seqs).to(self.device))[:, -1]  # (B, C)
            scores = masked_scores(self.model, hidden, self.n_items)
        self.model.train()
        top = scores.topk(min(k, self.n_items), dim=1).indices  # (B, k)
        return float(((top == targets[:, None]).any(1) & (targets > 0)).float().mean())

    def export_weights(self, version: int, metrics: dict | None = None) -> dict:
        """The published artifact: CPU numpy copies of the weights (their moving average when
        ``trainer.ema_decay`` > 0), with config and vocab."""
        weights = self._ema_padded() if self._ema is not None else self.model.state_dict()
        return {
            "version": int(version),
            "model_config": dataclasses.asdict(self.model_cfg),
            "vocab": self.vocab.to_list(),
            "state_dict": {k: v.detach().cpu().numpy().copy() for k, v in weights.items()},
            "metrics": dict(metrics or {}),
            "created_at": time.time(),
        }

    def state_dict(self) -> dict:
        """Everything needed to resume exactly; only tensors and plain Python values (torch.save-able)."""
        users = list(self._seqs)
        lens = [len(self._seqs[u][0]) for u in users]
        return {
            "format": STATE_FORMAT,
            "model_config": dataclasses.asdict(self.model_cfg),
            "trainer_config": dataclasses.asdict(self.trainer_cfg),
            "capacity": self.model.capacity,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "vocab": self.vocab.to_list(),
            "users": users,
            "seq_offsets": torch.as_tensor(np.concatenate([[0], np.cumsum(lens)]), dtype=torch.long),
            "seq_items": torch.as_tensor([i for u in users for i in self._seqs[u][0]], dtype=torch.long),
            "seq_weights": torch.as_tensor([w for u in users for w in self._seqs[u][1]], dtype=torch.float64),
            "pending": dict(self._pending),
            "n_pending_targets": self._n_pending_targets,
            "reservoir": list(self._reservoir),
            "n_users_seen": self._n_users_seen,
            "lr_scale": self._lr_scale,
            "loss_ema": self._loss_ema,
            "np_rng": self._rng.bit_generator.state,
            "torch_rng": self._torch_rng.clone(),
            "n_updates": self.n_updates,
            "n_events": self.n_events,
            "ema": None if self._ema is None else {k: v.detach().cpu().clone() for k, v in self._ema.items()},
            "ema_items": self._ema_items,
            "item_counts": torch.as_tensor(self._item_counts),
        }

    @classmethod
    def from_state_dict(cls, state: dict, device: str = "cpu") -> "IncrementalLearner":
        fmt = state.get("format")
        assert fmt in (1, STATE_FORMAT), f"learner state format {fmt!r}, expected {STATE_FORMAT}"
        self = cls(ModelConfig(**state["model_config"]), TrainerConfig(**state["trainer_config"]), device=device)
        with torch.random.fork_rng(devices=[]):  # grow's fresh rows are overwritten by the load below
            self.model.grow(state["capacity"])
        self.optimizer = _make_optimizer(self.model, self.trainer_cfg)  # rebuilt on the grown parameter
        self.model.load_state_dict(state["model"])
        if fmt == STATE_FORMAT:
            self.optimizer.load_state_dict(state["optimizer"])
        else:  # format 1 grouped the item table with the encoder: resume with fresh optimizer moments
            warnings.warn("learner state format 1: optimizer moments are reset (the model, sequences "
                          "and offset are kept)", stacklevel=2)
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
        ema = state.get("ema")  # absent before ema_decay existed
        self._ema = None if ema is None else {k: v.to(self.device) for k, v in ema.items()}
        self._ema_items = state.get("ema_items", self.n_items)  # absent in checkpoints before it existed
        counts = state.get("item_counts")  # absent before rare-item steps: count the kept histories
        self._item_counts = (counts.numpy().copy() if counts is not None
                             else np.bincount(state["seq_items"].numpy(), minlength=self.n_items + 1))
        return self

    # ---- internals -------------------------------------------------------------------------

    def _update_ema(self) -> None:
        d = self.trainer_cfg.ema_decay
        if d <= 0:
            return
        live = self.model.state_dict()
        if self._ema is None:
            self._ema = {k: v.detach().clone() for k, v in live.items()}
            self._ema_items = self.n_items
            return
        self._ema = self._ema_padded()  # rows of items added since join from the model
        self._ema_items = self.n_items
        with torch.no_grad():  # in place: no new copy of the weights per update
            for k, v in live.items():
                if v.is_floating_point():
                    self._ema[k].lerp_(v, 1 - d)  # d * ema + (1 - d) * v
                else:
                    self._ema[k].copy_(v)

    def _ema_padded(self) -> dict[str, torch.Tensor]:
        """The moving average, with the item rows of items added since its last update (and of a
        grown table) taken from the model: a new item is published as the model has it, not
        averaged with a spare row's initial noise."""
        live = self.model.state_dict()
        out = dict(self._ema)
        key, lo = "item_emb.weight", self._ema_items + 1  # rows [lo, ...) are newer than the average
        cur = live[key].detach()
        if cur.shape[0] > lo:
            out[key] = torch.cat([self._ema[key][:lo], cur[lo:]])
        return out

    @contextlib.contextmanager
    def _published_weights(self):
        """Run with the published weights (the moving average, if any) loaded; then restore."""
        if self._ema is None:
            yield
            return
        live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.model.load_state_dict(self._ema_padded())
        try:
            yield
        finally:
            self.model.load_state_dict(live)

    def _set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_mult"]

    @property
    def _keep(self) -> int:
        """Items kept per user once learned: ``history_len``, and never less than one context."""
        return max(self.trainer_cfg.history_len, self.model_cfg.max_len + 1)

    def _trim_all(self, users: Sequence[str]) -> None:
        keep = self._keep
        for user in users:
            items, w = self._seqs[user]
            cut = len(items) - keep
            if cut > 0:
                del items[:cut], w[:cut]

    def _slices(self, user: str, end: int, n: int) -> list[tuple[str, int, int]]:
        """(user, end, n) slices scoring the ``n`` targets before position ``end``, newest first,
        at most ``max_len`` targets each. Position 0 is never a target (no predecessor)."""
        n = min(n, end - 1)
        out = []
        while n > 0:
            m = min(n, self.model_cfg.max_len)
            out.append((user, end, m))
            end, n = end - m, n - m
        return out

    def _batch(self, batch: list[tuple[str, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Left-padded (inputs, next-item targets, loss weights), each (B, T), of (user, end, n)
        slices: row b's weight is the event weight on its last n positions and 0 elsewhere."""
        inputs, targets, weights = [], [], []
        max_len = self.model_cfg.max_len
        for user, end, n in batch:
            items, w = self._seqs[user]
            lo = max(0, end - 1 - max_len)  # inputs items[lo:end-1] predict items[lo+1:end]
            inputs.append(items[lo:end - 1])
            targets.append(items[lo + 1:end])
            weights.append([0.0] * (end - 1 - lo - n) + w[end - n:end])  # only the last n carry loss
        x = left_pad(inputs).to(self.device)  # (B, T)
        y = left_pad(targets, x.shape[1]).to(self.device)  # (B, T) next item at each position
        T = x.shape[1]
        wt = torch.zeros(len(batch), T, dtype=torch.float32)
        for b, w in enumerate(weights):
            wt[b, T - len(w):] = torch.as_tensor(w, dtype=torch.float32)
        return x, y, wt.to(self.device)

    def _step(self, batch: list[tuple[str, int, int]]) -> float:
        """One optimizer step on ``batch`` of (user, end, n) slices (see ``_slices``)."""
        x, y, wt = self._batch(batch)
        sel = wt > 0  # (B, T)
        hidden = self.model(x)[sel]  # (N, C) only the scored positions
        logits = masked_scores(self.model, hidden, self.n_items)  # (N, n_items + 1)
        ce = F.cross_entropy(logits, y[sel], reduction="none")  # (N,)
        w = wt[sel]
        loss = (ce * w).sum() / w.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.trainer_cfg.grad_clip)
        rare, stretch = self._rare_rows()
        item = self.model.item_emb.weight
        before = item.detach()[rare].clone() if len(rare) else None
        self.optimizer.step()
        if before is not None:
            with torch.no_grad():  # the rare rows' step, stretched
                item[rare] = before + (item[rare] - before) * stretch[:, None]
        return loss.item()

    def _rare_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Item rows whose step is stretched (``trainer.rare_item_lr_mult``), and by how much;
        computed once per change of the counts, not per optimizer step."""
        if self._rare is None:
            M, c = self.trainer_cfg.rare_item_lr_mult, self.trainer_cfg.rare_item_count
            stretch = 1 + (M - 1) * c / (c + self._item_counts[1:self.n_items + 1]) if M > 1 else np.ones(0)
            rows = np.flatnonzero(stretch > 1.01)  # the others step as usual
            self._rare = (torch.as_tensor(rows + 1, device=self.device),
                          torch.as_tensor(stretch[rows], dtype=torch.float32, device=self.device))
        return self._rare

    def _add_item_rows(self, n_old: int) -> None:
        """Make room for items n_old+1..n_items and warm-start their rows near the mean item."""
        need = self.n_items + 1
        with torch.no_grad(), self._own_torch_rng():
            if need > self.model.capacity:
                new_cap = self.model.capacity
                while new_cap < need:
                    new_cap *= 2
                old_p = self.model.item_emb.weight
                self.model.grow(new_cap)
                _swap_param(self.optimizer, old_p, self.model.item_emb.weight)
            emb = self.model.item_emb.weight
            mean = emb[1:n_old + 1].mean(0) if n_old > 0 else torch.zeros_like(emb[0])
            noise = torch.randn(need - 1 - n_old, emb.shape[1]) * INIT_STD
            emb[n_old + 1:need] = mean + noise.to(emb.device)

    def _reservoir_add(self, user: str) -> None:
        self._n_users_seen += 1
        cap = self.trainer_cfg.replay_users
        if len(self._reservoir) < cap:
            self._reservoir.append(user)
        elif cap > 0:
            j = int(self._rng.integers(self._n_users_seen))
            if j < cap:
                self._reservoir[j] = user

    def _sample_replay(self, n: int, exclude: set[str]) -> list[str]:
        if n <= 0:
            return []
        candidates = [u for u in self._reservoir if u not in exclude and len(self._seqs[u][0]) >= 2]
        if not candidates:
            return []
        picks = self._rng.choice(len(candidates), size=min(n, len(candidates)), replace=False)
        return [candidates[i] for i in picks]

    def _adapt_lr(self, loss: float) -> None:
        if self.trainer_cfg.lr_schedule == "adaptive" and self._loss_ema is not None:
            if loss > LR_RISE_RATIO * self._loss_ema:
                self._lr_scale = max(LR_FLOOR, self._lr_scale * LR_DECAY)
            else:
                self._lr_scale = min(1.0, self._lr_scale * LR_RECOVER)
        self._loss_ema = loss if self._loss_ema is None else LOSS_EMA * self._loss_ema + (1 - LOSS_EMA) * loss

    @contextlib.contextmanager
    def _own_torch_rng(self):
        """Run with the learner's own CPU RNG stream (dropout, noise); the global RNG is untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._torch_rng)
            yield
            self._torch_rng = torch.get_rng_state()


def _positives(events: pa.Table) -> tuple[list[str], list[str], list[float]]:
    """(users, item ids, weights) of the positive events, in timestamp order (stable)."""
    for col in ("user_id", "item_id", "timestamp", "label", "weight"):
        assert col in events.column_names, f"events need column {col!r}, got {events.column_names}"
    ts = pc.cast(events["timestamp"], pa.int64()).to_numpy(zero_copy_only=False)
    order = np.argsort(ts, kind="stable")
    label = events["label"].to_numpy(zero_copy_only=False)[order]
    pos = pa.array(order[label == 1])
    return (events["user_id"].take(pos).to_pylist(), events["item_id"].take(pos).to_pylist(),
            events["weight"].take(pos).to_numpy(zero_copy_only=False).astype(float).tolist())


def _make_optimizer(model: SeqRecModel, cfg: TrainerConfig) -> torch.optim.Optimizer:
    # nanoGPT-style: decay matrices and embeddings, not biases and LayerNorm gains; the item table
    # is a group of its own so that it can move faster than the encoder (``item_lr_mult``)
    item = model.item_emb.weight
    decay = [p for p in model.parameters() if p.dim() >= 2 and p is not item]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": [item], "weight_decay": cfg.weight_decay, "lr_mult": cfg.item_lr_mult},
              {"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0}]
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    # fused Adam kernels: one pass over all parameters per step (about 5x faster than the default
    # per-tensor loop on CPU, where the optimizer step was a tenth of an update's time)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, fused=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, fused=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups)
    assert cfg.optimizer == "momentum", f"unknown optimizer {cfg.optimizer!r}"
    return torch.optim.SGD(groups, momentum=cfg.momentum)


def _swap_param(opt: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor) -> None:
    """Point ``opt`` at ``new`` (a grown copy of ``old``), zero-padding its per-row state."""
    for group in opt.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = opt.state.pop(old, None)
    if state is None:
        return
    for k, v in state.items():
        if torch.is_tensor(v) and v.shape == old.shape:
            pad = torch.zeros((new.shape[0] - old.shape[0], *old.shape[1:]), dtype=v.dtype, device=v.device)
            state[k] = torch.cat([v, pad])
    opt.state[new] = state


def _to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj
