"""What a new overlay base costs a replica's int8 first pass (``serving.index: int8``), whole
against built from the last base (``serve.quantized.Int8Rows``'s ``previous``), Ray-free, one thread.

A learner of ``--profile`` (default ``large-catalogue``, the profile that deploys the int8 pass)
knows ``--items`` items, then learns slices of the profile's ``trainer.min_new_events`` synthetic
events and publishes a version after each (``export_weights``, an overlay: ``learn.published``).
The trainer rebases once ``learn.frozen.REBASE_SHARE`` of the table has moved since the last base.
At each new base, as the column-major view of its published copy a replica gets, this bench
quantizes it both ways, order alternated, in CPU seconds of this process:

* **whole**: every row (what a replica did per base before);
* **from the last**: the rows equal to the last base's copied from its quantized rows, the others
  quantized (``Int8Index.rows_of``, what a replica does now); checked equal to the whole build.

Printed, written to ``--out`` (``bench/results/int8_follow.json``), with the ratio whole / from
the last. The deployed effect (the replicas' share of 2 cores, model freshness at 1M items) is
``bench/serve_load.py --items 1000000``'s.

    python bench/int8_follow.py [--items 1000000] [--bases 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.learn import published  # noqa: E402
from increc_ray.profiles import load  # noqa: E402
from increc_ray.serve.quantized import Int8Rows  # noqa: E402

from trainer_scale import learner_knowing  # noqa: E402

HERE = os.path.dirname(__file__)


def _cpu(fn):
    t = time.process_time()
    out = fn()
    return out, time.process_time() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="large-catalogue")
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--bases", type=int, default=3, help="new bases after the first to measure")
    p.add_argument("--max-versions", type=int, default=200)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--out", default=os.path.join(HERE, "results", "int8_follow.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load(args.profile)
    assert cfg.trainer.loss == "sampled", "only the sampled softmax publishes overlays"
    learner, events = learner_knowing(cfg, args.items, args.users)
    last: tuple[str, torch.Tensor, Int8Rows] | None = None  # (base id, its table, its quantized rows)
    rows, since = [], 0
    for v in range(1, args.max_versions + 1):
        learner.observe(events())
        learner.update()
        w = learner.export_weights(v)
        items = w[published.ITEM_ROWS]
        since += 1
        if last is not None and items["base_id"] == last[0]:
            continue
        n = len(published.vocab_list(w)) + 1  # pad + items: what a scorer quantizes
        table = published.item_table(w).base[:n]
        if last is None:
            whole, _ = _cpu(lambda: Int8Rows(table))
            last, since = (items["base_id"], table, whole), 0
            continue
        ways = {}
        for way in (("whole", "from_last") if len(rows) % 2 == 0 else ("from_last", "whole")):
            ways[way] = _cpu(lambda: Int8Rows(table, (last[2], last[1]) if way == "from_last" else None))
        (full, full_s), (made, made_s) = ways["whole"], ways["from_last"]
        assert torch.equal(made.q, full.q), "the build from the last base differs from the whole one"
        rows.append({"version": v, "versions_since_last_base": since, "rows": n, "quantized_rows": made.quantized,
                     "whole_s": round(full_s, 3), "from_last_s": round(made_s, 3),
                     "ratio": round(full_s / made_s, 2) if made_s else None})
        print(f"version {v}: new base after {since} versions, {n:,} rows, {made.quantized:,} quantized "
              f"({made.quantized / n:.1%}); whole {full_s:.3f} s, from the last {made_s:.3f} s "
              f"({rows[-1]['ratio']}x)", flush=True)
        last, since = (items["base_id"], table, made), 0
        if len(rows) >= args.bases:
            break
        del w, items
    assert rows, f"no new base in {args.max_versions} versions"
    summary = {k: round(statistics.median(r[k] for r in rows), 3) for k in ("whole_s", "from_last_s")}
    summary["ratio"] = round(summary["whole_s"] / summary["from_last_s"], 2)
    summary["quantized_share"] = round(float(np.median([r["quantized_rows"] / r["rows"] for r in rows])), 3)
    result = {"bench": "int8_follow", "profile": args.profile, "items": args.items, "threads": 1,
              "negatives": cfg.trainer.negatives, "slice_events": cfg.trainer.min_new_events,
              "median": summary, "bases": rows}
    write_result(result, os.path.dirname(os.path.abspath(args.out)), os.path.basename(args.out))
    print(f"median per new base: whole {summary['whole_s']} s, from the last {summary['from_last_s']} s "
          f"({summary['ratio']}x), {summary['quantized_share']:.1%} of the rows quantized")


if __name__ == "__main__":
    main()
