"""Offline evaluation: the product's own model, loaders, cleaning and learner, measured with the
field's standard protocol (``increc evaluate offline``).

Protocol (leave-one-out by time, full ranking):

* Every positive event is an interaction (``offline_cleaning`` makes every rating positive).
* Each user's interactions are sorted by time with a *stable* sort (ties keep file order);
  the last is the test target, the second-to-last the validation target, the rest is
  training. Users with fewer than three interactions only contribute training data.
* A target is ranked against **every** item of the dataset, with the user's earlier items
  (the ones the model saw as history) excluded; ties count against the target
  (``increc_ray.evaluate.ranking``). Items never seen in training score -inf: a miss, not a skip.
* The model trains on the training parts only (``IncrementalLearner.train_epoch``: the live
  update's step and loss), stops early on validation NDCG@10, and is tested with the
  validation item appended to the history.

The most-popular baseline (training counts; seen items excluded) is measured in the same run.
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from increc_ray.ingest.clean import clean_batch
from increc_ray.config import CleaningConfig, LabelRule, ModelConfig, TrainerConfig
from increc_ray.errors import ConfigError, DataError
from increc_ray.learn.learner import IncrementalLearner
from increc_ray.ingest.loaders import read_events_file
from increc_ray.evaluate.ranking import K, ScoreFn, evaluate_ranks, rank_of

def offline_cleaning() -> CleaningConfig:
    """The default cleaning rules, except that every rating is a positive of weight 1."""
    rules = dict(CleaningConfig().event_types)
    rules["rating"] = LabelRule(weight=1.0, min_value=None)
    return CleaningConfig(event_types=rules)


def load_interactions(path: str, cleaning: CleaningConfig | None = None) -> pa.Table:
    """Read and clean an event file; the positives, in file order. Quarantined rows raise."""
    result = clean_batch(read_events_file(path), cleaning or offline_cleaning(), source=path)
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


def evaluate(score_fn: ScoreFn, split: Split, index: dict[str, int], part: str, max_users: int | None = None) -> dict:
    """HR@10 / NDCG@10 on ``part`` ("valid" or "test") over the evaluated users."""
    users = list(split.test)[:max_users]
    if part == "valid":
        histories, targets = [split.train[u] for u in users], [split.valid[u] for u in users]
    else:
        assert part == "test", f"part must be 'valid' or 'test', got {part!r}"
        histories, targets = [split.train[u] + [split.valid[u]] for u in users], [split.test[u] for u in users]
    rep = evaluate_ranks(ranks(score_fn, index, histories, targets), k=K)
    return {f"hr@{K}": rep.hr, f"ndcg@{K}": rep.ndcg, "n": rep.n}


# ---- training --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FitConfig:
    """The epoch loop around ``IncrementalLearner.train_epoch``."""

    max_epochs: int = 200
    patience: int = 20  # evaluations without a better validation NDCG@10 before stopping
    eval_every: int = 2  # epochs between validation evaluations
    max_minutes: float = 25.0  # wall-clock cap on training (the issue allows 30)

    def __post_init__(self) -> None:
        for key in ("max_epochs", "patience", "eval_every", "max_minutes"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"fit.{key}: {getattr(self, key)!r} must be > 0")


# Tuned per dataset on validation NDCG@10 (see README "Offline quality"); others get DEFAULT.
# history_len 201 (max_len + 1: each user's newest items only) is what the committed results used.
DEFAULT = {"model": {"max_len": 200, "dropout": 0.2},
           "trainer": {"batch_size": 128, "lr_schedule": "constant", "history_len": 201},
           "fit": {"eval_every": 2, "patience": 5}}
PRESETS: dict[str, dict] = {
    "ml-100k": DEFAULT,
    "ml-latest-small": {"model": {"max_len": 200, "dropout": 0.3},
                        "trainer": {"batch_size": 64, "lr": 2e-3, "lr_schedule": "constant", "history_len": 201},
                        "fit": {"max_epochs": 40, "eval_every": 2, "patience": 5}},
}


def preset(name: str, seed: int = 0, max_epochs: int | None = None,
           max_minutes: float | None = None) -> tuple[ModelConfig, TrainerConfig, FitConfig]:
    """The (model, trainer, fit) configs for dataset ``name``, with optional overrides."""
    p = PRESETS.get(name, DEFAULT)
    fit_kw = dict(p["fit"])
    if max_epochs is not None:
        fit_kw["max_epochs"] = max_epochs
    if max_minutes is not None:
        fit_kw["max_minutes"] = max_minutes
    return ModelConfig(**p["model"]), TrainerConfig(**{**p["trainer"], "seed": seed}), FitConfig(**fit_kw)


def fit(split: Split, model_cfg: ModelConfig, trainer_cfg: TrainerConfig, fit_cfg: FitConfig,
        log: Callable[[str], None] | None = None) -> tuple[IncrementalLearner, dict]:
    """Train a fresh learner on the training parts; keep the weights of the best validation NDCG@10."""
    learner = IncrementalLearner(model_cfg, trainer_cfg)
    learner.observe(split.train_events)
    index = catalogue_index(split)
    score = model_scorer(learner, index)
    best, best_state, best_epoch, bad, history = -1.0, None, 0, 0, []
    t0 = time.perf_counter()
    epoch = 0
    for epoch in range(1, fit_cfg.max_epochs + 1):
        loss = learner.train_epoch()
        if epoch % fit_cfg.eval_every and epoch != fit_cfg.max_epochs:
            continue
        valid = evaluate(score, split, index, "valid")
        elapsed = time.perf_counter() - t0
        history.append({"epoch": epoch, "loss": round(loss, 4), "valid_ndcg@10": round(valid["ndcg@10"], 4),
                        "seconds": round(elapsed, 1)})
        if log:
            log(f"epoch {epoch:4d}  loss {loss:.4f}  valid hr@10 {valid['hr@10']:.4f} "
                f"ndcg@10 {valid['ndcg@10']:.4f}  {elapsed:6.0f}s")
        if valid["ndcg@10"] > best:
            best, best_epoch, bad = valid["ndcg@10"], epoch, 0
            best_state = copy.deepcopy(learner.model.state_dict())
        else:
            bad += 1
        if bad >= fit_cfg.patience or elapsed > 60 * fit_cfg.max_minutes:
            break
    train_seconds = time.perf_counter() - t0  # includes the validation passes early stopping needs
    learner.model.load_state_dict(best_state)
    return learner, {"train_seconds": train_seconds, "epochs": epoch, "best_epoch": best_epoch, "history": history}


# ---- the whole run ---------------------------------------------------------------------------

def dataset_name(path: str) -> str:
    """``ml-100k`` for .../ml-100k/u.data: the name of the file's folder."""
    return os.path.basename(os.path.dirname(os.path.abspath(path))) or os.path.splitext(os.path.basename(path))[0]


