"""How many events per second the trainer's loop learns, Ray-free, on one thread (issue 13: model
freshness is bounded by it): the deployed loop's steps for each slice of ``trainer.min_new_events``
synthetic events (the gate's test, the online metric, observe, update, after_update), timed apart.
The baseline, run first in the same process on the same events: the learner with the old forward
pass (``transformers``' GPT-2 at every position, ``SeqRecModel.forward``) in place of
``SeqRecModel.hidden_at`` (the last layer only at the scored positions, ``learn/gpt2.py``).

    python bench/trainer_rate.py [--profile ml-100k] [--items 10000] [--out bench/results/trainer_rate.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import pyarrow as pa
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.evaluate.synthetic import SyntheticStream  # noqa: E402
from increc_ray.ingest.clean import clean_batch  # noqa: E402
from increc_ray.learn.gate import Gate, GateKeeper, Snapshot  # noqa: E402
from increc_ray.learn.learner import IncrementalLearner  # noqa: E402
from increc_ray.learn.model import SeqRecModel  # noqa: E402
from increc_ray.profiles import load  # noqa: E402

HERE = os.path.dirname(__file__)


def _full_forward(model, seqs, select=None):
    """The baseline: every layer at every position through ``transformers``, then the selection."""
    hidden = model(seqs)  # (B, T, C)
    return hidden[:, -1] if select is None else hidden[select]


def _run(cfg, args) -> dict:
    """Warm a learner on synthetic events, then time the deployed loop's steps per slice."""
    stream = SyntheticStream(n_users=args.users, n_items=args.items, new_item_every=0, drift_every=0, seed=0)

    def events(n: int) -> pa.Table:
        return clean_batch(pa.Table.from_pylist(stream.next_events(n)), cfg.cleaning, "bench").clean

    learner = IncrementalLearner(cfg.model, cfg.trainer)
    learner.observe(events(args.warm_events))
    for _ in range(30):
        learner.update()
    gate = Gate(cfg.gate)
    gate.live = Snapshot.of(learner)
    n = [0]
    keeper = GateKeeper(learner, gate, lambda: n.__setitem__(0, n[0] + 1) or n[0], lambda w: None)
    step = cfg.trainer.min_new_events
    spent = {"gate_test": 0.0, "evaluate_next": 0.0, "observe": 0.0, "update": 0.0, "after_update": 0.0}
    total = 0
    started = time.perf_counter()
    for _ in range(args.slices):
        ev = events(step)
        total += ev.num_rows
        for name, fn in (("gate_test", lambda: keeper.test(ev)), ("evaluate_next", lambda: learner.evaluate_next(ev)),
                         ("observe", lambda: learner.observe(ev)), ("update", learner.update),
                         ("after_update", keeper.after_update)):
            t = time.perf_counter()
            fn()
            spent[name] += time.perf_counter() - t
    wall = time.perf_counter() - started  # includes making the synthetic events
    learn_s = sum(spent.values())
    return {"items": learner.n_items, "events_per_s": round(total / learn_s, 1),
            "events_per_s_with_event_making": round(total / wall, 1),
            "seconds_per_slice": {k: round(v / args.slices, 4) for k, v in spent.items()},
            "share": {k: round(v / learn_s, 3) for k, v in spent.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="ml-100k")
    ap.add_argument("--items", type=int, default=10_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--warm-events", type=int, default=40_000)
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "trainer_rate.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load(profile=args.profile)
    runs = {}
    fast = SeqRecModel.hidden_at
    for name, hidden_at in (("transformers_forward", _full_forward), ("hidden_at", fast)):
        SeqRecModel.hidden_at = hidden_at
        try:
            runs[name] = _run(cfg, args)
        finally:
            SeqRecModel.hidden_at = fast
        print(name, json.dumps(runs[name]))
    out = {"bench": "trainer_rate", "profile": args.profile, "slice_events": cfg.trainer.min_new_events,
           "slices": args.slices, "threads": 1, **runs["hidden_at"], "baseline": runs["transformers_forward"],
           "speedup": round(runs["hidden_at"]["events_per_s"] / runs["transformers_forward"]["events_per_s"], 2)}
    print(json.dumps(out, indent=1))
    print(f"wrote {write_result(out, os.path.dirname(args.out), os.path.basename(args.out))}")


if __name__ == "__main__":
    main()
