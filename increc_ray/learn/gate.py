"""Champion/challenger gate: every weight version is judged, before it goes live (``gate.mode``
strict) or right after (optimistic; Ray-free core).

After an update the trainer freezes its weights as the *candidate*. Every slice of clean
events that arrives next is scored before the learner trains on it (test-then-train), by the
candidate, by the *live* version (the last one promoted) and by popularity (positive-event
counts so far), all on the same events: the rank of each event's item among the items the
scorer knows, the user's earlier items excluded, ties against the target. Once
``gate.min_events`` events are scored, the gate decides:

* non-finite weights or scores: rejected at once (the trainer rolls back to the live weights);
* worse than popularity, or more than ``gate.max_drop`` (relative) below the live version,
  each by more than ``gate.z`` standard errors of the paired per-event difference (so a small
  window's noise does not reject good candidates); and while no version is live, not above
  popularity's NDCG: rejected. The learner keeps learning and the next update is the next
  candidate; serving keeps the live version, or popularity while no version has beaten it.
* otherwise promoted: it goes live under a new version number.

The live version is scored on the same events, so the gate keeps checking it too: when a
candidate is rejected and the live version itself scored below popularity (by more than
``gate.z`` standard errors), the live version is *demoted*: serving answers from popularity
again (the trainer publishes a fallback marker under a new version number), and the next
candidate must beat popularity to go live. ``/status`` lists the demoted versions.

Keeping learning after a rejection (rather than rolling back) is deliberate: a candidate that
lost on one window may have learned a real shift that the next window rewards, and a rollback
would throw away events that were valid. Only non-finite weights, which no further learning
repairs, are rolled back.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import torch

from increc_ray.config import GateConfig
from increc_ray.learn import published
from increc_ray.learn.frozen import FrozenRows
from increc_ray.learn.learner import positives
from increc_ray.learn.model import all_finite, left_pad
from increc_ray.learn.rank import count_ranks, table_ranks
from increc_ray.learn.vocab import ItemVocab

ITEM_KEY, POS_KEY = "item_emb.weight", "transformer.wpe.weight"


class Snapshot:
    """Frozen weights of one candidate or live version, for scoring only: the tensors themselves,
    scored by the serving forward pass (``serve.encoder``), as a replica would; no model is built.
    The item table is a ``frozen.FrozenRows``: taken from a learner (``of``), a base copy shared
    with other snapshots plus the rows that moved since, so that freezing costs those rows."""

    def __init__(self, state: dict[str, torch.Tensor], n_heads: int, vocab: list[str | None], version: int = 0,
                 events_seen: int | None = None, generation: int | None = None, items: FrozenRows | None = None,
                 holes: np.ndarray | None = None) -> None:
        self.vocab, self.version = vocab, version
        self.events_seen = events_seen  # the learner's event count when frozen: what it has learned
        self.generation = generation  # its learner vocabulary's (None: compare by id, ``index_map``)
        self.n_heads = n_heads
        self._items = items if items is not None else FrozenRows(state[ITEM_KEY])
        self._state = {k: v for k, v in state.items() if k != ITEM_KEY}  # the encoder's: small
        self._vocab_index: ItemVocab | None = None
        self._map: tuple[int, np.ndarray] | None = None
        self._holes = holes

    @property
    def n_items(self) -> int:
        return len(self.vocab)

    @classmethod
    def from_weights(cls, weights: dict) -> "Snapshot":
        """The snapshot of a published artifact (``IncrementalLearner.export_weights``), whole or an
        overlay (its base an array: ``serve.registry.resolve``)."""
        return cls(published.small_state(weights), int(weights["model_config"]["n_heads"]), published.vocab_list(weights),
                   int(weights["version"]), items=published.item_table(weights))

    @classmethod
    def of(cls, learner, version: int = 0) -> "Snapshot":
        """The learner's published weights (its moving average, if any), frozen."""
        state, items = learner.frozen_state()
        return cls(state, learner.model_cfg.n_heads, learner.vocab.to_list(), version, learner.n_events,
                   learner.vocab.generation, items, learner.vocab.holes())

    def state(self) -> dict[str, torch.Tensor]:
        """Every weight as a tensor of its own (the item table made whole on the first call)."""
        if len(self._items.rows):
            self._items = FrozenRows(self._items.dense())
        return {**self._state, ITEM_KEY: self._items.base}

    @property
    def items(self) -> FrozenRows:
        """The item table as frozen: a base, maybe shared, and the rows moved since."""
        return self._items

    def small_state(self) -> dict[str, torch.Tensor]:
        """Every weight but the item table."""
        return dict(self._state)

    def finite(self) -> bool:
        return all_finite(self._state.values()) and self._items.finite()

    def index_map(self, vocab: ItemVocab | None) -> np.ndarray | None:
        """Learner index (of ``vocab``) -> this snapshot's index (0: unknown here), or None when
        they agree (nothing has expired or been renumbered since the snapshot was taken). Built by
        id otherwise, and extended as the learner's vocabulary grows."""
        if vocab is None or vocab.generation == self.generation:
            return None
        if self._map is None or self._map[0] != vocab.generation:
            if self._vocab_index is None:
                self._vocab_index = ItemVocab.from_list(self.vocab)
            self._map = (vocab.generation, np.zeros(1, dtype=np.int64))
        gen, m = self._map
        if len(m) < len(vocab) + 1:  # learner indices len(m).. are new since: look their ids up
            m = np.concatenate([m, self._vocab_index.lookup(vocab.ids_from(len(m)))])
            self._map = (gen, m)
        return m

    @torch.no_grad()
    def ranks(self, histories: list[list[int]], targets: np.ndarray, vocab: ItemVocab | None = None,
              cap: int | None = None) -> np.ndarray:
        """0-based rank of each target after its history (item indices of ``vocab``, the learner's:
        default this snapshot's own); a target this snapshot does not know ranks ``n_items`` (a
        miss); NaN scores rank last. With ``cap``, ranks from ``cap`` up are reported as ``cap``
        (NDCG@k reads nothing past k: ranking stops there, ``learn.rank``)."""
        n = self.n_items
        targets = np.asarray(targets)
        m = self.index_map(vocab)
        if m is not None:  # into this snapshot's numbering; unknown -> 0 (skipped) / a miss
            histories = [[int(m[i]) for i in h] for h in histories]
            mapped = m[np.minimum(targets, len(m) - 1)]
            targets = np.where((targets < len(m)) & (mapped > 0), mapped, UNKNOWN_ITEM)
        known = [[i for i in h if 0 < i <= n] for h in histories]  # items newer than the snapshot are skipped
        rows = [b for b, h in enumerate(known) if h]
        ranks = np.full(len(histories), n + 1)  # no known history: a miss
        if rows:
            ranks[rows] = table_ranks(self.hidden([known[b] for b in rows]), self._items, n + 1, targets[rows],
                                      [known[b] for b in rows], self.holes, cap)
        return ranks

    def hidden(self, histories: list[list[int]]) -> torch.Tensor:
        """(B, C) hidden states after each history (item indices, every one known): the encoder
        runs on the rows the histories read, gathered from the frozen table."""
        from increc_ray.serve.encoder import hidden_over

        max_len = self._state[POS_KEY].shape[0]
        return hidden_over(self._state, self.n_heads, self._items, left_pad([h[-max_len:] for h in histories]))

    @property
    def holes(self) -> np.ndarray:
        if self._holes is None:
            self._holes = np.asarray([i + 1 for i, item_id in enumerate(self.vocab) if item_id is None], dtype=np.int64)
        return self._holes


