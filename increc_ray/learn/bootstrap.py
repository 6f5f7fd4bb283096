"""Full passes: a fresh model trained to convergence on every clean event so far (Ray-free core).

The deployed trainer (``increc_ray.learn.train``) runs one when it starts cold with a backlog,
when the unread backlog grows large against what it has learned (a burst, or a trainer that was
down), and, if configured, every ``bootstrap.consolidate_every_events`` events. ``fit_events``:

* holds out the newest ``bootstrap.holdout_fraction`` of the events (by arrival order, as the
  stream delivers them) and trains a fresh learner on the rest with the ``bootstrap`` settings,
  at most ``bootstrap.epochs`` epochs and ``bootstrap.max_minutes``;
* every ``bootstrap.eval_every`` epochs scores NDCG@k of the held-out events, test-then-train
  style: each event's item ranked among the items the model knows after the user's earlier
  items (training part, then the earlier held-out ones), those items excluded; items the model
  never saw are misses. Popularity (training counts) is scored on the same events beside it;
* stops after ``bootstrap.patience`` scores without a better NDCG and keeps the best weights;
* hands back a learner with the trainer's settings (optimizer moments kept, as a resume keeps
  them) and the index of the first held-out event: the caller learns the held-out events (and
  whatever arrived meanwhile) incrementally from there, so nothing is skipped or learned twice.
"""

from __future__ import annotations

import copy
import time
from typing import Callable

import numpy as np
import pyarrow as pa

from increc_ray.config import Config, TrainerConfig
from increc_ray.learn.gate import Snapshot, fresh_targets, ndcg, popularity_ranks
from increc_ray.learn.learner import IncrementalLearner

SCORE_BATCH = 512


class Stopped(Exception):
    """The full pass was asked to stop (the deployment is shutting down)."""


def score_holdout(learner: IncrementalLearner, histories: list[list[int]], targets: np.ndarray,
                  k: int) -> tuple[float, float]:
    """(model NDCG@k, popularity NDCG@k) of the held-out targets."""
    if not len(targets):
        return float("nan"), float("nan")
    snap = Snapshot.of(learner)
    model, pop = [], []
    for i in range(0, len(targets), SCORE_BATCH):
        h, t = histories[i:i + SCORE_BATCH], targets[i:i + SCORE_BATCH]
        model.append(ndcg(snap.ranks(h, t, cap=k), k))
        pop.append(ndcg(popularity_ranks(learner.item_counts, h, t), k))
    return float(np.concatenate(model).mean()), float(np.concatenate(pop).mean())


def with_trainer(learner: IncrementalLearner, trainer_cfg: TrainerConfig) -> IncrementalLearner:
    """An independent copy with nothing pending (what it observed counts as learned), running
    ``trainer_cfg``: the optimizer moments are kept when the optimizer kind is the same (as a
    resumed trainer keeps them), else the optimizer is fresh."""
    state = learner.state_dict()  # tensors are cloned: the copy shares nothing
    state["pending"], state["n_pending_targets"] = {}, 0
    if trainer_cfg != learner.trainer_cfg:
        state["trainer_config"] = trainer_cfg.model_dump()
        fresh = IncrementalLearner(learner.model_cfg, trainer_cfg).optimizer.state_dict()
        if trainer_cfg.optimizer == learner.trainer_cfg.optimizer:
            groups = [{**new, "params": old["params"]}
                      for old, new in zip(state["optimizer"]["param_groups"], fresh["param_groups"])]
            state["optimizer"] = {**state["optimizer"], "param_groups": groups}
        else:
            state["optimizer"] = fresh
    return IncrementalLearner.from_state_dict(state, device=str(learner.device))


def fit_events(events: pa.Table, cfg: Config, device: str = "cpu",
               progress: Callable[[dict], None] | None = None,
               should_stop: Callable[[], bool] | None = None) -> tuple[IncrementalLearner, dict, int]:
    """A full pass over ``events`` (clean rows, arrival order) as the module says.

    Returns (learner running ``cfg.trainer``, a report of the pass, the row index of the first
    held-out event). ``progress`` gets a dict after every epoch (epoch, epochs, elapsed and an
    estimate of the seconds left); ``should_stop`` is polled between epochs and raises
    ``Stopped`` when true.
    """
    b, k = cfg.bootstrap, cfg.gate.k
    n = events.num_rows
    cut = n - max(1, int(round(b.holdout_fraction * n)))
    learner = IncrementalLearner(cfg.model, cfg.bootstrap_trainer, device=device)
    learner.observe(events.slice(0, cut))
    histories, targets = fresh_targets(learner, events.slice(cut), b.holdout_max_events)  # as the gate scores a slice
    report = {"n_events": n, "n_train": cut, "n_holdout": n - cut, "n_scored": int(len(targets)),
              "epochs": 0, "best_epoch": 0, f"holdout_ndcg@{k}": None, f"popularity_ndcg@{k}": None,
              "history": [], "stopped_by": "epochs"}
    t0 = time.monotonic()
    best, best_state, bad = -1.0, None, 0

    def tell(epoch: int) -> None:
        if progress:
            elapsed = time.monotonic() - t0
            left = min(elapsed / max(1, epoch) * (b.epochs - epoch), max(0.0, 60 * b.max_minutes - elapsed))
            progress({"epoch": epoch, "epochs": b.epochs, "elapsed_s": round(elapsed, 1),
                      "eta_s": round(left, 1), "n_events": n, f"best_holdout_ndcg@{k}": report[f"holdout_ndcg@{k}"]})

    tell(0)
    if learner.pending_targets == 0:  # nothing to train on (every user has a single item)
        report["stopped_by"] = "no targets"
        return with_trainer(learner, cfg.trainer), report, cut
    for epoch in range(1, b.epochs + 1):
        if should_stop and should_stop():
            raise Stopped()
        loss = learner.train_epoch()
        report["epochs"] = epoch
        if epoch % b.eval_every == 0 or epoch == b.epochs:
            score, pop = score_holdout(learner, histories, targets, k)
            report["history"].append({"epoch": epoch, "loss": round(loss, 4), f"holdout_ndcg@{k}": round(score, 5),
                                      "seconds": round(time.monotonic() - t0, 1)})
            report[f"popularity_ndcg@{k}"] = pop
            if score > best or best_state is None:
                best, bad, report["best_epoch"] = score, 0, epoch
                report[f"holdout_ndcg@{k}"] = score
                best_state = copy.deepcopy(learner.model.state_dict())
            else:
                bad += 1
            if bad >= b.patience:
                report["stopped_by"] = "patience"
                tell(epoch)
                break
        if time.monotonic() - t0 > 60 * b.max_minutes:
            report["stopped_by"] = "max_minutes"
            tell(epoch)
            break
        tell(epoch)
    if best_state is not None:
        learner.model.load_state_dict(best_state)
    report["seconds"] = round(time.monotonic() - t0, 1)
    return with_trainer(learner, cfg.trainer), report, cut
