"""Prequential (test-then-train) replay of an event stream: ``increc evaluate stream``.

Protocol:

* Every positive event is an interaction (the profile's ``cleaning`` rules label the events).
  Events are sorted by timestamp with a *stable* sort (ties keep file order).
* A warm-up prefix (``evaluation.warmup_fraction`` of the time span) trains the starting model.
  The rest is cut into ``evaluation.windows`` windows of equal event counts, replayed in order.
* Every strategy is first *tested* on events, then *trained* on them (``Strategy.learn``), at
  its own cadence. A *streaming* strategy (``Strategy.streaming``: the incremental trainer,
  recent popularity) learns after every ``step`` events (``trainer.min_new_events``, as the
  live trainer updates once that many clean events wait) and at the end of each window; the
  others (full retraining, last-window fine-tuning) learn once per window. Either way an event is tested with weights that have not seen it. The
  history a model is asked about includes the user's earlier events up to the tested one
  (read-your-writes, as the serving app does).
* The target of an event is ranked against **every item known so far** (every item of an
  earlier event of the stream), with the user's earlier items excluded; ties count against
  the target (``increc_ray.evaluate.ranking``). An item the stream has never shown before cannot be
  ranked by anyone: it is a miss for every strategy. An event of a user with no earlier event
  is not evaluated (no history to condition on).
* Update compute is CPU seconds (``time.process_time``) around ``learn``, in the same run.

Item indices here are *stream* indices: items numbered from 1 in order of first appearance
(0 is padding, never an item), so "known before event e" is simply ``index <= n_known[e]``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

import numpy as np
import pyarrow as pa

from increc_ray.config import EvaluationConfig
from increc_ray.evaluate.ranking import evaluate_ranks

SCORE_BATCH = 256  # histories scored per forward pass
MISS = np.iinfo(np.int32).max  # the rank of a target nobody can rank (an item new to the stream)


@dataclass
class Stream:
    """Time-ordered positives, with the per-event facts the protocol needs."""

    events: pa.Table  # sorted by timestamp (stable); the learner's input format
    users: np.ndarray  # (N,) user id of each event
    items: np.ndarray  # (N,) stream index of each event's item (1-based)
    item_ids: list[str]  # item_ids[i - 1] is the id of stream index i
    n_known: np.ndarray  # (N,) items known before event e (stream indices 1..n_known[e])
    user_pos: np.ndarray  # (N,) number of earlier events of the same user
    user_items: dict[str, np.ndarray]  # user -> stream indices of all their events, in order
    timestamps: np.ndarray  # (N,) epoch milliseconds
    n_warmup: int  # events [0, n_warmup) are the warm-up
    windows: list[tuple[int, int]]  # [start, end) event ranges of the replayed windows

    @property
    def events_per_window(self) -> float:
        """Replayed events per window (windows have equal event counts, up to rounding)."""
        return (len(self.items) - self.n_warmup) / max(1, len(self.windows))

    def history(self, e: int) -> np.ndarray:
        """Stream indices of the user's events before event ``e``, oldest first."""
        return self.user_items[self.users[e]][: self.user_pos[e]]


def build_stream(events: pa.Table, cfg: EvaluationConfig) -> Stream:
    """Sort positives by time, index items by first appearance, split warm-up and windows."""
    ts = events["timestamp"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    order = np.argsort(ts, kind="stable")
    events = events.take(pa.array(order))
    ts = ts[order]
    users = np.asarray(events["user_id"].to_pylist(), dtype=object)
    ids = events["item_id"].to_pylist()
    index: dict[str, int] = {}
    items = np.empty(len(ids), dtype=np.int64)
    n_known = np.empty(len(ids), dtype=np.int64)
    for e, item in enumerate(ids):
        n_known[e] = len(index)
        items[e] = index.setdefault(item, len(index) + 1)
    per_user: dict[str, list[int]] = {}
    user_pos = np.empty(len(ids), dtype=np.int64)
    for e, (u, i) in enumerate(zip(users, items)):
        seq = per_user.setdefault(u, [])
        user_pos[e] = len(seq)
        seq.append(int(i))
    assert len(ts) >= 2, f"need at least two events, got {len(ts)}"
    cut = ts[0] + cfg.warmup_fraction * (ts[-1] - ts[0])
    n_warmup = int(np.searchsorted(ts, cut, side="left"))
    assert 0 < n_warmup < len(ts), f"warm-up cut at {cut} leaves {n_warmup} of {len(ts)} events for warm-up"
    n_windows = min(cfg.windows, len(ts) - n_warmup)
    bounds = np.linspace(n_warmup, len(ts), n_windows + 1).round().astype(int)
    return Stream(events, users, items, list(index), n_known, user_pos,
                  {u: np.asarray(s, dtype=np.int64) for u, s in per_user.items()}, ts, n_warmup,
                  [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])])


