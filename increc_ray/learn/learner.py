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
never candidates), weighted by the event weight of each target; with ``trainer.loss: sampled``,
a sampled softmax over the target and shared negatives (``learn.sampled``), each step reading and
moving only the item rows it touches, so that a step's cost does not grow with the catalogue.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F

from increc_ray.config import ModelConfig, TrainerConfig
from increc_ray.learn.model import INIT_STD, SeqRecModel, all_finite, left_pad, masked_scores
from increc_ray.learn import checkpoint
from increc_ray.learn.ema import WeightAverage
from increc_ray.learn.frozen import FrozenRows, RowLog
from increc_ray.learn.published import ITEM_KEY, ITEM_ROWS, BaseCopies, published_array
from increc_ray.learn.optim import adapt_lr_scale, make_optimizer, rare_row_stretch, set_lr, step_rows, swap_param
from increc_ray.learn.rank import table_ranks
from increc_ray.learn.sampled import Negatives, sampled_softmax
from increc_ray.learn.vocab import ItemVocab

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
        self.optimizer = make_optimizer(self.model, trainer_cfg)
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
        self._ema = WeightAverage(trainer_cfg.ema_decay)  # published weights when trainer.ema_decay > 0
        self._item_counts = np.zeros(1, dtype=np.int64)  # positive events of each item index (0: pad)
        self._rare: torch.Tensor | None = None  # _rare_stretch until counts change
        self._negatives: Negatives | None = None  # trainer.loss sampled: their distribution until counts change
        # expiry (trainer.user_ttl_s, item_ttl_s) in event time: ms of each item's and user's newest
        # positive (0: not recorded, e.g. restored from an older checkpoint: counts as seen now)
        self._clock: int | None = None  # the newest event time seen
        self._item_seen = np.zeros(1, dtype=np.int64)
        self._user_seen: dict[str, int] = {}
        self._last_expiry: int | None = None  # event time of the last expiry pass
        self._holes = torch.zeros(0, dtype=torch.long)  # free item indices: never scored
        self._row_log = RowLog()  # the item rows written: frozen copies and NaN checks read only those
        self._bases = BaseCopies()  # the published copy of the row log's base (overlay versions)
        self.n_expired_users = 0
        self.n_expired_items = 0

    @property
    def n_items(self) -> int:
        return len(self.vocab)

    @property
    def n_users(self) -> int:
        """Users whose sequences are kept."""
        return len(self._seqs)

    @property
    def pending_targets(self) -> int:
        """New target positions waiting for the next ``update``."""
        return self._n_pending_targets

    def observe(self, events: pa.Table) -> int:
        """Add cleaned events (any order; processed by timestamp, stable). Returns new targets."""
        self.n_events += events.num_rows
        users, item_ids, weights, times = positives(events)
        if not users:
            return 0
        n_old = self.n_items
        known = self.vocab.lookup(item_ids)
        items = self.vocab.add(item_ids)
        if self.n_items > n_old:
            self._add_item_rows(n_old)
        reused = np.unique(items[(known == 0) & (items <= n_old)])  # holes that new items took
        if len(reused):
            self._reuse_rows(reused)
        self._item_counts = np.bincount(items, minlength=self.n_items + 1) + np.pad(
            self._item_counts, (0, self.n_items + 1 - len(self._item_counts)))
        self._counts_changed()
        self._item_seen = np.pad(self._item_seen, (0, self.n_items + 1 - len(self._item_seen)))
        np.maximum.at(self._item_seen, items, times)
        self._clock = max(self._clock or 0, int(times.max()))
        user_seen = self._user_seen

        keep = self._keep
        new_targets = 0
        for user, item, w, t in zip(users, items.tolist(), weights, times.tolist()):
            if t > user_seen.get(user, 0):  # a late batch may be older than what was seen
                user_seen[user] = t
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
        self._ema.update(self.model, self.n_items)
        self.expire()  # nothing is pending now: sequences may lose items
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
            with self._ema.loaded_into(self.model):
                hidden = self.model.hidden_at(left_pad(seqs).to(self.device))  # (B, C)
                return masked_scores(self.model, hidden, self.n_items, self._holes).cpu()
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def evaluate_next(self, events: pa.Table, k: int = 10) -> float | None:
        """Prequential HR@k: share of known users whose first new positive in ``events`` is in
        the current model's top-k (fewer than k items score higher; NaN scores rank last). Call
        before ``observe(events)``; None when nobody qualifies."""
        users, item_ids, _, _ = positives(events)
        first: dict[str, str] = {}
        for user, item in zip(users, item_ids):
            if user not in first and user in self._seqs and len(first) < EVAL_MAX_USERS:
                first[user] = item
        if not first:
            return None
        seqs = [self._seqs[u][0][-self.model_cfg.max_len:] for u in first]
        targets = self.vocab.lookup(first.values())  # (B,) 0 = new item: a miss
        n_cols = self.n_items + 1
        self.model.eval()
        with self._ema.loaded_into(self.model):
            hidden = self.model.hidden_at(left_pad(seqs).to(self.device))  # (B, C)
            table = FrozenRows(self.model.item_emb.weight.detach()[:n_cols])  # a view
            ranks = table_ranks(hidden, table, n_cols, np.where(targets > 0, targets, n_cols),
                                holes=self._holes.cpu().numpy(), cap=k, strict=True)
        self.model.train()
        return float(torch.as_tensor(ranks < k).float().mean())  # in float32, as it always was

    def export_weights(self, version: int, metrics: dict | None = None, snapshot=None, whole: bool = False) -> dict:
        """The published artifact: CPU numpy copies of the weights (their moving average when
        ``trainer.ema_decay`` > 0), with config and vocab; of ``snapshot`` (a ``gate.Snapshot``
        of this learner, taken earlier) when given. With ``trainer.loss: sampled`` (and no moving
        average) the item table goes as an overlay: a base shared with other versions plus the rows
        moved since it (``learn.published``), unless ``whole`` (``bench/version_cost.py``)."""
        vocab = list(snapshot.vocab) if snapshot is not None else self.vocab.to_list()
        extra = {}
        if self.publishes_overlay and not whole:
            items = snapshot.items if snapshot is not None else self._row_log.freeze(self.model.item_emb.weight)
            weights = snapshot.small_state() if snapshot is not None else {
                k: v for k, v in self.model.state_dict().items() if k != ITEM_KEY}
            extra[ITEM_ROWS], vocab = self._bases.overlay(items, vocab)
        else:
            weights = snapshot.state() if snapshot is not None else self.published_state()
        return {
            "version": int(version),
            "model_config": self.model_cfg.model_dump(),
            "vocab": vocab,  # None: an overlay's base vocabulary and tail
            "state_dict": {k: published_array(k, v) for k, v in weights.items()},
            "metrics": dict(metrics or {}),
            "created_at": time.time(),
            **extra,
        }

    @property
    def publishes_overlay(self) -> bool:
        """Whether versions carry the item table as an overlay: only the sampled update moves a
        few rows per step (the full softmax and a moving average move every row)."""
        return self.trainer_cfg.loss == "sampled" and self.trainer_cfg.ema_decay <= 0

    def published_state(self) -> dict[str, torch.Tensor]:
        """What ``export_weights`` publishes: the moving average if there is one, else the weights."""
        return self._ema.weights(self.model)

    def finite(self) -> bool:
        """Whether every weight is finite (a diverged update makes NaN or inf); of the item table,
        the rows written since the last check that passed (``frozen.RowLog``)."""
        table = self.model.item_emb.weight
        return all_finite(p for p in self.model.parameters() if p is not table) and self._row_log.finite(table)

    def frozen_state(self) -> tuple[dict[str, torch.Tensor], FrozenRows]:
        """What ``published_state`` holds now, on the CPU, for ``gate.Snapshot``: (every weight but
        the item table, copied; the item table, frozen). Without a moving average the table costs
        the rows written since a base copy shared with earlier frozen tables (``frozen.RowLog``)."""
        if self._ema.active:  # the average moves every row each update: a copy of its own
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.published_state().items()}
            return state, FrozenRows(state.pop(ITEM_KEY))
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items() if k != ITEM_KEY}
        return state, self._row_log.freeze(self.model.item_emb.weight)

    def knows_user(self, user: str) -> bool:
        return user in self._seqs

    def user_items(self, user: str) -> list[int]:
        """The user's kept item indices, oldest first."""
        return list(self._seqs[user][0])

    @property
    def item_counts(self) -> np.ndarray:
        """Positive events of each item index so far (index 0 is padding)."""
        return self._item_counts[: self.n_items + 1]

    def state_dict(self, reuse: dict | None = None) -> dict:
        """Everything needed to resume exactly, copied (see ``increc_ray.learn.checkpoint``;
        ``reuse``: an earlier state whose tensors take the copies)."""
        return checkpoint.learner_state(self, reuse)

    @classmethod
    def from_state_dict(cls, state: dict, device: str = "cpu", model_cfg: ModelConfig | None = None,
                        trainer_cfg: TrainerConfig | None = None) -> "IncrementalLearner":
        """Resume from ``state``, running ``trainer_cfg`` (default: the saved settings); a
        ``model_cfg`` of another shape than the saved one raises ``ConfigError``."""
        return checkpoint.restore_learner(cls, state, device, model_cfg, trainer_cfg)

    # ---- internals -------------------------------------------------------------------------

    def _set_lr(self, lr: float) -> None:
        set_lr(self.optimizer, lr)

    def _rebuild_optimizer(self) -> None:
        self.optimizer = make_optimizer(self.model, self.trainer_cfg)

    @property
    def _keep(self) -> int:
        """Items kept per user once learned: ``kept_items_per_user``, and never less than one context."""
        return max(self.trainer_cfg.kept_items_per_user, self.model_cfg.max_len + 1)

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
        if self.trainer_cfg.loss == "sampled":
            return self._sampled_step(x, y[sel], sel, wt[sel])
        hidden = self.model.hidden_at(x, sel)  # (N, C) only the scored positions
        logits = masked_scores(self.model, hidden, self.n_items, self._holes)  # (N, n_items + 1)
        ce = F.cross_entropy(logits, y[sel], reduction="none")  # (N,)
        w = wt[sel]
        loss = (ce * w).sum() / w.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.trainer_cfg.grad_clip)
        self._row_log.invalidate()  # every row moves, in a fused kernel that leaves the version count alone
        if self.trainer_cfg.rare_item_lr_mult <= 1:
            self.optimizer.step()
            return loss.item()
        stretch = self._rare_stretch()
        if self.trainer_cfg.rare_item_rows == "named":  # the step's inputs and targets only
            named = torch.zeros_like(stretch, dtype=torch.bool)
            named[x.flatten()] = named[y[sel]] = True
            stretch = torch.where(named, stretch, torch.ones_like(stretch))
        rows = self.model.item_emb.weight.data[: self.n_items + 1]  # a view: pad and known items
        before = rows.clone()
        self.optimizer.step()
        rows.sub_(before).mul_(stretch[:, None]).add_(before)  # the rare rows' step, stretched (1 elsewhere)
        return loss.item()

    def _sampled_step(self, x: torch.Tensor, y: torch.Tensor, sel: torch.Tensor, w: torch.Tensor) -> float:
        """``_step`` with ``trainer.loss: sampled``: inputs ``x`` (B, T), the targets ``y`` (N,) and
        loss weights ``w`` (N,) of the ``sel``ected positions. The step gathers the item rows of
        its inputs, targets and negatives into one leaf (R, C) and runs on it alone, so the
        gradient, the clipping and the optimizer step (``optim.step_rows``) cover R rows, not
        the table: with the table itself, autograd would make a dense (capacity, C) gradient and
        AdamW would move every row (at 1M items that dense work outweighs the rest of a step)."""
        cfg = self.trainer_cfg
        if self._negatives is None:
            self._negatives = Negatives(self.item_counts, self._holes, cfg.negative_power, cfg.negatives, self.device)
        neg = self._negatives.draw()  # (K,)
        if cfg.in_batch_negatives and not self._negatives.exact:  # the batch's targets too (exact: all are)
            neg = torch.cat([neg, torch.unique(y)])
        pad = torch.zeros(1, dtype=torch.long, device=self.device)
        rows, local = torch.unique(torch.cat([pad, x.flatten(), y, neg]), return_inverse=True)  # rows[0] = 0: pad
        lx, ly, ln = local[1:].split([x.numel(), len(y), len(neg)])
        table = self.model.item_emb.weight
        sub = table.detach()[rows].requires_grad_()  # (R, C)
        hidden = self.model.hidden_at(lx.view_as(x), sel, item_rows=sub)  # (N, C)
        log_q = self._negatives.log_q
        ce = sampled_softmax(hidden, sub[ly], sub[ln], log_q[y], log_q[neg], neg[None, :] == y[:, None])  # (N,)
        loss = (ce * w).sum() / w.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in self.model.parameters() if p.grad is not None]
        torch.nn.utils.clip_grad_norm_([*params, sub], cfg.grad_clip)
        before = sub.detach().clone() if cfg.rare_item_lr_mult > 1 else None
        with self._row_log.writing(table, rows):
            step_rows(self.optimizer, table, rows, sub)
            if before is not None:  # the rare rows' step, stretched (1 elsewhere), from the counts of these rows only
                at, s = rare_row_stretch(self._item_counts[rows.cpu().numpy()], cfg.rare_item_lr_mult,
                                         cfg.rare_item_count)
                stretch = torch.ones(len(rows), device=self.device)  # [0] is pad: rare_row_stretch skips it
                stretch[torch.as_tensor(at, device=self.device)] = torch.as_tensor(s, dtype=torch.float32,
                                                                                   device=self.device)
                if cfg.rare_item_rows == "named":  # a row drawn only as a negative steps as usual
                    named = torch.zeros(len(rows), dtype=torch.bool, device=self.device)
                    named[lx.flatten()] = named[ly] = True
                    stretch = torch.where(named, stretch, torch.ones_like(stretch))
                with torch.no_grad():
                    table[rows] = before + (table[rows] - before) * stretch[:, None]
        return loss.item()

    def _counts_changed(self) -> None:
        """The item counts or the holes changed: the caches built from them are stale."""
        self._rare = None
        self._negatives = None

    def _rare_stretch(self) -> torch.Tensor:
        """(n_items + 1,) factor on each item row's step (``trainer.rare_item_lr_mult``; 1 for the
        others), computed once per change of the counts. Dense: at the deployed settings nearly
        every row is rare, and a contiguous pass beats a gather (the full loss steps every row;
        the sampled one stretches only the rows it steps, in ``_sampled_step``)."""
        if self._rare is None:
            rows, stretch = rare_row_stretch(self._item_counts[:self.n_items + 1], self.trainer_cfg.rare_item_lr_mult,
                                             self.trainer_cfg.rare_item_count)
            dense = torch.ones(self.n_items + 1, dtype=torch.float32)
            dense[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(stretch, dtype=torch.float32)
            self._rare = dense.to(self.device)
        return self._rare

    def expire(self, force: bool = False) -> tuple[int, int]:
        """Forget users with no positive event for ``trainer.user_ttl_s`` and items with none for
        ``trainer.item_ttl_s`` (event time); returns (users, items) forgotten. A pass runs when
        a tenth of the shorter ttl has passed in event time since the last (``force``: now).

        A user goes with their sequence and replay slot. An item leaves the vocabulary, every
        kept sequence and scoring; its row becomes a hole that the next new item takes, warm-
        started with fresh optimizer moments (``_reuse_rows``), so the table and the optimizer
        state stop growing once the catalogue does. Runs between updates (nothing pending)."""
        cfg = self.trainer_cfg
        ttls = [t for t in (cfg.user_ttl_s, cfg.item_ttl_s) if t]
        now = self._clock
        if not ttls or now is None or self._pending:
            return 0, 0
        if not force and self._last_expiry is not None and now - self._last_expiry < min(ttls) * 100:  # ms: ttl/10
            return 0, 0
        self._last_expiry = now
        gone_users: list[str] = []
        if cfg.user_ttl_s:
            cut = now - int(cfg.user_ttl_s * 1000)
            seen = self._user_seen
            for user in self._seqs:
                t = seen.setdefault(user, now)  # not recorded: seen now
                if t < cut:
                    gone_users.append(user)
            for user in gone_users:
                del self._seqs[user], seen[user]
            if gone_users:
                gone = set(gone_users)
                self._reservoir = [u for u in self._reservoir if u not in gone]
        n_items = 0
        if cfg.item_ttl_s:
            seen = self._item_seen[: self.n_items + 1]
            seen[seen == 0] = now  # not recorded: seen now
            live = np.ones(self.n_items + 1, dtype=bool)
            live[0] = False
            live[self.vocab.holes()] = False
            stale = np.flatnonzero(live & (seen < now - int(cfg.item_ttl_s * 1000)))
            if len(stale):
                n_items = len(stale)
                self.vocab.remove([self.vocab.id_of(int(i)) for i in stale])
                self._item_counts[stale] = 0
                dead = set(stale.tolist())
                for items, w in self._seqs.values():
                    if not dead.isdisjoint(items):
                        keep = [j for j, i in enumerate(items) if i not in dead]
                        items[:], w[:] = [items[j] for j in keep], [w[j] for j in keep]
                self._holes = torch.as_tensor(self.vocab.holes(), device=self.device)
                self._counts_changed()
        self.n_expired_users += len(gone_users)
        self.n_expired_items += n_items
        return len(gone_users), n_items

    def _reuse_rows(self, rows: np.ndarray) -> None:
        """New items took the holes ``rows``: warm-start them as new rows (near the mean live
        item), with zero optimizer moments and no moving-average history, and score them again."""
        idx = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        self._item_counts[rows] = 0
        self._item_seen[rows] = 0
        self._holes = torch.as_tensor(self.vocab.holes(), device=self.device)
        self._counts_changed()
        with torch.no_grad(), self._own_torch_rng():
            emb = self.model.item_emb.weight
            live = torch.ones(self.n_items + 1, dtype=torch.bool, device=emb.device)
            live[0] = False
            live[self._holes] = False
            live[idx] = False
            mean = emb[: self.n_items + 1][live].mean(0) if live.any() else torch.zeros_like(emb[0])
            with self._row_log.writing(emb, idx):
                emb[idx] = mean + (torch.randn(len(rows), emb.shape[1]) * INIT_STD).to(emb.device)
            for state in self.optimizer.state.get(emb, {}).values():
                if torch.is_tensor(state) and state.shape[:1] == emb.shape[:1]:
                    state[idx] = 0
            self._ema.reset_rows(idx, emb[idx])

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
                swap_param(self.optimizer, old_p, self.model.item_emb.weight)
            emb = self.model.item_emb.weight
            mean = emb[1:n_old + 1].mean(0) if n_old > 0 else torch.zeros_like(emb[0])
            noise = torch.randn(need - 1 - n_old, emb.shape[1]) * INIT_STD
            with self._row_log.writing(emb, torch.arange(n_old + 1, need)):
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
        self._lr_scale, self._loss_ema = adapt_lr_scale(self._lr_scale, self._loss_ema, loss,
                                                        self.trainer_cfg.lr_schedule)

    @contextlib.contextmanager
    def _own_torch_rng(self):
        """Run with the learner's own CPU RNG stream (dropout, noise); the global RNG is untouched."""
        with torch.random.fork_rng(devices=[]):
            torch.set_rng_state(self._torch_rng)
            yield
            self._torch_rng = torch.get_rng_state()


def positives(events: pa.Table) -> tuple[list[str], list[str], list[float], np.ndarray]:
    """(users, item ids, weights, event times in ms) of the positive events, in timestamp order (stable)."""
    for col in ("user_id", "item_id", "timestamp", "label", "weight"):
        assert col in events.column_names, f"events need column {col!r}, got {events.column_names}"
    ts = pc.cast(events["timestamp"], pa.int64()).to_numpy(zero_copy_only=False)
    order = np.argsort(ts, kind="stable")
    label = events["label"].to_numpy(zero_copy_only=False)[order]
    keep = order[label == 1]
    pos = pa.array(keep)
    return (events["user_id"].take(pos).to_pylist(), events["item_id"].take(pos).to_pylist(),
            events["weight"].take(pos).to_numpy(zero_copy_only=False).astype(float).tolist(), ts[keep])
