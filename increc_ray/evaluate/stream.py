"""``increc evaluate stream``: load, warm up, replay every strategy, write JSON and PNG plots.

Strategies of one run (names in the JSON): ``static``, ``incremental``, ``full_retrain``,
``last_window``, ``popularity``, plus ``incremental[<variant>]`` for the update rules of the
seed article (online gradient descent with batch size 1, mini-batch SGD, momentum, AdamW,
adaptive learning rate), each a ``TrainerConfig`` of the same incremental loop.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Sequence

import torch

from increc_ray.config import Config, replace
from increc_ray.evaluate.prequential import build_stream, machine, replay, stream_stats, summarise
from increc_ray.evaluate.strategies import (Consolidated, FullRetrain, Incremental, Popularity, Static, fork,
                                          train_from_scratch)

BASELINES = ("static", "incremental", "full_retrain", "last_window", "popularity")


def build_strategies(stream, cfg: Config, log: Callable[[str], None] | None = None,
                     consolidate_every: Sequence[int] = (), only: Sequence[str] | None = None) -> tuple[list, dict]:
    """Train the warm-up model once (a bootstrap on the warm-up events); every strategy starts
    from a copy of it.

    ``incremental`` runs the profile's trainer section; ``full_retrain`` re-runs the bootstrap
    on all events so far every ``evaluation.retrain_every`` windows. The once-per-window
    ``last_window`` averages its weights over the same span of events as ``incremental`` does
    over its steps (its decay per window is the step decay compounded).
    ``incremental+full_pass[N]`` is ``incremental`` plus a deployed full pass every N events,
    for each N of ``consolidate_every`` and the profile's ``bootstrap.consolidate_every_events``.
    ``only``: the names to run (default: all).
    """
    ev, scratch = cfg.evaluation, cfg.bootstrap_trainer
    t0 = time.process_time()
    warm = train_from_scratch(stream, stream.n_warmup, cfg.model, scratch, cfg.bootstrap.epochs)
    warm_seconds = time.process_time() - t0
    if log:
        log(f"warm-up: {stream.n_warmup} events, {cfg.bootstrap.epochs} epochs, {warm_seconds:.0f} CPU s")
    steps_per_window = stream.events_per_window / cfg.trainer.min_new_events
    strategies = [
        Static("static", stream, fork(warm)),
        Incremental("incremental", stream, fork(warm, cfg.trainer)),
        FullRetrain("full_retrain", stream, fork(warm), ev.retrain_every, cfg.bootstrap.epochs, scratch),
        Incremental("last_window", stream, fork(warm, replace(
            cfg.trainer, replay_ratio=0.0, steps_per_update=ev.last_window_steps, lr_schedule="constant",
            batch_size=ev.last_window_batch, rare_item_lr_mult=1.0,  # plain steps: 5 passes x 20 overshoot
            ema_decay=cfg.trainer.ema_decay ** steps_per_window)), streaming=False),
        Popularity("popularity", stream, ev.popularity_half_life_windows),
    ]
    for name, over in ev.variants.items():
        strategies.append(Incremental(f"incremental[{name}]", stream, fork(warm, replace(cfg.trainer, **over))))
    every = sorted(set(consolidate_every) | ({cfg.bootstrap.consolidate_every_events} - {0}))
    for n in every:
        strategies.append(Consolidated(f"incremental+full_pass[{n}]", stream, fork(warm, cfg.trainer), cfg, n))
    if only is not None:
        unknown = set(only) - {s.name for s in strategies}
        assert not unknown, f"unknown strategies {sorted(unknown)}; known: {[s.name for s in strategies]}"
        strategies = [s for s in strategies if s.name in only]
    return strategies, {"warmup_seconds": round(warm_seconds, 3)}


def run_stream(path: str, cfg: Config, profile: str | None = None, out_dir: str | None = "bench/results",
               name: str | None = None, log: Callable[[str], None] | None = print,
               progress_bar: bool = True, consolidate_every: Sequence[int] = (),
               only: Sequence[str] | None = None) -> dict:
    """The whole evaluation of one event file under ``cfg`` (the resolved profile, named
    ``profile`` in the result); writes ``<out_dir>/stream_<name>.json`` and PNGs."""
    from increc_ray.evaluate.offline import dataset_name, load_interactions, write_result

    torch.set_num_threads(1)  # update seconds are single-core CPU seconds; the machine is shared
    name = name or dataset_name(path)
    ev, k = cfg.evaluation, cfg.evaluation.k
    wall0 = time.perf_counter()
    stream = build_stream(load_interactions(path, cfg.cleaning), ev)
    stats = stream_stats(stream)
    if log:
        log(f"{name} (profile {profile}): {stats}")
    strategies, info = build_strategies(stream, cfg, log, consolidate_every, only)
    bar = _progress(len(stream.items) - stream.n_warmup, len(strategies), name) if progress_bar else None
    results = replay(stream, strategies, ev, cfg.trainer.min_new_events,
                     progress=(lambda n, s: bar.update(n / len(strategies))) if bar else None)
    if bar:
        bar.close()
    per = summarise(stream, results, k)
    for s in strategies:
        per[s.name]["n_updates"] = getattr(s, "n_updates", None)
        if hasattr(s, "full_passes"):
            per[s.name]["full_passes"] = s.full_passes
        if hasattr(s, "learner"):
            per[s.name]["trainer"] = s.learner.trainer_cfg.model_dump()
    result = {
        "dataset": name,
        "data_file": os.path.abspath(path),
        "profile": profile,
        "protocol": ("prequential test-then-train; warm-up on the first "
                     f"{ev.warmup_fraction:.0%} of the time span, the rest in {len(stream.windows)} "
                     f"windows, learned in steps of trainer.min_new_events = {cfg.trainer.min_new_events} "
                     "events; full ranking over every item seen so far, the user's earlier items excluded; "
                     "items new to the stream are misses; users' first events are not evaluated"),
        "stats": stats,
        "strategies": per,
        "goals": goals(per, k),
        **info,
        "wall_seconds": round(time.perf_counter() - wall0, 1),
        "config": cfg.to_dict(),
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
    compute, and >= 1.2x static's NDCG (empty when a run leaves one of them out)."""
    if not {"incremental", "full_retrain", "static"} <= per.keys():
        return {}
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
    k = result["config"]["evaluation"]["k"]
    lines = [f"{result['dataset']}: {result['stats']['replay_events']} replayed events in "
             f"{result['stats']['windows']} windows",
             f"{'strategy':28}{f'HR@{k}':>8}{f'NDCG@{k}':>9}{'update CPU s':>14}{'evaluated':>10}"]
    for name, r in result["strategies"].items():
        lines.append(f"{name:28}{r[f'hr@{k}']:8.4f}{r[f'ndcg@{k}']:9.4f}{r['update_seconds']:14.1f}{r['n']:10d}")
    inc, static = result["strategies"].get("incremental", {}), result["strategies"].get("static", {})
    if "segments" in inc and "segments" in static:
        lines.append(f"{'segment (NDCG@' + str(k) + ')':28}{'n':>8}{'static':>9}{'incremental':>14}")
        for seg, r in inc["segments"].items():
            st = static["segments"][seg][f"ndcg@{k}"]
            if r["n"]:
                lines.append(f"{seg:28}{r['n']:8d}{st:9.4f}{r[f'ndcg@{k}']:14.4f}")
    g = result["goals"]
    if not g:
        return "\n".join(lines)
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

