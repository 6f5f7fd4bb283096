"""What a trainer checkpoint costs as the catalogue grows, and what share of the trainer's loop it
takes (Ray-free, one torch thread).

For each catalogue size: a learner of the profile (default ``large-catalogue``: the sampled
softmax, the loss for a large catalogue) that knows that many items
(``trainer_scale.learner_knowing``) and has made ``--warm`` updates, so its AdamW moments exist;
then, wall clock, median of ``--repeat`` after one untimed call:

- ``checkpoint_s``, the baseline: the whole checkpoint, ``learner.state_dict()`` then
  ``serialize.save_tree`` into a temporary folder, which the loop waited for before
  ``resume.CheckpointWriter`` (Ray Train's copy of that folder into its storage came on top and
  is not timed here; the writer reports a local checkpoint where it lies);
- ``loop_s``, what the loop pays now: the snapshot, ``learner.state_dict(reuse=...)`` copying
  into the last snapshot's tensors; ``write_s``: the writer thread's part, the write;
- ``update_s``: one deployed update's observe + update alone, and ``update_while_writing_s``
  while a write runs in a thread (wall clock both, in the same run: how much the thread slows
  the loop on these cores);
- the share of the loop's time checkpoints take at ``trainer.checkpoint_every`` updates with
  the bound ``trainer.checkpoint_max_share`` sets (which counts the whole checkpoint, write
  included), before and now.

    python bench/checkpoint_scale.py [--items 10000,100000,1000000] [--out bench/results/checkpoint_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.learn import serialize  # noqa: E402
from increc_ray.profiles import load  # noqa: E402
from scoring_scale import timed  # noqa: E402
from trainer_scale import learner_knowing  # noqa: E402

HERE = os.path.dirname(__file__)


def _updates_while(busy, learner, events, n_max: int = 50) -> tuple[float, int]:
    """Mean wall seconds of one observe + update while ``busy()``, and how many ran."""
    spent, n = 0.0, 0
    while busy() and n < n_max:
        ev = events()
        t = time.perf_counter()
        learner.observe(ev)
        learner.update()
        spent, n = spent + time.perf_counter() - t, n + 1
    return spent / max(n, 1), n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="large-catalogue")
    ap.add_argument("--items", default="10000,100000,1000000")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--updates", type=int, default=3, help="updates timed alone")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "checkpoint_scale.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load(profile=args.profile)
    every, share = cfg.trainer.checkpoint_every, cfg.trainer.checkpoint_max_share
    rows = []
    for n_items in [int(x) for x in args.items.split(",")]:
        learner, events = learner_knowing(cfg, n_items, args.users)
        for _ in range(args.warm):  # the AdamW moments exist
            learner.observe(events())
            learner.update()
        with tempfile.TemporaryDirectory() as tmp:
            def whole(learner=learner):
                serialize.save_tree({"learner": learner.state_dict()}, tmp, "ckpt")

            kept = {"state": learner.state_dict()}

            def snapshot(learner=learner):
                kept["state"] = learner.state_dict(reuse=kept["state"])

            def write():
                serialize.save_tree({"learner": kept["state"]}, tmp, "ckpt")

            ckpt_s, loop_s, write_s = timed(whole, args.repeat), timed(snapshot, args.repeat), timed(write, args.repeat)
            size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
            alone, _ = _updates_while(lambda: True, learner, events, args.updates)
            writer = threading.Thread(target=write)
            writer.start()
            during, n_during = _updates_while(writer.is_alive, learner, events)
            writer.join()
        between = max(every, int(ckpt_s * (1 / share - 1) / alone + 0.999))  # the bound counts the whole checkpoint
        row = {"items": n_items, "checkpoint_mib": round(size / 2**20, 1), "checkpoint_s": round(ckpt_s, 3),
               "loop_s": round(loop_s, 3), "write_s": round(write_s, 3), "loop_speedup": round(ckpt_s / loop_s, 1),
               "update_s": round(alone, 4), "update_while_writing_s": round(during, 4),
               "updates_while_writing": n_during, "update_slowdown_while_writing": round(during / alone, 2),
               "updates_between_checkpoints_with_bound": between,
               "loop_share_before": round(ckpt_s / (ckpt_s + between * alone), 3),
               "loop_share_now": round(loop_s / (loop_s + between * alone), 3)}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del learner, kept
    out = {"bench": "checkpoint_scale", "profile": args.profile, "threads": 1, "checkpoint_every": every,
           "checkpoint_max_share": share, "d_model": cfg.model.d_model, "sizes": rows,
           "baseline": "checkpoint_s: the whole checkpoint on the loop, as before CheckpointWriter (same run)"}
    print(f"wrote {write_result(out, os.path.dirname(args.out), os.path.basename(args.out))}")


if __name__ == "__main__":
    main()
