"""The strategies the prequential replay compares (``increc_ray.prequential.Strategy``).

* ``Static``: the warm-up model, never updated.
* ``Incremental``: the live trainer's loop, verbatim in what it calls: ``observe`` a slice of at
  most ``trainer.max_new_events`` events, then ``update`` (``increc_ray.learn.train``). Its replay,
  lr schedule and new-item warm start are the learner's own. It streams: the replay hands it
  ``trainer.min_new_events`` events at a time (and a window's remainder at its end), as the live
  trainer updates once that many clean events wait.
  ``last_window`` is the same loop once per window, with no replay and several passes:
  fine-tuning on the newest window only, the naive baseline.
* ``FullRetrain``: every ``every``-th window a fresh learner is trained from scratch on all
  events so far (``train_from_scratch``: ``observe`` + ``train_epoch``, as offline training
  does); in between it serves the last retrained model.
* ``Consolidated`` (``incremental+full_pass[N]``): ``incremental`` plus a full pass every ``N``
  events learned, as the deployed trainer runs it with ``bootstrap.consolidate_every_events = N``
  (``increc_ray.learn.bootstrap.fit_events``: a fresh model with early stopping on the newest
  events held out, then those held-out events learned incrementally).
* ``Popularity``: exponentially decayed item counts (half-life in windows), updated as the
  events stream in.

All of them score over stream indices (``prequential``); an item a model has no row for
scores -inf, and a history item it does not know is dropped, as ``Scorer`` does.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from increc_ray.config import Config, ModelConfig, TrainerConfig
from increc_ray.learn.bootstrap import fit_events, with_trainer
from increc_ray.learn.learner import IncrementalLearner
from increc_ray.evaluate.prequential import Stream


def train_from_scratch(stream: Stream, end: int, model_cfg: ModelConfig, trainer_cfg: TrainerConfig,
                       epochs: int) -> IncrementalLearner:
    """A fresh learner trained for ``epochs`` passes over events [0, end) of the stream."""
    learner = IncrementalLearner(model_cfg, trainer_cfg)
    learner.observe(stream.events.slice(0, end))
    for _ in range(epochs):
        learner.train_epoch()
    return learner


def fork(learner: IncrementalLearner, trainer_cfg: TrainerConfig | None = None) -> IncrementalLearner:
    """An independent copy with nothing pending (what it observed counts as learned), running
    ``trainer_cfg`` (default: its own): the copy keeps the optimizer moments from warm-up
    training, as a live trainer resumed from a checkpoint does (``bootstrap.with_trainer``)."""
    return with_trainer(learner, trainer_cfg or learner.trainer_cfg)


class _LearnerScores:
    """Scores of a learner laid out over the stream's item indices."""

    stream: Stream
    learner: IncrementalLearner
    _cols: np.ndarray | None = None
    _cols_key: tuple = ()

    def _columns(self) -> np.ndarray:
        """(n_stream + 1,) learner index of each stream index; 0 (pad, scored -inf) if unknown.
        Cached per learner (a retrain replaces it) and vocabulary size."""
        key = (id(self.learner), self.learner.n_items)
        if self._cols_key != key:
            self._cols = np.concatenate([[0], self.learner.vocab.lookup(self.stream.item_ids)])
            self._cols_key = key
        return self._cols

    def scores(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        cols = self._columns()
        out = np.full((len(histories), len(cols)), -np.inf, dtype=np.float32)
        mapped = [cols[h] for h in histories]
        mapped = [m[m > 0] for m in mapped]
        rows = [b for b, m in enumerate(mapped) if len(m)]
        if rows:
            s = self.learner.score_histories([mapped[b] for b in rows]).numpy()  # (B', n_items + 1)
            out[rows] = s[:, cols]  # column 0 of s is -inf, so unknown items stay -inf
        return out


class Static(_LearnerScores):
    streaming = False

    def __init__(self, name: str, stream: Stream, learner: IncrementalLearner) -> None:
        self.name, self.stream, self.learner = name, stream, learner

    def learn(self, start: int, end: int) -> None:
        pass


class Incremental(_LearnerScores):
    """The live trainer's observe/update loop over each step (``streaming``) or window: the step
    is what decides when it updates (the replay's step is ``trainer.min_new_events``)."""

    def __init__(self, name: str, stream: Stream, learner: IncrementalLearner, streaming: bool = True) -> None:
        self.name, self.stream, self.learner, self.streaming = name, stream, learner, streaming
        self.n_updates = 0

    def learn(self, start: int, end: int) -> None:
        cfg = self.learner.trainer_cfg
        for a in range(start, end, cfg.max_new_events):
            self.learner.observe(self.stream.events.slice(a, min(end, a + cfg.max_new_events) - a))
            if self.learner.pending_targets and self.learner.update() is not None:
                self.n_updates += 1


class Consolidated(Incremental):
    """``Incremental`` plus a full pass after every ``every`` events learned incrementally, as
    the deployed trainer runs one (``learn.train``, ``bootstrap.consolidate_every_events``): a
    fresh model on every event so far (``fit_events``: early stopping on the newest held out),
    then the held-out events learned incrementally, so none is skipped or learned twice."""

    def __init__(self, name: str, stream: Stream, learner: IncrementalLearner, cfg: Config, every: int) -> None:
        assert every >= 1, f"every must be >= 1, got {every}"
        super().__init__(name, stream, learner)
        self.cfg, self.every = cfg, every
        self.since_full_pass = 0
        self.full_passes: list[dict] = []

    def learn(self, start: int, end: int) -> None:
        super().learn(start, end)
        self.since_full_pass += end - start
        if self.since_full_pass >= self.every:
            self.learner, report, cut = fit_events(self.stream.events.slice(0, end), self.cfg)
            self.full_passes.append({k: v for k, v in report.items() if k != "history"})
            super().learn(cut, end)  # the pass's held-out tail: its data, not new events
            self.since_full_pass = 0


class FullRetrain(_LearnerScores):
    streaming = False

    def __init__(self, name: str, stream: Stream, learner: IncrementalLearner, every: int, epochs: int,
                 trainer_cfg: TrainerConfig) -> None:
        assert every >= 1 and epochs >= 1, f"every and epochs must be >= 1, got {every}, {epochs}"
        self.name, self.stream, self.learner = name, stream, learner
        self.every, self.epochs, self.trainer_cfg = every, epochs, trainer_cfg
        self._windows = 0
        self.n_updates = 0

    def learn(self, start: int, end: int) -> None:
        self._windows += 1
        if self._windows % self.every == 0:
            self.learner = train_from_scratch(self.stream, end, self.learner.model_cfg, self.trainer_cfg, self.epochs)
            self.n_updates += 1


class Popularity:
    """Recent popularity: item counts decayed by half every ``half_life`` windows' worth of
    events (windows have equal event counts), learned as the events stream in."""

    streaming = True

    def __init__(self, name: str, stream: Stream, half_life: float) -> None:
        assert half_life > 0, f"half_life must be > 0, got {half_life}"
        self.name, self.stream = name, stream
        self.decay = 0.5 ** (1.0 / (half_life * stream.events_per_window))  # per event
        self.counts = np.bincount(stream.items[: stream.n_warmup], minlength=len(stream.item_ids) + 1).astype(float)

    def scores(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        return np.broadcast_to(self.counts, (len(histories), self.counts.size))

    def learn(self, start: int, end: int) -> None:
        self.counts *= self.decay ** (end - start)
        self.counts += np.bincount(self.stream.items[start:end], minlength=self.counts.size)
