"""Offline evaluation: the product's own model, loaders, cleaning and learner, measured with the
field's standard protocol (``increc evaluate offline``).

Protocol (leave-one-out by time, full ranking):

* Every positive event is an interaction: the events are cleaned and labelled by the profile's
  ``cleaning`` rules (the MovieLens profiles make every rating a positive).
* Each user's interactions are sorted by time with a *stable* sort (ties keep file order);
  the last is the test target, the second-to-last the validation target, the rest is
  training. Users with fewer than three interactions only contribute training data.
* A target is ranked against **every** item of the dataset, with the user's earlier items
  (the ones the model saw as history) excluded; ties count against the target
  (``increc_ray.evaluate.ranking``). Items never seen in training score -inf: a miss, not a skip.
* The model trains on the training parts only, as the profile's ``bootstrap`` section says
  (``IncrementalLearner.train_epoch``: the live update's step and loss), stops early on
  validation NDCG@10, and is tested with the validation item appended to the history.

The most-popular baseline (training counts; seen items excluded) is measured in the same run.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from increc_ray.ingest.clean import clean_batch
from increc_ray.config import BootstrapConfig, CleaningConfig, Config, ModelConfig, TrainerConfig
from increc_ray.errors import DataError
from increc_ray.learn.learner import IncrementalLearner
from increc_ray.ingest.loaders import read_events_file
from increc_ray.evaluate.ranking import K, ScoreFn, evaluate_ranks, rank_of

def load_interactions(path: str, cleaning: CleaningConfig) -> pa.Table:
    """Read and clean an event file; the positives, in file order. Quarantined rows raise."""
    result = clean_batch(read_events_file(path), cleaning, source=path)
    if result.quarantined.num_rows:
        first = result.quarantined.slice(0, 1).to_pylist()[0]
        raise DataError(f"{path}: {result.quarantined.num_rows} rows failed cleaning, e.g. row {first['row']}: "
                        f"{first['reason']}")
    clean = result.clean
    return clean.filter(pc.equal(clean["label"], 1))


@dataclass
class Split:
    """Leave-one-out split; item lists are ids, oldest first."""

    train: dict[str, list[str]]  # every user (users with < 3 items: all of them)
    valid: dict[str, str]  # evaluated users only
    test: dict[str, str]
    train_events: pa.Table  # the training rows, in time order (what the learner observes)
    items: list[str] = field(default_factory=list)  # the whole catalogue, order of first appearance


def leave_one_out(events: pa.Table) -> Split:
    """Split positives (``user_id``, ``item_id``, ``timestamp`` columns) by the protocol above."""
    ts = events["timestamp"].cast(pa.int64()).to_numpy(zero_copy_only=False)
    order = np.argsort(ts, kind="stable")  # ties keep file order
    users = events["user_id"].to_numpy(zero_copy_only=False)[order]
    items = events["item_id"].to_numpy(zero_copy_only=False)[order]
    seqs: dict[str, list[int]] = {}  # user -> positions in ``order``
    for pos, user in enumerate(users):
        seqs.setdefault(user, []).append(pos)
    train, valid, test, keep = {}, {}, {}, np.zeros(len(order), dtype=bool)
    for user, positions in seqs.items():
        n_train = len(positions) - 2 if len(positions) >= 3 else len(positions)
        train[user] = [items[p] for p in positions[:n_train]]
        keep[positions[:n_train]] = True
        if n_train < len(positions):
            valid[user], test[user] = items[positions[-2]], items[positions[-1]]
    catalogue = list(dict.fromkeys(items.tolist()))
    return Split(train, valid, test, events.take(pa.array(order[keep])), catalogue)


def dataset_stats(split: Split) -> dict:
    n = sum(len(v) for v in split.train.values()) + len(split.valid) + len(split.test)
    return {"users": len(split.train), "items": len(split.items), "interactions": n,
            "eval_users": len(split.test), "train_interactions": n - len(split.valid) - len(split.test)}


# ---- ranking ---------------------------------------------------------------------------------



def catalogue_index(split: Split) -> dict[str, int]:
    """Item id -> column of a catalogue score row (column 0 is never an item)."""
    return {item: i + 1 for i, item in enumerate(split.items)}


def ranks(score_fn: ScoreFn, index: dict[str, int], histories: list[list[str]], targets: list[str],
          batch_size: int = 256) -> list[int]:
    """0-based full-ranking rank of each target, with the history's items (and column 0) excluded."""
    out = []
    for i in range(0, len(histories), batch_size):
        hs = histories[i:i + batch_size]
        scores = score_fn(hs)
        for row, h, t in zip(scores, hs, targets[i:i + batch_size]):
            out.append(rank_of(row, index[t], exclude=[0] + [index[x] for x in h]))
    return out