UNKNOWN_ITEM = np.iinfo(np.int64).max  # target index of an item new to the learner: a miss for all


def fresh_targets(learner, events: pa.Table, limit: int) -> tuple[list[list[int]], np.ndarray]:
    """(histories, targets) to score before ``learner.observe(events)``: every positive whose
    user has an earlier item, test-then-train inside the slice too, at most ``limit`` spread
    evenly. A history is the user's kept items then their earlier items in ``events``; an item
    the learner does not know is ``UNKNOWN_ITEM`` in a target and skipped in a history.

    Every positive, not one per user: sessions put a handful of users in a slice, and a gate
    that scored only their first events would wait tens of slices per decision, serving a
    version that many events old meanwhile."""
    users, item_ids, _, _ = positives(events)
    idx = learner.vocab.lookup(item_ids)
    seen: dict[str, list[int]] = {}
    histories, targets = [], []
    for user, item in zip(users, idx):
        h = seen.get(user)
        if h is None:
            h = seen[user] = learner.user_items(user) if learner.knows_user(user) else []
        if h:
            histories.append(list(h))
            targets.append(int(item) if item > 0 else UNKNOWN_ITEM)
        if item > 0:
            h.append(int(item))
    if len(targets) > limit:
        keep = np.linspace(0, len(targets) - 1, limit).round().astype(int)
        histories, targets = [histories[i] for i in keep], [targets[i] for i in keep]
    return histories, np.asarray(targets, dtype=np.int64)


