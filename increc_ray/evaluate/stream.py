"""``increc evaluate stream``: load, warm up, replay every strategy, write JSON and PNG plots.

Strategies of one run (names in the JSON): ``static``, ``incremental``, ``full_retrain``,
``last_window``, ``popularity``, plus ``incremental[<variant>]`` for the update rules of the
seed article (online gradient descent with batch size 1, mini-batch SGD, momentum, AdamW,
adaptive learning rate), each a ``TrainerConfig`` of the same incremental loop.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping

import torch

from increc_ray.config import ModelConfig, TrainerConfig
from increc_ray.evaluate.prequential import (StreamConfig, build_stream, machine, replay, stream_stats,
                                    summarise)
from increc_ray.evaluate.strategies import (FullRetrain, Incremental, Popularity, Static, fork,
                                          train_from_scratch)

BASELINES = ("static", "incremental", "full_retrain", "last_window", "popularity")

# The seed article's update rules, as overrides of the incremental TrainerConfig.
ARTICLE_VARIANTS: dict[str, dict] = {
    "ogd": {"optimizer": "sgd", "batch_size": 1, "lr": 0.05, "lr_schedule": "constant"},
    "minibatch_sgd": {"optimizer": "sgd", "lr": 0.5, "lr_schedule": "constant"},
    "momentum": {"optimizer": "momentum", "lr": 0.05, "lr_schedule": "constant"},
    "adamw": {"optimizer": "adamw", "lr_schedule": "constant"},
    "adaptive_lr": {"optimizer": "adamw", "lr_schedule": "adaptive"},
}


DEFAULT_MODEL = ModelConfig(max_len=50, dropout=0.2)  # every strategy's model unless a preset overrides it


@dataclass(frozen=True)
class StrategyConfig:
    """Models and schedules of the compared strategies."""

    model: ModelConfig = DEFAULT_MODEL
    # from-scratch training (warm-up and full retraining): offline training's trainer settings
    # (few users, so small batches: ~20 optimizer steps per epoch; more epochs overfit the past)
    # every user's whole history, in max_len slices ("all data so far")
    scratch: TrainerConfig = field(default_factory=lambda: TrainerConfig(batch_size=32, lr=2e-3,
                                                                         lr_schedule="constant",
                                                                         history_len=1_000_000))
    warmup_epochs: int = 10
    retrain_every: int = 4  # windows between full retrains
    retrain_epochs: int = 10
    # the product's update path (what the live trainer runs), with its TrainerConfig defaults unless a preset overrides
    incremental: TrainerConfig = field(default_factory=TrainerConfig)
    last_window_steps: int = 5  # passes over the newest window, no replay
    last_window_batch: int = 16  # its batch (smaller than a preset's incremental batch: it fits harder)
    popularity_half_life: float = 1.0  # windows
    variants: Mapping[str, Mapping] = field(default_factory=lambda: dict(ARTICLE_VARIANTS))

    def __post_init__(self) -> None:
        assert self.warmup_epochs >= 1 and self.retrain_epochs >= 1, "epochs must be >= 1"
        assert self.retrain_every >= 1, f"retrain_every must be >= 1, got {self.retrain_every}"
        assert self.last_window_steps >= 1, f"last_window_steps must be >= 1, got {self.last_window_steps}"
        assert self.last_window_batch >= 1, f"last_window_batch must be >= 1, got {self.last_window_batch}"
        for name, over in self.variants.items():
            dataclasses.replace(self.incremental, **over)  # fails early on a bad override


# Per-dataset settings, chosen on these replays (README "Incremental vs retraining"); other files
# get the defaults. "model" overrides DEFAULT_MODEL, "incremental" the product's TrainerConfig
# defaults: a stationary catalogue wants small steps, a drifting one an item table that moves
# faster than the encoder.
PRESETS: dict[str, dict] = {
    # a wider model with a shorter context gains more from the stream here (incremental 0.0914 at
    # d_model 64, 0.0940 at 128, 0.0966 at 128 with max_len 25; README "Incremental vs retraining");
    # at its small lr a new item's row needs longer steps to be recommended at all
    "ml-100k": {"stream": {}, "strategies": {"model": {"d_model": 128, "max_len": 25},
                                             "incremental": {"lr": 2.5e-4, "batch_size": 32, "replay_ratio": 0.1,
                                                             "rare_item_lr_mult": 20.0, "rare_item_count": 3.0}}},
    # the warm-up years predict 2007+ poorly: prequential NDCG peaks after ~5 epochs
    "ml-latest-small": {"stream": {}, "strategies": {"warmup_epochs": 5, "retrain_epochs": 5,
                                                     "incremental": {"item_lr_mult": 20.0, "ema_decay": 0.95,
                                                                     "batch_size": 32, "replay_ratio": 0.1}}},
}


def stream_preset(name: str, incremental: Mapping | None = None, model: Mapping | None = None,
                  **stream_overrides) -> tuple[StreamConfig, StrategyConfig]:
    """The (stream, strategy) configs for dataset ``name``; ``None`` overrides are ignored.

    ``incremental`` overrides the incremental strategy's ``TrainerConfig``, and ``model`` every
    strategy's ``ModelConfig``, on top of the preset (keys and types checked as in
    ``serve_config.yaml``'s ``trainer`` and ``model`` sections).
    """
    from increc_ray.config import _build

    p = PRESETS.get(name, {"stream": {}, "strategies": {}})
    over = {k: v for k, v in stream_overrides.items() if v is not None}
    strat = dict(p["strategies"])
    inc = {**strat.get("incremental", {}), **(incremental or {})}  # over the product's defaults
    if inc:
        strat["incremental"] = _build(TrainerConfig, inc, "incremental.")
    shape = {**strat.get("model", {}), **(model or {})}  # over the default model shape
    if shape:
        strat["model"] = _build(ModelConfig, {**asdict(DEFAULT_MODEL), **shape}, "model.")
    for key in ("retrain_every", "variants"):
        if key in over:
            strat[key] = over.pop(key)
    return StreamConfig(**{**p["stream"], **over}), StrategyConfig(**strat)


def build_strategies(stream, cfg: StrategyConfig, log: Callable[[str], None] | None = None,
                     update_every: int = 0) -> tuple[list, dict]:
    """Train the warm-up model once; every strategy starts from a copy of it.

    ``update_every`` is the streaming strategies' step (``StreamConfig.update_every``): the
    once-per-window ``last_window`` averages its weights over the same span of events as
    ``incremental`` does over its steps (its decay per window is the step decay compounded).
    """
    t0 = time.process_time()
    warm = train_from_scratch(stream, stream.n_warmup, cfg.model, cfg.scratch, cfg.warmup_epochs)
    warm_seconds = time.process_time() - t0
    if log:
        log(f"warm-up: {stream.n_warmup} events, {cfg.warmup_epochs} epochs, {warm_seconds:.0f} CPU s")
    steps_per_window = stream.events_per_window / update_every if update_every else 1.0
    strategies = [
        Static("static", stream, fork(warm)),
        Incremental("incremental", stream, fork(warm, cfg.incremental)),
        FullRetrain("full_retrain", stream, fork(warm), cfg.retrain_every, cfg.retrain_epochs, cfg.scratch),
        Incremental("last_window", stream, fork(warm, dataclasses.replace(
            cfg.incremental, replay_ratio=0.0, steps_per_update=cfg.last_window_steps, lr_schedule="constant",
            batch_size=cfg.last_window_batch, rare_item_lr_mult=1.0,  # plain steps: 5 passes x 20 overshoot
            ema_decay=cfg.incremental.ema_decay ** steps_per_window)), streaming=False),
        Popularity("popularity", stream, cfg.popularity_half_life),
    ]
    for name, over in cfg.variants.items():
        strategies.append(Incremental(f"incremental[{name}]", stream,
                                      fork(warm, dataclasses.replace(cfg.incremental, **over))))
    return strategies, {"warmup_seconds": round(warm_seconds, 3)}


def run_stream(path: str, stream_cfg: StreamConfig | None = None, strat_cfg: StrategyConfig | None = None,
               out_dir: str | None = "bench/results", name: str | None = None,
               log: Callable[[str], None] | None = print, progress_bar: bool = True) -> dict:
    """The whole evaluation of one event file; writes ``<out_dir>/stream_<name>.json`` and PNGs."""
    from increc_ray.evaluate.offline import dataset_name, load_interactions, write_result

    stream_cfg, strat_cfg = stream_cfg or StreamConfig(), strat_cfg or StrategyConfig()
    torch.set_num_threads(1)  # update seconds are single-core CPU seconds; the machine is shared
    name = name or dataset_name(path)
    wall0 = time.perf_counter()
    stream = build_stream(load_interactions(path), stream_cfg)
    stats = stream_stats(stream)
    if log:
        log(f"{name}: {stats}")
    strategies, info = build_strategies(stream, strat_cfg, log, stream_cfg.update_every)
    bar = _progress(len(stream.items) - stream.n_warmup, len(strategies), name) if progress_bar else None
    results = replay(stream, strategies, stream_cfg,
                     progress=(lambda n, s: bar.update(n / len(strategies))) if bar else None)
    if bar:
        bar.close()
    per = summarise(stream, results, stream_cfg.k)
    for s in strategies:
        per[s.name]["n_updates"] = getattr(s, "n_updates", None)
        if hasattr(s, "learner"):
            per[s.name]["trainer"] = asdict(s.learner.trainer_cfg)
    result = {
        "dataset": name,
        "data_file": os.path.abspath(path),
        "protocol": ("prequential test-then-train; warm-up on the first "
                     f"{stream_cfg.warmup_fraction:.0%} of the time span, the rest in {len(stream.windows)} "
                     "windows; full ranking over every item seen so far, the user's earlier items excluded; "
                     "items new to the stream are misses; users' first events are not evaluated"),
        "stats": stats,
        "strategies": per,
        "goals": goals(per, stream_cfg.k),
        **info,
        "wall_seconds": round(time.perf_counter() - wall0, 1),
        "config": {"stream": asdict(stream_cfg), "strategies": _plain(asdict(strat_cfg))},
        "machine": machine(),
    }
    if log:
        log(format_table(result))
    if out_dir:
        write_result(result, out_dir, f"stream_{name}.json")
        from increc_ray.evaluate.plot import plot_result

        plot_result(result, out_dir)
    return result


def goals(per: dict, k: int) -> dict:
    """The issue's targets for ``incremental``: NDCG >= full retrain's at <= 1/20 of its update
    compute, and >= 1.2x static's NDCG."""
    inc, full, static = per["incremental"], per["full_retrain"], per["static"]
    nd = f"ndcg@{k}"
    r_full = inc[nd] / full[nd] if full[nd] else float("inf")
    r_static = inc[nd] / static[nd] if static[nd] else float("inf")
    r_compute = inc["update_seconds"] / full["update_seconds"] if full["update_seconds"] else float("inf")
    return {"ndcg_incremental_over_full_retrain": r_full, "ndcg_incremental_over_static": r_static,
            "compute_incremental_over_full_retrain": r_compute,
            "met": {"ndcg_ge_full_retrain": r_full >= 1.0, "compute_le_1/20": r_compute <= 0.05,
                    "ndcg_ge_1.2x_static": r_static >= 1.2}}


