"""How an incremental update's cost grows with the catalogue, ``trainer.loss: full`` against
``sampled``, Ray-free, on one thread: for each catalogue size, a learner knows that many items,
then learns slices of ``trainer.min_new_events`` synthetic events (observe + update, as the
deployed loop does); printed and written: seconds per update, events per second and the ratio
sampled/full, all measured in this run, in CPU seconds of this process (``time.process_time``,
one torch thread, as the stream replay counts update compute: the machine is shared).

The full softmax scores every item at every scored position and steps every row of the item
table; at 1M items one update takes long, so each run stops after ``--budget-s`` seconds of timed
updates (at least one). Also timed at each size, with ``loss: sampled``, once after the timed
updates: the per-update work that spans or once spanned the whole table, in the learner
(rebuilding the negatives' distribution after the counts change; the weight average when
``trainer.ema_decay`` > 0) and in the deployed loop around it (the gate's frozen copy of a
candidate, ``Snapshot.of``; the online metric of a slice, ``evaluate_next``, which ranks every
item for up to 1,024 users, ``learn.rank``).

With ``loss: sampled`` each timed update also runs, and times apart (``loop_seconds_per_update``),
everything the deployed loop (``learn.train``, ``gate.mode: optimistic``) does around it: the
gate's scoring of the slice before it is learned (``GateKeeper.test``: the candidate, the live
version and popularity), the online metric (``evaluate_next``), then after the update the
finiteness check and the frozen copy of a candidate (``Snapshot.of``) and the published weights
(``export_weights``). Each update's snapshot becomes the candidate scored on the next slice; the
live version is the snapshot taken before the timed updates (optimistic mode judges a candidate
over several slices, so a snapshot per update is the most it takes).

    python bench/trainer_scale.py [--profile ml-100k] [--items 10000,100000,1000000] [--budget-s 60]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

import pyarrow as pa
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from increc_ray.config import replace  # noqa: E402
from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.evaluate.synthetic import SyntheticStream  # noqa: E402
from increc_ray.ingest.clean import clean_batch  # noqa: E402
from increc_ray.learn.ema import WeightAverage  # noqa: E402
from increc_ray.learn.gate import Gate, GateKeeper, Snapshot  # noqa: E402
from increc_ray.learn.learner import IncrementalLearner  # noqa: E402
from increc_ray.learn.sampled import Negatives  # noqa: E402
from increc_ray.profiles import load  # noqa: E402

HERE = os.path.dirname(__file__)


def _catalogue(stream: SyntheticStream, n_items: int) -> pa.Table:
    """Every item once, each by a user of its own (a first event is no target: nothing to learn)."""
    n = n_items
    t = pa.array([int(stream.start_time * 1000)] * n, pa.timestamp("ms", tz="UTC"))
    return pa.table({"user_id": pa.array([f"c{i}" for i in range(n)]), "item_id": pa.array([f"i{i}" for i in range(n)]),
                     "timestamp": t, "label": pa.array([1] * n, pa.int8()), "weight": pa.array([1.0] * n, pa.float32())})


def learner_knowing(cfg, n_items: int, users: int) -> tuple[IncrementalLearner, Callable[[], pa.Table]]:
    """(a learner of ``cfg`` knowing ``n_items`` items, nothing replayed yet; a function giving the
    next ``trainer.min_new_events`` clean events of the same synthetic stream)."""
    stream = SyntheticStream(n_users=users, n_items=n_items, new_item_every=0, drift_every=0, seed=0)
    learner = IncrementalLearner(cfg.model, cfg.trainer)
    learner.observe(_catalogue(stream, n_items))
    learner.update()  # the catalogue's users have one item each: no target, nothing is trained
    learner._reservoir.clear()  # nor replayed

    def events() -> pa.Table:
        return clean_batch(pa.Table.from_pylist(stream.next_events(cfg.trainer.min_new_events)), cfg.cleaning,
                           "bench").clean

    return learner, events


def _timed(fn) -> float:
    """CPU seconds of ``fn()`` (one torch thread): the wall clock of a shared machine, whose
    other work may pause or crowd this process, would overstate them."""
    t = time.process_time()
    fn()
    return time.process_time() - t


def _run(cfg, trainer, n_items: int, args) -> tuple[dict, IncrementalLearner, pa.Table]:
    """A learner knowing ``n_items`` items, warmed by ``--warm`` updates, then timed updates; with
    the sampled loss, the deployed loop's work around each update timed too (``_Loop``)."""
    stream = SyntheticStream(n_users=args.users, n_items=n_items, new_item_every=0, drift_every=0, seed=0)
    learner = IncrementalLearner(cfg.model, trainer)
    setup = _timed(lambda: learner.observe(_catalogue(stream, n_items)))
    learner.update()  # the catalogue's users have one item each: no target, nothing is trained
    learner._reservoir.clear()  # nor replayed: every size replays the same stream's users
    step = trainer.min_new_events

    def events() -> pa.Table:
        return clean_batch(pa.Table.from_pylist(stream.next_events(step)), cfg.cleaning, "bench").clean

    for _ in range(args.warm):
        learner.observe(events())
        learner.update()
    loop = _Loop(cfg, learner) if trainer.loss == "sampled" else None
    observe = update = 0.0
    n_events = n_updates = n_targets = n_replay = 0
    while n_updates < args.updates and (n_updates == 0 or observe + update < args.budget_s):
        ev = events()
        if loop:
            loop.before(ev)
        observe += _timed(lambda: learner.observe(ev))
        t = time.process_time()
        stats = learner.update()
        update += time.process_time() - t
        if loop:
            loop.after(n_updates)
        n_events += ev.num_rows
        n_updates += 1
        assert stats is not None, "a slice of new events trained nothing"
        n_targets, n_replay = n_targets + stats.n_targets, n_replay + stats.n_replay
    return {"items": learner.n_items, "capacity": learner.model.capacity, "updates": n_updates,
            "targets_per_update": round(n_targets / n_updates, 1), "replayed_per_update": round(n_replay / n_updates, 1),
            "seconds_per_update": round(update / n_updates, 4),
            "observe_seconds_per_update": round(observe / n_updates, 4),
            "events_per_s": round(n_events / (observe + update), 1), "catalogue_setup_s": round(setup, 2),
            **(loop.report(n_updates, observe + update) if loop else {})}, learner, events()