def popularity_scorer(split: Split, index: dict[str, int], with_valid: bool) -> ScoreFn:
    """Most popular by training counts (plus validation targets when testing); same row for all."""
    counts = np.zeros(len(index) + 1)
    for seq in split.train.values():
        for item in seq:
            counts[index[item]] += 1
    if with_valid:
        for item in split.valid.values():
            counts[index[item]] += 1
    return lambda histories: np.broadcast_to(counts, (len(histories), counts.size))


def model_scorer(learner: IncrementalLearner, index: dict[str, int]) -> ScoreFn:
    """Learner scores laid out over the catalogue; items it never trained on score -inf."""
    n_cat = len(index)
    known = learner.vocab.lookup(list(index))  # (n_cat,) learner index or 0
    cols = np.fromiter(index.values(), dtype=np.int64)

    def score(histories: list[list[str]]) -> np.ndarray:
        idx = [learner.vocab.lookup(h) for h in histories]
        idx = [i[i > 0] for i in idx]
        out = np.full((len(histories), n_cat + 1), -np.inf)
        has = [b for b, i in enumerate(idx) if len(i)]
        if has:
            s = learner.score_histories([idx[b] for b in has]).numpy()  # (B', n_items + 1)
            s = np.where(known[None, :] > 0, s[:, known], -np.inf)  # (B', n_cat)
            out[np.asarray(has)[:, None], cols[None, :]] = s
        return out

    return score


def evaluate(score_fn: ScoreFn, split: Split, index: dict[str, int], part: str, max_users: int | None = None,
             k: int = K) -> dict:
    """HR@k / NDCG@k on ``part`` ("valid" or "test") over the evaluated users."""
    users = list(split.test)[:max_users]
    if part == "valid":
        histories, targets = [split.train[u] for u in users], [split.valid[u] for u in users]
    else:
        assert part == "test", f"part must be 'valid' or 'test', got {part!r}"
        histories, targets = [split.train[u] + [split.valid[u]] for u in users], [split.test[u] for u in users]
    rep = evaluate_ranks(ranks(score_fn, index, histories, targets), k=k)
    return {f"hr@{k}": rep.hr, f"ndcg@{k}": rep.ndcg, "n": rep.n}


# ---- training --------------------------------------------------------------------------------

def fit(split: Split, model_cfg: ModelConfig, trainer_cfg: TrainerConfig, bootstrap: BootstrapConfig,
        log: Callable[[str], None] | None = None, k: int = K) -> tuple[IncrementalLearner, dict]:
    """Train a fresh learner on the training parts (``bootstrap``: epochs, validation cadence,
    patience, time cap; ``trainer_cfg``: its step); keep the weights of the best validation NDCG@k."""
    learner = IncrementalLearner(model_cfg, trainer_cfg)
    learner.observe(split.train_events)
    index = catalogue_index(split)
    score = model_scorer(learner, index)
    nd = f"ndcg@{k}"
    best, best_state, best_epoch, bad, history = -1.0, None, 0, 0, []
    t0 = time.perf_counter()
    epoch = 0
    for epoch in range(1, bootstrap.epochs + 1):
        loss = learner.train_epoch()
        if epoch % bootstrap.eval_every and epoch != bootstrap.epochs:
            continue
        valid = evaluate(score, split, index, "valid", k=k)
        elapsed = time.perf_counter() - t0
        history.append({"epoch": epoch, "loss": round(loss, 4), f"valid_{nd}": round(valid[nd], 4),
                        "seconds": round(elapsed, 1)})
        if log:
            log(f"epoch {epoch:4d}  loss {loss:.4f}  valid hr@{k} {valid[f'hr@{k}']:.4f} "
                f"{nd} {valid[nd]:.4f}  {elapsed:6.0f}s")
        if valid[nd] > best:
            best, best_epoch, bad = valid[nd], epoch, 0
            best_state = copy.deepcopy(learner.model.state_dict())
        else:
            bad += 1
        if bad >= bootstrap.patience or elapsed > 60 * bootstrap.max_minutes:
            break
    train_seconds = time.perf_counter() - t0  # includes the validation passes early stopping needs
    learner.model.load_state_dict(best_state)
    return learner, {"train_seconds": train_seconds, "epochs": epoch, "best_epoch": best_epoch, "history": history}