def format_table(result: dict) -> str:
    k = result["config"]["stream"]["k"]
    lines = [f"{result['dataset']}: {result['stats']['replay_events']} replayed events in "
             f"{result['stats']['windows']} windows",
             f"{'strategy':28}{f'HR@{k}':>8}{f'NDCG@{k}':>9}{'update CPU s':>14}{'evaluated':>10}"]
    for name, r in result["strategies"].items():
        lines.append(f"{name:28}{r[f'hr@{k}']:8.4f}{r[f'ndcg@{k}']:9.4f}{r['update_seconds']:14.1f}{r['n']:10d}")
    inc, static = result["strategies"]["incremental"], result["strategies"]["static"]
    if "segments" in inc and "segments" in static:
        lines.append(f"{'segment (NDCG@' + str(k) + ')':28}{'n':>8}{'static':>9}{'incremental':>14}")
        for seg, r in inc["segments"].items():
            st = static["segments"][seg][f"ndcg@{k}"]
            if r["n"]:
                lines.append(f"{seg:28}{r['n']:8d}{st:9.4f}{r[f'ndcg@{k}']:14.4f}")
    g = result["goals"]
    lines.append(f"incremental / full_retrain NDCG {g['ndcg_incremental_over_full_retrain']:.3f}, "
                 f"/ static NDCG {g['ndcg_incremental_over_static']:.3f}, "
                 f"compute / full_retrain {g['compute_incremental_over_full_retrain']:.4f}")
    return "\n".join(lines)


def _progress(total: int, n_strategies: int, desc: str):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a bench extra; without it the replay runs without a bar
        return None
    return tqdm(total=total, desc=f"replay {desc} ({n_strategies} strategies)", unit="ev", mininterval=2.0,
                bar_format="{l_bar}{bar}| {n:.0f}/{total} events [{elapsed}<{remaining}]")


def _plain(obj):
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    return obj