class _Loop:
    """The deployed loop's work around each update (``learn.train``, ``gate.mode: optimistic``),
    each part in CPU seconds: the gate's scoring of a slice, the online metric, the finiteness
    check, the candidate's snapshot and the published weights."""

    PARTS = ("gate_test", "online_metric", "finite", "gate_snapshot", "export_weights")

    def __init__(self, cfg, learner: IncrementalLearner) -> None:
        # a gate that never decides: every slice is scored by a candidate, the live version and popularity
        self.gate = Gate(replace(cfg.gate, min_events=10**9))
        self.gate.live = self.gate.candidate = Snapshot.of(learner, version=1)
        self.keeper = GateKeeper(learner, self.gate, lambda: 0, lambda w: None)
        self.learner = learner
        self.spent = dict.fromkeys(self.PARTS, 0.0)
        self.scored = 0

    def before(self, ev: pa.Table) -> None:
        """The slice meets the gate and the online metric before the learner observes it."""
        n = self.gate.n_scored
        self.spent["gate_test"] += _timed(lambda: self.keeper.test(ev))
        self.scored += self.gate.n_scored - n
        for v in self.gate._scores.values():
            v.clear()
        self.spent["online_metric"] += _timed(lambda: self.learner.evaluate_next(ev, k=10))

    def after(self, version: int) -> None:
        """After an update: the finiteness check, a candidate frozen, the weights exported."""
        self.spent["finite"] += _timed(self.learner.finite)
        t = time.process_time()
        self.gate.candidate = Snapshot.of(self.learner, version + 2)
        self.spent["gate_snapshot"] += time.process_time() - t
        self.spent["export_weights"] += _timed(lambda: self.learner.export_weights(version + 2, {}))

    def report(self, n_updates: int, learn_s: float) -> dict:
        per = {f"{k}_s": round(v / n_updates, 4) for k, v in self.spent.items()}
        loop_s = learn_s / n_updates + sum(per.values())
        return {"loop_per_update": {**per, "gate_events_scored_per_slice": round(self.scored / n_updates, 1)},
                "loop_seconds_per_update": round(loop_s, 4)}


def _table_passes(learner: IncrementalLearner, trainer, ev: pa.Table) -> dict:
    """Seconds of the per-update passes over the whole table that remain with ``loss: sampled``."""
    out = {"negatives_rebuild_s": _timed(lambda: Negatives(learner.item_counts, learner._holes, trainer.negative_power,
                                                           trainer.negatives, learner.device))}
    ema = WeightAverage(0.95)
    ema.update(learner.model, learner.n_items)
    out["ema_update_s (ema_decay 0.95)"] = _timed(lambda: ema.update(learner.model, learner.n_items))
    out["gate_snapshot_s"] = _timed(lambda: Snapshot.of(learner))
    out["evaluate_next_s"] = _timed(lambda: learner.evaluate_next(ev))
    return {k: round(v, 4) for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="ml-100k")
    ap.add_argument("--items", default="10000,100000,1000000", help="catalogue sizes, comma-separated")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--warm", type=int, default=5, help="updates before timing (users' first events: no targets)")
    ap.add_argument("--updates", type=int, default=10, help="timed updates per run (at most)")
    ap.add_argument("--budget-s", type=float, default=60.0, help="stop timing a run past this many seconds")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "trainer_scale.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load(profile=args.profile)
    runs = []
    for n_items in [int(x) for x in args.items.split(",")]:
        row = {"items": n_items}
        for loss in ("full", "sampled"):
            trainer = replace(cfg.trainer, loss=loss)
            row[loss], learner, ev = _run(cfg, trainer, n_items, args)
            print(n_items, loss, json.dumps(row[loss]), flush=True)
            if loss == "sampled":
                row["sampled_table_passes_per_update"] = _table_passes(learner, trainer, ev)
                print(n_items, "whole-table passes per update", json.dumps(row["sampled_table_passes_per_update"]))
            del learner
        row["speedup_update"] = round(row["full"]["seconds_per_update"] / row["sampled"]["seconds_per_update"], 2)
        row["ratio_events_per_s_sampled_over_full"] = round(row["sampled"]["events_per_s"] / row["full"]["events_per_s"], 2)
        print(f"{n_items:>9,} items: full {row['full']['seconds_per_update']:.3f} s/update "
              f"({row['full']['events_per_s']:.0f} events/s), sampled {row['sampled']['seconds_per_update']:.3f} "
              f"s/update ({row['sampled']['events_per_s']:.0f} events/s): sampled/full events/s "
              f"{row['ratio_events_per_s_sampled_over_full']}x", flush=True)
        runs.append(row)
    t = cfg.trainer
    out = {"bench": "trainer_scale", "profile": args.profile, "slice_events": t.min_new_events,
           "negatives": t.negatives, "negative_power": t.negative_power, "batch_size": t.batch_size,
           "d_model": cfg.model.d_model, "threads": 1, "budget_s": args.budget_s, "runs": runs}
    print(json.dumps(out, indent=1))
    print(f"wrote {write_result(out, os.path.dirname(args.out), os.path.basename(args.out))}")


if __name__ == "__main__":
    main()
