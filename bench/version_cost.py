"""What a published version costs as the catalogue grows: whole (the item table in every version,
as before) against an overlay (a base put once, then the rows each version moved:
``learn.published``), measured on the same learner at the same moments, Ray-free, one thread.

A learner of ``--profile`` (default ``large-catalogue``: the sampled softmax, the only loss whose
versions are overlays) knows N items, then learns ``--versions`` slices of the profile's
``trainer.min_new_events`` synthetic events, and after each update exports the version both ways
(order alternated). For each way, per version:

* **export**: the trainer's ``export_weights`` (CPU seconds of this process);
* **put**: what the object store is handed, in MiB (an overlay's base counted when it is new, as
  the registry puts it once), and the seconds to serialize it as Ray does (pickle 5, arrays out of
  band) and copy its buffers once, a stand-in for ``ray.put`` (the deployed path copies twice: the
  trainer's call into the store, then the registry's own put);
* **adopt**: a replica's ``Scorer.from_weights`` given the version it replaces, on zero-copy views
  of the serialized buffers, as the object store hands them over;
* **score**: one request's exact top-10 at batch 1 and per request at batch 16 (an overlay scores
  its moved rows after the base).

Printed, written to ``--out`` (``bench/results/version_cost.json``), with the ratios whole/overlay.

    python bench/version_cost.py [--items 10000,100000,1000000] [--versions 8]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.learn import published  # noqa: E402
from increc_ray.profiles import load  # noqa: E402
from increc_ray.serve.scorer import Scorer  # noqa: E402

from trainer_scale import learner_knowing  # noqa: E402

HERE = os.path.dirname(__file__)


def _put(weights: dict, new_base: bool) -> tuple[float, float, dict]:
    """(MiB handed to the store, seconds to serialize and copy it, the weights as read back: views)."""
    if published.is_overlay(weights) and not new_base:
        weights = published.without_base(weights)  # the store holds the base already
    t = time.perf_counter()
    buffers: list[pickle.PickleBuffer] = []
    data = pickle.dumps(weights, protocol=5, buffer_callback=buffers.append)
    copies = [bytearray(b.raw()) for b in buffers]  # the store's copy
    seconds = time.perf_counter() - t
    mib = (len(data) + sum(len(c) for c in copies)) / 2**20
    return mib, seconds, pickle.loads(data, buffers=copies)


def _score_ms(scorers: dict[str, Scorer], histories: list[list[str]], batch: int, reps: int) -> dict[str, float]:
    """Median ms per request of exact top-10 at ``batch`` requests per forward pass, for each
    scorer, the scorers taking turns request by request (a noisy machine drifts)."""
    times: dict[str, list[float]] = {name: [] for name in scorers}
    for r in range(reps):
        group = [histories[(r * batch + b) % len(histories)] for b in range(batch)]
        for name in (list(scorers) if r % 2 else list(scorers)[::-1]):
            t = time.perf_counter()
            scorers[name].recommend_batch(group, 10, [h[-3:] for h in group])
            times[name].append((time.perf_counter() - t) / batch)
    return {name: round(statistics.median(x) * 1000, 3) for name, x in times.items()}


def _run(cfg, n_items: int, args) -> dict:
    learner, events = learner_knowing(cfg, n_items, args.users)
    histories = [[f"i{int(i)}" for i in np.random.default_rng(u).integers(n_items, size=20)] for u in range(64)]
    ways = ("whole", "overlay")
    rows = {w: [] for w in ways}
    held: dict[str, Scorer | None] = dict.fromkeys(ways)
    bases: dict[str, np.ndarray] = {}  # base id -> the store's copy
    for v in range(1, args.versions + 1):
        learner.observe(events())
        learner.update()
        for way in (ways if v % 2 else ways[::-1]):
            t = time.process_time()
            w = learner.export_weights(v, whole=way == "whole")
            export = time.process_time() - t
            base_id = w[published.ITEM_ROWS]["base_id"] if way == "overlay" else None
            mib, put_s, got = _put(w, base_id not in bases)
            if base_id:  # the replica fetches the base the store holds (``registry.resolve``)
                base = bases.setdefault(base_id, got[published.ITEM_ROWS]["base"])
                got = {**got, published.ITEM_ROWS: {**got[published.ITEM_ROWS], "base": base}}
            t = time.process_time()
            scorer = Scorer.from_weights(got, previous=held[way])
            adopt = time.process_time() - t
            held[way] = scorer
            row = {"version": v, "export_s": round(export, 4), "put_mib": round(mib, 2), "put_s": round(put_s, 4),
                   "adopt_s": round(adopt, 4)}
            if way == "overlay":
                row["moved_rows"] = int(len(w[published.ITEM_ROWS]["rows"]))
                row["new_base"] = mib > w[published.ITEM_ROWS]["base"].nbytes / 2**20
            rows[way].append(row)
        del w, got
    # the last versions held by each way score the same histories
    one, sixteen = _score_ms(held, histories, 1, args.reps), _score_ms(held, histories, 16, max(4, args.reps // 4))
    score = {way: {"batch1_ms": one[way], "batch16_ms_per_request": sixteen[way]} for way in ways}
    answers_agree = all(
        [i for i, _ in a] == [i for i, _ in b]
        for a, b in zip(held["whole"].recommend_batch(histories, 10), held["overlay"].recommend_batch(histories, 10)))

    def mean(way: str, key: str) -> float:
        return round(statistics.fmean(r[key] for r in rows[way]), 4)

    summary = {way: {k: mean(way, k) for k in ("export_s", "put_mib", "put_s", "adopt_s")} | score[way] for way in ways}
    ratio = {k: round(summary["whole"][k] / summary["overlay"][k], 1) if summary["overlay"][k] else None
             for k in ("export_s", "put_mib", "put_s", "adopt_s")}
    return {"items": learner.n_items, "capacity": learner.model.capacity,
            "bases": sum(r["new_base"] for r in rows["overlay"]),
            "moved_rows_mean": round(statistics.fmean(r["moved_rows"] for r in rows["overlay"])),
            "mean_per_version": summary, "ratio_whole_over_overlay": ratio,
            "same_top10": answers_agree, "versions": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="large-catalogue")
    p.add_argument("--items", default="10000,100000,1000000")
    p.add_argument("--versions", type=int, default=8)
    p.add_argument("--users", type=int, default=2000)
    p.add_argument("--reps", type=int, default=40)
    p.add_argument("--out", default=os.path.join(HERE, "results", "version_cost.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    cfg = load(args.profile)
    assert cfg.trainer.loss == "sampled", "only the sampled softmax publishes overlays"
    runs = []
    for n in (int(x) for x in args.items.split(",")):
        r = _run(cfg, n, args)
        runs.append(r)
        m, q = r["mean_per_version"], r["ratio_whole_over_overlay"]
        print(f"{r['items']:>9,} items: moved rows {r['moved_rows_mean']:,}/version, {r['bases']} bases in "
              f"{args.versions} versions; whole / overlay per version: export {m['whole']['export_s']:.3f} / "
              f"{m['overlay']['export_s']:.3f} s ({q['export_s']}x), put {m['whole']['put_mib']:.1f} / "
              f"{m['overlay']['put_mib']:.1f} MiB, {m['whole']['put_s']:.3f} / {m['overlay']['put_s']:.3f} s, "
              f"adopt {m['whole']['adopt_s']:.3f} / {m['overlay']['adopt_s']:.3f} s ({q['adopt_s']}x); "
              f"top-10 batch 1 {m['whole']['batch1_ms']} / {m['overlay']['batch1_ms']} ms, "
              f"batch 16 {m['whole']['batch16_ms_per_request']} / {m['overlay']['batch16_ms_per_request']} ms; "
              f"same answers: {r['same_top10']}", flush=True)
    result = {"bench": "version_cost", "profile": args.profile, "negatives": cfg.trainer.negatives,
              "slice_events": cfg.trainer.min_new_events, "d_model": cfg.model.d_model, "threads": 1,
              "versions_per_size": args.versions, "runs": runs}
    write_result(result, os.path.dirname(os.path.abspath(args.out)), os.path.basename(args.out))
    print(json.dumps({r["items"]: r["ratio_whole_over_overlay"] for r in runs}))


if __name__ == "__main__":
    main()
