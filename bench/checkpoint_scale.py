"""What a trainer checkpoint costs as the catalogue grows, and what share of the trainer's time it
takes (Ray-free, one torch thread).

For each catalogue size: a learner of the profile (default ``large-catalogue``: the sampled
softmax, the loss for a large catalogue) that knows that many items and has made a few updates
(``bench/trainer_scale.py``'s setup, so its AdamW moments exist), then, wall clock, median of
``--repeat``:

- ``checkpoint_s``: what the deployed trainer writes (``learner.state_dict()`` and
  ``serialize.save_tree`` into a temporary folder; Ray Train's copy of that folder into its
  storage comes on top and is not timed here);
- ``checkpoint_before_s``, the baseline in the same run: the same with every tensor copied first,
  as ``serialize`` did before (a second copy of the item table and both AdamW moments);
- ``update_s``: one deployed update's observe + update (CPU seconds), and from it the share of
  the trainer's time checkpoints took at ``trainer.checkpoint_every`` updates, against the bound
  ``trainer.checkpoint_max_share`` now sets.

Each write is timed ``--repeat`` times after one untimed write (``scoring_scale.timed``): the median.

    python bench/checkpoint_scale.py [--items 10000,100000,1000000] [--out bench/results/checkpoint_scale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.learn import serialize  # noqa: E402
from increc_ray.profiles import load  # noqa: E402
from scoring_scale import timed  # noqa: E402
from trainer_scale import _run  # noqa: E402

HERE = os.path.dirname(__file__)


def _copied(obj):
    """``obj`` with every tensor copied: what ``serialize._flatten`` did to each before."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _copied(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_copied(v) for v in obj]
    return obj


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="large-catalogue")
    ap.add_argument("--items", default="10000,100000,1000000")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=30.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "checkpoint_scale.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load(profile=args.profile)
    every, share = cfg.trainer.checkpoint_every, cfg.trainer.checkpoint_max_share
    rows = []
    for n_items in [int(x) for x in args.items.split(",")]:
        timing, learner, _ = _run(cfg, cfg.trainer, n_items, args)
        update_s = timing["seconds_per_update"] + timing["observe_seconds_per_update"]
        with tempfile.TemporaryDirectory() as tmp:
            def now(learner=learner):
                serialize.save_tree({"learner": learner.state_dict()}, tmp, "ckpt")

            def before(learner=learner):
                serialize.save_tree(_copied({"learner": learner.state_dict()}), tmp, "ckpt")

            ckpt_s, before_s = timed(now, args.repeat), timed(before, args.repeat)
            size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
        row = {"items": n_items, "checkpoint_mib": round(size / 2**20, 1), "checkpoint_s": round(ckpt_s, 3),
               "checkpoint_before_s": round(before_s, 3), "speedup": round(before_s / ckpt_s, 2),
               "update_s": round(update_s, 4),
               # every `checkpoint_every` updates, as before trainer.checkpoint_max_share
               f"share_every_{every}_updates": round(ckpt_s / (ckpt_s + every * update_s), 3),
               f"share_every_{every}_updates_before": round(before_s / (before_s + every * update_s), 3),
               # with the bound: the rest between checkpoints is at least ckpt_s x (1 / share - 1)
               "share_with_bound": round(ckpt_s / (ckpt_s + max(every * update_s, ckpt_s * (1 / share - 1))), 3),
               "updates_between_checkpoints_with_bound": max(every, int(ckpt_s * (1 / share - 1) / update_s + 0.999))}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del learner
    out = {"bench": "checkpoint_scale", "profile": args.profile, "threads": 1, "checkpoint_every": every,
           "checkpoint_max_share": share, "d_model": cfg.model.d_model, "sizes": rows,
           "baseline": "the same checkpoint with every tensor copied first (serialize before), same run"}
    print(f"wrote {write_result(out, os.path.dirname(args.out), os.path.basename(args.out))}")


if __name__ == "__main__":
    main()