def popularity_ranks(counts: np.ndarray, histories: list[list[int]], targets: np.ndarray) -> np.ndarray:
    """Ranks under popularity: ``counts[i]`` positive events of item index i (0 is pad)."""
    return count_ranks(counts, histories, targets)


def _ranks(scores: np.ndarray, targets: np.ndarray, histories: list[list[int]]) -> np.ndarray:
    """The rank's definition on a dense (B, n_items + 1) score matrix (``learn.rank`` computes it
    without one): items scoring at least the target's score, the user's earlier items excluded."""
    B, n_cols = scores.shape  # (B, n_items + 1)
    s = np.where(np.isnan(scores), -np.inf, scores)
    known = targets < n_cols
    s_t = np.where(known, s[np.arange(B), np.minimum(targets, n_cols - 1)], np.inf)
    ahead = s >= s_t[:, None]  # (B, n_cols) ties count against the target
    ahead[:, 0] = False
    for b, h in enumerate(histories):
        ahead[b, [i for i in h if i < n_cols]] = False  # the user's earlier items are excluded
    ahead[np.arange(B)[known], targets[known]] = False
    return np.where(known, ahead.sum(1), n_cols)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-event NDCG@k of 0-based ranks (one relevant item)."""
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r < k, 1.0 / np.log2(r + 2.0), 0.0)


@dataclass
class Decision:
    """One gate decision, as shown in ``/status`` (``trainer.gate.last_decision``)."""

    promoted: bool
    reason: str
    n_events: int
    candidate_ndcg: float
    live_ndcg: float | None
    popularity_ndcg: float
    se_vs_live: float | None  # standard error of the paired per-event difference
    se_vs_popularity: float
    version: int | None = None  # the version it went live as
    live_worse_than_popularity: bool = False  # the live version lost to popularity on these events
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        for key, value in out.items():
            if isinstance(value, float):
                out[key] = round(value, 6) if math.isfinite(value) else None
        return out


class Gate:
    """Scores the candidate, the live version and popularity on the same fresh events."""

    def __init__(self, cfg: GateConfig) -> None:
        self.cfg = cfg
        self.candidate: Snapshot | None = None
        self.live: Snapshot | None = None
        self._scores: dict[str, list[np.ndarray]] = {"candidate": [], "live": [], "popularity": []}
        self.retired: Snapshot | None = None  # the last demoted version (NaN rollbacks return to it)
        self.n_promoted = 0
        self.n_rejected = 0
        self.demoted: list[dict] = []  # {version, live_ndcg, popularity_ndcg, n_events} of each demotion
        self.last: Decision | None = None

    @property
    def n_scored(self) -> int:
        return sum(len(a) for a in self._scores["candidate"])

    def propose(self, candidate: Snapshot) -> Decision | None:
        """A new candidate (replacing none: one is under test at a time). Non-finite weights are
        rejected on the spot (returned); otherwise None and scoring starts."""
        if not candidate.finite():
            return self.reject("non-finite weights")
        self.candidate = candidate
        for v in self._scores.values():
            v.clear()
        return None

    def test(self, histories: list[list[int]], targets: np.ndarray, counts: np.ndarray,
             vocab: ItemVocab | None = None) -> None:
        """Score fresh events (before the learner sees them): each has a history (item indices
        of ``vocab``, the learner's, oldest first) and a target index (new items: an index beyond
        what a scorer knows); ``counts`` of each index for popularity (-inf: not an item)."""
        if self.candidate is None or not len(targets):
            return
        k = self.cfg.k
        self._scores["candidate"].append(ndcg(self.candidate.ranks(histories, targets, vocab, cap=k), k))
        if self.live is not None:
            self._scores["live"].append(ndcg(self.live.ranks(histories, targets, vocab, cap=k), k))
        self._scores["popularity"].append(ndcg(popularity_ranks(counts, histories, targets), k))

    def ready(self) -> bool:
        return self.candidate is not None and self.n_scored >= self.cfg.min_events

    def decide(self) -> Decision:
        """Judge the candidate on the events scored since it was proposed."""
        assert self.candidate is not None, "decide() needs a candidate under test"
        cand = np.concatenate(self._scores["candidate"])
        pop = np.concatenate(self._scores["popularity"])
        live = np.concatenate(self._scores["live"]) if self._scores["live"] else None
        figures = dict(candidate_ndcg=float(cand.mean()), popularity_ndcg=float(pop.mean()),
                       se_vs_popularity=_se(cand - pop),
                       live_ndcg=None if live is None else float(live.mean()),
                       se_vs_live=None if live is None else _se(cand - live),
                       live_worse=live is not None and (live - pop).mean() < -self.cfg.z * _se(live - pop))
        if not np.isfinite(cand).all():
            return self._decide(False, "non-finite scores", **figures)
        z = self.cfg.z
        if live is None and figures["candidate_ndcg"] <= figures["popularity_ndcg"]:
            return self._decide(False, "has not beaten popularity yet", **figures)
        if (cand - pop).mean() < -z * figures["se_vs_popularity"]:
            return self._decide(False, "worse than popularity", **figures)
        if live is not None:
            margin = cand - (1 - self.cfg.max_drop) * live  # (N,) per-event, paired
            if margin.mean() < -z * _se(margin):
                return self._decide(False, f"more than {self.cfg.max_drop:.0%} worse than the live version", **figures)
        return self._decide(True, "promoted", **figures)

    def reject(self, reason: str) -> Decision:
        """Reject without scoring (e.g. the learner's weights are not finite)."""
        return self._decide(False, reason, candidate_ndcg=math.nan)

    def live_state(self) -> tuple[dict[str, torch.Tensor] | None, list[str] | None]:
        """(weights, vocab) of the version to roll back to: the live one, else the last demoted
        one; (None, None) while there is neither."""
        snap = self.live or self.retired
        return (snap.state(), snap.vocab) if snap else (None, None)

    def demote(self) -> Snapshot:
        """The live version goes (it lost to popularity, ``last`` says by how much); returns it."""
        assert self.live is not None and self.last is not None, "demote() needs a live version and a decision"
        self.demoted.append({"version": self.live.version, "live_ndcg": self.last.live_ndcg,
                             "popularity_ndcg": self.last.popularity_ndcg, "n_events": self.last.n_events,
                             "at": time.time()})
        self.retired, self.live = self.live, None
        return self.retired

    def promote(self, version: int) -> Snapshot:
        """The candidate goes live as ``version``; returns it."""
        assert self.last is not None and self.last.promoted, "promote() follows a decision to promote"
        self.candidate.version = self.last.version = version
        self.live, self.candidate = self.candidate, None
        self.n_promoted += 1
        return self.live

    def _decide(self, promoted: bool, reason: str, candidate_ndcg: float, popularity_ndcg: float = math.nan,
                live_ndcg: float | None = None, se_vs_live: float | None = None,
                se_vs_popularity: float = math.nan, live_worse: bool = False) -> Decision:
        self.last = Decision(promoted, reason, self.n_scored, candidate_ndcg, live_ndcg, popularity_ndcg,
                             se_vs_live, se_vs_popularity, live_worse_than_popularity=bool(live_worse))
        if not promoted:
            self.n_rejected += 1
            self.candidate = None
        return self.last

    def status(self) -> dict:
        return {"enabled": self.cfg.enabled, "live_version": self.live.version if self.live else 0,
                "under_test": self.candidate is not None, "scored": self.n_scored, "min_events": self.cfg.min_events,
                "promoted": self.n_promoted, "rejected": self.n_rejected,
                "demoted": len(self.demoted), "demoted_versions": self.demoted[-20:],
                "last_decision": self.last.to_json() if self.last else None}


def _se(diff: np.ndarray) -> float:
    return float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan


class GateKeeper:
    """The gate's part of the train loop, Ray-free: ``test(events)`` before the learner observes
    a slice, ``after_update()`` after each update. The worker hands in how version numbers are
    taken and how weights are published; tests hand in plain functions."""

    def __init__(self, learner, gate: Gate, next_version: Callable[[], int],
                 publish: Callable[[dict], object]) -> None:
        self.learner, self.gate, self.next_version, self.publish = learner, gate, next_version, publish
        # gate.mode optimistic: updates go live at once while ``trusted`` (the last judgment passed)
        self.optimistic = gate.cfg.mode == "optimistic"
        self.trusted = False
        self.rolled_back = 0  # optimistic: times serving went back to the last judged version

    def _counts(self) -> np.ndarray:
        """Popularity's counts by learner index; expired items' holes are no candidates."""
        counts = self.learner.item_counts.astype(np.float64)
        counts[self.learner.vocab.holes()] = -np.inf
        return counts

    def distrust(self) -> None:
        """Hold updates back until a candidate passes (a full pass's fresh model, an operator's
        rollback): in strict mode a no-op, since nothing goes live unjudged there."""
        self.trusted = False

    def test(self, events: pa.Table) -> Decision | None:
        """Score the slice with the candidate, the live version and popularity; judge the candidate
        once it has been scored on enough events (returns that decision)."""
        gate = self.gate
        if gate.candidate is None:  # nothing under test: no histories to gather
            return None
        gate.test(*fresh_targets(self.learner, events, gate.cfg.max_eval_per_slice), self._counts(), self.learner.vocab)
        return self._judge(gate.decide()) if gate.ready() else None

    def judge_on_holdout(self, held_out: pa.Table) -> Decision | None:
        """With no live version (a cold start, or after a demotion), judge a fresh full-pass
        candidate at once on the pass's held-out events: events it has not trained on, scored
        against popularity's training counts, as a stream slice would be. Without this a burst
        followed by silence would serve popularity until enough new traffic arrived. With a live
        version the held-out events are not fresh to it, so the candidate waits for the stream."""
        gate = self.gate
        if gate.candidate is None or gate.live is not None:
            return None
        gate.test(*fresh_targets(self.learner, held_out, max(gate.cfg.min_events, gate.cfg.max_eval_per_slice)),
                  self._counts(), self.learner.vocab)
        return self._judge(gate.decide()) if gate.ready() else None

    def after_update(self, publish: bool = True) -> Decision | None:
        """Roll non-finite weights back to the live ones; else freeze a candidate if none is under
        test (one at a time). Returns a decision when one was made. ``publish`` False: an
        optimistic gate does not put these weights live ahead of judging (the trainer is catching up)."""
        from increc_ray.learn.checkpoint import rollback_weights

        if not self.learner.finite():  # no further learning repairs NaN weights
            decision = self._judge(self.gate.reject("non-finite weights"))
        else:
            version = None
            if publish and self.optimistic and self.trusted and self.gate.live is not None:
                # live at once, judged afterwards (the candidate below, or the next one)
                version = self.next_version()
                self.publish(self.learner.export_weights(version, {"optimistic": True,
                                                                   "events_seen": self.learner.n_events}))
            if self.gate.candidate is not None:
                return None
            decision = self.gate.propose(Snapshot.of(self.learner, version or 0))
            if decision is None:
                return None
            self._judge(decision)
        rollback_weights(self.learner, *self.gate.live_state())
        return decision

    def _judge(self, decision: Decision) -> Decision:
        gate = self.gate
        published_ahead = self.optimistic and self.trusted and gate.candidate is not None and gate.candidate.version
        if decision.promoted:
            if published_ahead:  # it went live when frozen; serving already has its successors
                gate.promote(gate.candidate.version)
            else:
                live = gate.promote(self.next_version())
                # events_seen: how far into the stream the promoted weights have learned (model freshness)
                self.publish(self.learner.export_weights(live.version, {"gate": decision.to_json(),
                                                                        "events_seen": live.events_seen}, snapshot=live))
            self.trusted = True
        elif decision.live_worse_than_popularity and gate.live is not None:
            gone = gate.demote()
            self.publish(fallback_marker(self.next_version(), {"gate": decision.to_json(), "demoted": gone.version}))
            self.trusted = False
        elif self.optimistic and self.trusted:
            # serving has unjudged successors of a rejected candidate: back to the last judged version
            # (the learner learns on, as in strict mode; its updates wait for a candidate to pass)
            self.trusted = False
            live = gate.live
            if live is not None:
                self.rolled_back += 1
                self.publish(self.learner.export_weights(self.next_version(), {
                    "gate": decision.to_json(), "rolled_back_to": live.version,
                    "events_seen": live.events_seen}, snapshot=live))
        return decision


def fallback_marker(version: int, metrics: dict) -> dict:
    """A published artifact without weights: serving answers from popularity from ``version`` on."""
    return {"version": version, "fallback": True, "metrics": metrics, "created_at": time.time()}