def eval_events(stream: Stream, start: int, end: int, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Events of [start, end) to evaluate: those with a history; a sorted sample if ``limit``."""
    e = np.arange(start, end)
    e = e[stream.user_pos[start:end] > 0]
    if limit and len(e) > limit:
        e = np.sort(rng.choice(e, size=limit, replace=False))
    return e


# ---- ranking ---------------------------------------------------------------------------------

def prequential_ranks(scores: np.ndarray, targets: np.ndarray, n_known: np.ndarray,
                      histories: Sequence[np.ndarray]) -> np.ndarray:
    """0-based rank of each target among the items known at its event, its history excluded.

    ``scores`` (B, n_items + 1) over stream indices. A target the stream has not shown before
    (``target > n_known``) gets rank ``MISS``, beyond any k. Ties count against the target and
    NaN ranks as -inf, as in ``ranking.rank_of``; the target itself is never excluded.
    """
    B, n_cols = scores.shape
    assert len(targets) == len(n_known) == len(histories) == B, "one target, n_known, history per row"
    s = np.where(np.isnan(scores), -np.inf, scores)
    cols = np.arange(n_cols)
    valid = (cols[None, :] >= 1) & (cols[None, :] <= n_known[:, None])  # (B, n_cols) known items
    for b, h in enumerate(histories):
        valid[b, h] = False
    rows = np.arange(B)
    valid[rows, targets] = False  # the target is not ahead of itself
    s_t = s[rows, targets]  # (B,)
    ranks = np.count_nonzero(valid & (s >= s_t[:, None]), axis=1)
    return np.where(targets <= n_known, ranks, MISS)


class Strategy(Protocol):
    """What the replay needs from a strategy: score histories, then learn what was scored."""

    name: str
    streaming: bool  # learns every ``step`` events of the replay, else once per window

    def scores(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(B, n_stream_items + 1) scores over stream indices; -inf where the model has no item."""

    def learn(self, start: int, end: int) -> None:
        """Train on the stream's events [start, end) (after they were evaluated): a step of the
        replay if ``streaming``, else a whole window."""


@dataclass
class StrategyResult:
    ranks: list[np.ndarray] = field(default_factory=list)  # per window
    events: list[np.ndarray] = field(default_factory=list)  # per window: the scored events, aligned with ranks
    update_seconds: float = 0.0
    window_seconds: list[float] = field(default_factory=list)


def replay(stream: Stream, strategies: Sequence[Strategy], cfg: EvaluationConfig, step: int,
           progress: Callable[[int, str], None] | None = None) -> dict[str, StrategyResult]:
    """Test-then-train over the windows; each strategy's ranks and update CPU seconds.

    Each window is replayed in steps of ``step`` events (its last step may be shorter): every
    strategy is tested on a step's events, then the streaming ones learn the step. At the
    window's end the others learn the window. Nothing is learned after the last tested event.
    """
    assert step >= 1, f"step must be >= 1, got {step}"
    rng = np.random.default_rng(cfg.seed)
    results = {s.name: StrategyResult() for s in strategies}
    final = stream.windows[-1][1] if stream.windows else 0  # nothing is tested after it: no learning
    for start, end in stream.windows:
        evs = eval_events(stream, start, end, cfg.eval_per_window, rng)
        ranks: dict[str, list[np.ndarray]] = {s.name: [] for s in strategies}
        seconds = dict.fromkeys(ranks, 0.0)
        for a in range(start, end, step):
            b = min(end, a + step)
            tested = evs[(evs >= a) & (evs < b)]
            for strat in strategies:
                ranks[strat.name] += _ranks(stream, strat, tested)
                if strat.streaming and b < final:
                    seconds[strat.name] += _timed_learn(strat, a, b)
                if progress:
                    progress(b - a, strat.name)
        for strat in strategies:
            if not strat.streaming and end < final:
                seconds[strat.name] += _timed_learn(strat, start, end)
            res, r = results[strat.name], ranks[strat.name]
            res.ranks.append(np.concatenate(r) if r else np.empty(0, dtype=np.int64))
            res.events.append(evs)
            res.update_seconds += seconds[strat.name]
            res.window_seconds.append(seconds[strat.name])
    return results


def _ranks(stream: Stream, strat: Strategy, events: np.ndarray) -> list[np.ndarray]:
    """Ranks of the targets of ``events`` under ``strat``'s current weights, per score batch."""
    out = []
    for i in range(0, len(events), SCORE_BATCH):
        batch = events[i:i + SCORE_BATCH]
        hists = [stream.history(e) for e in batch]
        out.append(prequential_ranks(strat.scores(hists), stream.items[batch], stream.n_known[batch], hists))
    return out


def _timed_learn(strat: Strategy, start: int, end: int) -> float:
    """``strat.learn(start, end)``; its CPU seconds."""
    t0 = time.process_time()
    strat.learn(start, end)
    return time.process_time() - t0


# ---- report ----------------------------------------------------------------------------------

def summarise(stream: Stream, results: dict[str, StrategyResult], k: int) -> dict:
    """Per-strategy overall and per-window HR@k / NDCG@k (micro-averaged over events)."""
    out = {}
    # one replay scores every strategy on the same events: their segment masks are computed once
    scored = next((np.concatenate(r.events) for r in results.values() if r.events), None)
    masks = segments(stream, scored) if scored is not None else {}
    for name, res in results.items():
        overall = evaluate_ranks(np.concatenate(res.ranks).tolist(), k=k)
        windows = []
        for (a, b), r, sec in zip(stream.windows, res.ranks, res.window_seconds):
            rep = evaluate_ranks(r.tolist(), k=k)
            windows.append({"start": a, "end": b, f"hr@{k}": rep.hr, f"ndcg@{k}": rep.ndcg, "n": rep.n,
                            "update_seconds": round(sec, 3)})
        out[name] = {f"hr@{k}": overall.hr, f"ndcg@{k}": overall.ndcg, "n": overall.n,
                     "update_seconds": round(res.update_seconds, 3), "windows": windows}
        if res.events:
            ranks = np.concatenate(res.ranks)
            assert np.array_equal(np.concatenate(res.events), scored), f"{name} was scored on other events"
            assert len(ranks) == len(scored), f"{name}: {len(ranks)} ranks for {len(scored)} scored events"
            out[name]["segments"] = {
                seg: {f"ndcg@{k}": rep.ndcg if rep.n else None, "n": rep.n}
                for seg, mask in masks.items()
                for rep in [evaluate_ranks(ranks[mask].tolist(), k=k)]}
    return out


# (low, high) bounds, inclusive, of the segments' counts
HISTORY_BUCKETS = ((1, 5), (6, 20), (21, 50), (51, None))
ITEM_WARMUP_BUCKETS = ((0, 0), (1, 10), (11, 50), (51, 200), (201, None))


def segments(stream: Stream, events: np.ndarray) -> dict[str, np.ndarray]:
    """Boolean masks over ``events`` that say where a strategy gains or loses: the user's earlier
    events (``history``), the target item's events in the warm-up (``item warm-up``: 0 is an item
    that arrived later, which the static model cannot know), and whether the user was in the
    warm-up at all."""
    counts = np.bincount(stream.items[: stream.n_warmup], minlength=len(stream.item_ids) + 1)
    hist, item = stream.user_pos[events], counts[stream.items[events]]
    out = {}
    for label, values, buckets in (("history", hist, HISTORY_BUCKETS), ("item warm-up", item, ITEM_WARMUP_BUCKETS)):
        for lo, hi in buckets:
            name = f"{label} {lo}+" if hi is None else f"{label} {lo}" if lo == hi else f"{label} {lo}-{hi}"
            out[name] = (values >= lo) & (values <= (hi if hi is not None else np.inf))
    warm_users = set(stream.users[: stream.n_warmup])
    out["warm-up user"] = np.fromiter((u in warm_users for u in stream.users[events]), bool, len(events))
    out["new user"] = ~out["warm-up user"]
    return out


def stream_stats(stream: Stream) -> dict:
    """Event, user and item counts of the warm-up and the replay."""
    rep = slice(stream.n_warmup, len(stream.items))
    warm_users = set(stream.users[: stream.n_warmup])
    return {
        "events": len(stream.items), "users": len(stream.user_items), "items": len(stream.item_ids),
        "warmup_events": stream.n_warmup, "replay_events": len(stream.items) - stream.n_warmup,
        "warmup_end": _iso(stream.timestamps[stream.n_warmup - 1]),
        "first_event": _iso(stream.timestamps[0]), "last_event": _iso(stream.timestamps[-1]),
        "replay_events_of_warmup_users": int(sum(u in warm_users for u in stream.users[rep])),
        "replay_events_without_history": int(np.count_nonzero(stream.user_pos[rep] == 0)),
        "replay_targets_new_to_stream": int(np.count_nonzero(stream.items[rep] > stream.n_known[rep])),
        "windows": len(stream.windows),
    }


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(int(ms) / 1000))


def machine() -> dict:
    import platform

    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "processor": platform.processor() or platform.machine()}