# ---- the whole run ---------------------------------------------------------------------------

def dataset_name(path: str) -> str:
    """``ml-100k`` for .../ml-100k/u.data: the name of the file's folder."""
    return os.path.basename(os.path.dirname(os.path.abspath(path))) or os.path.splitext(os.path.basename(path))[0]


def run_offline(path: str, cfg: Config, profile: str | None = None, out_dir: str | None = "bench/results",
                log: Callable[[str], None] | None = print, threads: int | None = None) -> dict:
    """Load (``cfg.cleaning``), split, bootstrap ``cfg.model`` (``cfg.bootstrap``), evaluate model
    and popularity; write ``<out_dir>/offline_<dataset>.json`` naming ``profile`` and the whole ``cfg``.

    ``threads`` sets torch's CPU threads for the run (None: leave torch's setting alone)."""

    if threads:
        torch.set_num_threads(threads)
    name, k = dataset_name(path), cfg.evaluation.k
    split = leave_one_out(load_interactions(path, cfg.cleaning))
    stats = dataset_stats(split)
    if log:
        log(f"{name} (profile {profile}): {stats}")
    index = catalogue_index(split)
    learner, info = fit(split, cfg.model, cfg.bootstrap_trainer, cfg.bootstrap, log=log, k=k)
    score = model_scorer(learner, index)

    def measure(fn, part):
        return evaluate(fn, split, index, part, k=k)

    result = {
        "dataset": name,
        "data_file": os.path.abspath(path),
        "profile": profile,
        "protocol": "leave-one-out by time (stable sort), full ranking over all items, seen items excluded",
        "stats": stats,
        "test": measure(score, "test"),
        "valid": measure(score, "valid"),
        "popularity": {"test": measure(popularity_scorer(split, index, True), "test"),
                       "valid": measure(popularity_scorer(split, index, False), "valid")},
        **info,
        "config": cfg.to_dict(),
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    if log:
        log(format_table(result, k))
    if out_dir:
        write_result(result, out_dir, f"offline_{name}.json")
    return result


def write_result(result: dict, out_dir: str, filename: str) -> str:
    """Write a benchmark result as indented JSON under ``out_dir``; returns the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, filename)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    return path


def format_table(result: dict, k: int = K) -> str:
    """The printed summary: model vs popularity, valid and test."""
    rows = [("model", result["valid"], result["test"]),
            ("most popular", result["popularity"]["valid"], result["popularity"]["test"])]
    hr, nd = f"hr@{k}", f"ndcg@{k}"
    lines = [f"{result['dataset']}  ({result['stats']['eval_users']} users ranked over "
             f"{result['stats']['items']} items; trained {result['train_seconds']:.0f}s, "
             f"best epoch {result['best_epoch']})",
             f"{'':14}{f'valid HR@{k}':>12}{f'NDCG@{k}':>9}{f'test HR@{k}':>12}{f'NDCG@{k}':>9}"]
    for name, v, t in rows:
        lines.append(f"{name:14}{v[hr]:12.4f}{v[nd]:9.4f}{t[hr]:12.4f}{t[nd]:9.4f}")
    return "\n".join(lines)
