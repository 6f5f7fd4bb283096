"""The HNSW top-k (``serving.index: hnsw``, increc_ray/serve/index.py) following a trainer's
versions, against the exact scan measured in the same run (Ray-free, one thread).

For each catalogue size: a learner of the profile (default large-catalogue: the sampled softmax)
knows that many items and learns slices of synthetic events; every update is published
(``export_weights``) and adopted by a replica-side ``ItemIndex`` as ``Scorer.from_weights`` does in
a replica. Measured:

- the graph's first build over the whole table, and each refresh (copy + re-add the fresh rows);
- per version: the rows that are fresh (changed since the graph's base), what following the
  version costs the replica (compare with the base, gather the fresh rows), and recall@10 of the
  approximate answer against exact top-k of the same version, for users of the stream with their
  seen items excluded (as ``/recommend`` answers);
- ms per request, exact against approximate, at batch 1 and per request at batch 16.

Baseline in the same run: the exact scan (``Scorer`` without an index) of the same versions.
Writes bench/results/ann_follow.json.

    .venv/bin/python bench/ann_follow.py [--items 100000,1000000] [--versions 30]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import pyarrow as pa
import torch

HERE = os.path.dirname(__file__)
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

from increc_ray.config import replace  # noqa: E402
from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.evaluate.synthetic import SyntheticStream  # noqa: E402
from increc_ray.ingest.clean import clean_batch  # noqa: E402
from increc_ray.learn.learner import IncrementalLearner  # noqa: E402
from increc_ray.profiles import load  # noqa: E402
from increc_ray.serve.index import IndexSettings, ItemIndex  # noqa: E402
from increc_ray.serve.scorer import Scorer  # noqa: E402
from scoring_scale import timed  # noqa: E402
from trainer_scale import _catalogue  # noqa: E402

K = 10


def _median_ms(fn, repeat: int) -> float:
    return timed(fn, repeat) * 1e3


def _recall(got: list, want: list) -> float:
    return float(np.mean([len({i for i, _ in g} & {i for i, _ in w}) / max(1, len(w)) for g, w in zip(got, want)]))


def _synthetic(n_items: int, cfg, args):
    """A learner knowing ``n_items`` items (the synthetic stream), and the stream's next slice."""
    stream = SyntheticStream(n_users=args.users, n_items=n_items, new_item_every=0, drift_every=0, seed=0)
    learner = IncrementalLearner(cfg.model, cfg.trainer)
    learner.observe(_catalogue(stream, n_items))
    learner.update()

    def next_slice() -> pa.Table:
        return clean_batch(pa.Table.from_pylist(stream.next_events(cfg.trainer.min_new_events)), cfg.cleaning, "bench").clean

    return learner, next_slice, args.warm


def _dataset(path: str, cfg, args):
    """A learner over a ratings file's events in time order (MovieLens), and its next slice: the
    first ``--data-warm`` share of the events is learned before the first graph (trained rows)."""
    from increc_ray.ingest.loaders import load_movielens

    events = clean_batch(load_movielens(path), cfg.cleaning, "bench").clean
    events = events.sort_by([("timestamp", "ascending")])
    step = cfg.trainer.min_new_events
    slices = iter([events.slice(i, step) for i in range(0, events.num_rows, step)])
    return IncrementalLearner(cfg.model, cfg.trainer), lambda: next(slices), int(args.data_warm * events.num_rows / step)