def run_offline(path: str, model_cfg: ModelConfig, trainer_cfg: TrainerConfig, fit_cfg: FitConfig,
                out_dir: str | None = "bench/results", log: Callable[[str], None] | None = print,
                threads: int | None = None) -> dict:
    """Load, split, train, evaluate model and popularity; write ``<out_dir>/offline_<dataset>.json``.

    ``threads`` sets torch's CPU threads for the run (None: leave torch's setting alone)."""

    if threads:
        torch.set_num_threads(threads)
    name = dataset_name(path)
    split = leave_one_out(load_interactions(path))
    stats = dataset_stats(split)
    if log:
        log(f"{name}: {stats}")
    index = catalogue_index(split)
    learner, info = fit(split, model_cfg, trainer_cfg, fit_cfg, log=log)
    score = model_scorer(learner, index)
    result = {
        "dataset": name,
        "data_file": os.path.abspath(path),
        "protocol": "leave-one-out by time (stable sort), full ranking over all items, seen items excluded",
        "stats": stats,
        "test": evaluate(score, split, index, "test"),
        "valid": evaluate(score, split, index, "valid"),
        "popularity": {"test": evaluate(popularity_scorer(split, index, True), split, index, "test"),
                       "valid": evaluate(popularity_scorer(split, index, False), split, index, "valid")},
        **info,
        "config": {"model": asdict(model_cfg), "trainer": asdict(trainer_cfg), "fit": asdict(fit_cfg)},
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
    }
    if log:
        log(format_table(result))
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


def format_table(result: dict) -> str:
    """The printed summary: model vs popularity, valid and test."""
    rows = [("model", result["valid"], result["test"]),
            ("most popular", result["popularity"]["valid"], result["popularity"]["test"])]
    lines = [f"{result['dataset']}  ({result['stats']['eval_users']} users ranked over "
             f"{result['stats']['items']} items; trained {result['train_seconds']:.0f}s, "
             f"best epoch {result['best_epoch']})",
             f"{'':14}{'valid HR@10':>12}{'NDCG@10':>9}{'test HR@10':>12}{'NDCG@10':>9}"]
    for name, v, t in rows:
        lines.append(f"{name:14}{v['hr@10']:12.4f}{v['ndcg@10']:9.4f}{t['hr@10']:12.4f}{t['ndcg@10']:9.4f}")
    return "\n".join(lines)