def one_size(n_items: int, cfg, settings: IndexSettings, args) -> dict:
    learner, next_slice, warm = _dataset(args.data, cfg, args) if args.data else _synthetic(n_items, cfg, args)

    def learn() -> None:
        learner.observe(next_slice())
        learner.update()

    for _ in range(warm):
        learn()
    n_items = learner.n_items
    index = ItemIndex(settings)
    t = time.perf_counter()
    Scorer.from_weights(learner.export_weights(1), index)  # starts the first build
    assert index.wait_idle(4 * 3600) and index.builds == 1, "the first graph was not built"
    first_build_s = index.last_build_s
    print(f"{n_items:,} items: first graph built in {first_build_s:.1f} s", flush=True)
    users = [u for u in list(learner._seqs)[-4 * args.queries:] if len(learner.user_items(u)) >= 2][: args.queries]
    histories = [[learner.vocab.id_of(j) for j in learner.user_items(u)] for u in users]
    versions, timings = [], []
    for v in range(2, args.versions + 2):
        learn()
        weights = learner.export_weights(v)
        t = time.perf_counter()
        approx = Scorer.from_weights(weights, index)
        adopt_s = time.perf_counter() - t
        t = time.perf_counter()
        exact = Scorer.from_weights(weights)
        adopt_exact_s = time.perf_counter() - t
        assert approx.view is not None, "a version without the graph"
        recall = _recall(approx.recommend_batch(histories, K, histories), exact.recommend_batch(histories, K, histories))
        stats = index.stats()
        versions.append({"version": v, "fresh_rows": len(approx.view.fresh), "adopt_s": round(adopt_s, 3),
                         "follow_s": round(stats["last_follow_s"], 3), "adopt_exact_s": round(adopt_exact_s, 3),
                         "recall@10": round(recall, 3), "builds": stats["builds"]})
        print(json.dumps(versions[-1]), flush=True)
        if v % args.time_every == 0:
            h16 = histories[:16]
            timings.append({"version": v, "fresh_rows": len(approx.view.fresh),
                            "exact_ms_batch1": _median_ms(lambda: exact.recommend(histories[0], K, histories[0]), args.repeat),
                            "approx_ms_batch1": _median_ms(lambda: approx.recommend(histories[0], K, histories[0]), args.repeat),
                            "exact_ms_per_request_batch16": _median_ms(lambda: exact.recommend_batch(h16, K, h16), 5) / 16,
                            "approx_ms_per_request_batch16": _median_ms(lambda: approx.recommend_batch(h16, K, h16), 5) / 16})
            print(json.dumps(timings[-1]), flush=True)
    index.wait_idle(4 * 3600)
    stats = index.stats()
    recalls = [r["recall@10"] for r in versions]
    b1 = float(np.median([t["exact_ms_batch1"] for t in timings])) / float(np.median([t["approx_ms_batch1"] for t in timings]))
    b16 = float(np.median([t["exact_ms_per_request_batch16"] for t in timings])) / \
        float(np.median([t["approx_ms_per_request_batch16"] for t in timings]))
    return {"items": n_items, "first_build_s": round(first_build_s, 1), "graph_builds": stats["builds"],
            "last_refresh_s": None if stats["builds"] < 2 else round(stats["last_build_s"], 2),
            "recall@10_mean": round(float(np.mean(recalls)), 3), "recall@10_min": round(float(np.min(recalls)), 3),
            "fresh_rows_max": max(r["fresh_rows"] for r in versions),
            "follow_s_median": round(float(np.median([r["follow_s"] for r in versions])), 3),
            "adopt_s_median": round(float(np.median([r["adopt_s"] for r in versions])), 3),
            "adopt_exact_s_median": round(float(np.median([r["adopt_exact_s"] for r in versions])), 3),
            "speedup_batch1": round(b1, 1), "speedup_batch16": round(b16, 1),
            "timings": [{k: (round(x, 3) if isinstance(x, float) else x) for k, x in t.items()} for t in timings],
            "versions": versions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="large-catalogue")
    ap.add_argument("--items", default="100000,1000000", help="catalogue sizes, comma-separated")
    ap.add_argument("--versions", type=int, default=30)
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--warm", type=int, default=10, help="updates before the first graph (users' first events)")
    ap.add_argument("--queries", type=int, default=64, help="users whose answers are compared per version")
    ap.add_argument("--time-every", type=int, default=5, help="time requests every this many versions")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--tolerances", default=None, help="serving.index_tolerance values, comma-separated "
                    "(default: the profile's), each following the same stream with a graph of its own")
    ap.add_argument("--data", default=None, help="a MovieLens ratings file instead of the synthetic stream "
                    "(trained rows; --items is then ignored)")
    ap.add_argument("--data-warm", type=float, default=0.8, help="share of the file's events learned before the graph")
    ap.add_argument("--trainer", action="append", default=[], metavar="KEY=VALUE",
                    help="override a trainer setting of the profile (repeatable), e.g. rare_item_rows=named")
    ap.add_argument("--threads", type=int, default=1, help="threads a graph build or refresh may use "
                    "(serving.index_threads; requests are always scored on one)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "ann_follow.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)  # a replica's setting
    cfg = load(profile=args.profile)
    if args.trainer:
        import yaml

        cfg = replace(cfg, trainer=replace(cfg.trainer, **{k: yaml.safe_load(v) for k, v in
                                                           (kv.split("=", 1) for kv in args.trainer)}))
    s = cfg.serving
    tolerances = [float(x) for x in args.tolerances.split(",")] if args.tolerances else [s.index_tolerance]
    rows = []
    sizes = [0] if args.data else [int(x) for x in args.items.split(",")]
    for n, tolerance in [(x, t) for x in sizes for t in tolerances]:
        settings = IndexSettings(min_items=0, candidates=s.index_candidates, ef=s.index_ef, tolerance=tolerance,
                                 connectivity=s.index_connectivity, refresh_fraction=s.index_refresh_fraction,
                                 threads=args.threads)
        row = {"tolerance": tolerance, **one_size(n, cfg, settings, args)}
        rows.append(row)
        n = row["items"]
        print(f"{n:>9,} items, tolerance {tolerance}: recall@10 {row['recall@10_mean']} (min {row['recall@10_min']}), "
              f"batch 1 {row['speedup_batch1']}x and batch 16 {row['speedup_batch16']}x the exact scan's speed; "
              f"first build {row['first_build_s']} s, {row['graph_builds']} graphs, following a version "
              f"{row['follow_s_median']} s", flush=True)
    out = {"bench": "ann_follow", "profile": args.profile, "data": os.path.basename(os.path.dirname(args.data))
           if args.data else "synthetic", "k": K, "threads": 1, "build_threads": args.threads,
           "baseline": "exact top-k of the same versions (Scorer without an index), same run",
           "index": {k: v for k, v in settings.__dict__.items() if k != "tolerance"},
           "trainer_loss": cfg.trainer.loss, "negatives": cfg.trainer.negatives,
           "trainer_overrides": args.trainer, "rare_item_rows": cfg.trainer.rare_item_rows,
           "sizes": rows}
    print(f"wrote {write_result(out, os.path.dirname(args.out), os.path.basename(args.out))}")


if __name__ == "__main__":
    main()
