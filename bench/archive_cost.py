"""What keeping a published version for rollback costs the trainer (``learn.versions.WeightArchive``,
written by the archive thread after every publish), whole against as an overlay, Ray-free.

Synthetic overlay versions as the large-catalogue learner publishes them at ``--items`` items
(``learn.published``: a column-major base shared by ``--per-base`` versions, then a new base; each
version ``--moved`` more moved rows than the one before, as at 1M items, ``bench/version_cost.py``),
vocabulary ids appended to the base's. Each version is kept both ways in archives of their own,
order alternated, timed in CPU seconds of this process (the archive thread's work; the disk's
writeback comes after):

* **whole**: ``published.dense`` then the whole artifact written (what the trainer did before);
* **overlay**: the base written once (its first version pays it), then each version's moved rows.

Both archives are read back and checked equal. Printed, written to ``--out``
(``bench/results/archive_cost.json``), with the ratio whole / overlay per version.

    python bench/archive_cost.py [--items 1000000] [--versions 16] [--per-base 8]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.learn import published  # noqa: E402
from increc_ray.learn.versions import WeightArchive  # noqa: E402

HERE = os.path.dirname(__file__)


def _version(v: int, base: np.ndarray, base_id: str, vocab: list[str], moved: int, g) -> dict:
    n, c = base.shape
    rows = np.sort(g.choice(np.arange(1, n), size=moved, replace=False)).astype(np.int64)
    values = np.asfortranarray(g.standard_normal((moved, c), dtype=np.float32))
    return {"version": v, "created_at": time.time(), "metrics": {}, "vocab": None,
            "model_config": {"d_model": c}, "state_dict": {"encoder.w": g.standard_normal((c, c), dtype=np.float32)},
            published.ITEM_ROWS: {"base_id": base_id, "base": base, "rows": rows, "values": values,
                                  "vocab_base": vocab, "vocab_tail": [f"new{v}"]}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--items", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--versions", type=int, default=16)
    p.add_argument("--per-base", type=int, default=8, help="versions on one base (6-11 at 1M: int8_follow.json)")
    p.add_argument("--moved", type=int, default=12_000, help="moved rows added per version")
    p.add_argument("--keep", type=int, default=5)
    p.add_argument("--out", default=os.path.join(HERE, "results", "archive_cost.json"))
    args = p.parse_args()
    g = np.random.default_rng(0)
    root = tempfile.mkdtemp(prefix="archive_cost_")
    archives = {way: WeightArchive(os.path.join(root, way), args.keep) for way in ("whole", "overlay")}
    vocab = [f"i{i}" for i in range(args.items)]
    rows = []
    try:
        for v in range(1, args.versions + 1):
            k = (v - 1) % args.per_base
            if k == 0:  # a rebase: a new column-major table (``frozen.RowLog.freeze``)
                base = np.asfortranarray(g.standard_normal((args.items + 1, args.dim), dtype=np.float32))
                base_id = f"base{v}"
            w = _version(v, base, base_id, vocab, args.moved * (k + 1), g)
            cpu = {}
            for way in (("whole", "overlay") if v % 2 else ("overlay", "whole")):
                t = time.process_time()
                archives[way].save(published.dense(w) if way == "whole" else w)
                cpu[way] = time.process_time() - t
            rows.append({"version": v, "new_base": k == 0, "moved_rows": args.moved * (k + 1),
                         "whole_s": round(cpu["whole"], 3), "overlay_s": round(cpu["overlay"], 3)})
            print(f"version {v:2d}{' (new base)' if k == 0 else '           '}: {rows[-1]['moved_rows']:7,} moved rows; "
                  f"whole {cpu['whole']:.3f} s, overlay {cpu['overlay']:.3f} s of CPU", flush=True)
        last = args.versions
        a, b = archives["whole"].load(last), archives["overlay"].load(last)
        same = a["vocab"] == b["vocab"] and all(np.array_equal(a["state_dict"][k], b["state_dict"][k])
                                                for k in a["state_dict"])
        sizes = {way: round(sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(arch.root) for f in fs)
                            / 2**20, 1) for way, arch in archives.items()}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mean = {way: round(statistics.fmean(r[f"{way}_s"] for r in rows), 3) for way in ("whole", "overlay")}
    result = {"bench": "archive_cost", "items": args.items, "dim": args.dim, "per_base": args.per_base,
              "moved_per_version": args.moved, "keep": args.keep, "mean_cpu_s_per_version": mean,
              "ratio": round(mean["whole"] / mean["overlay"], 2), "kept_mib": sizes, "same_weights_read_back": same,
              "versions": rows}
    write_result(result, os.path.dirname(os.path.abspath(args.out)), os.path.basename(args.out))
    print(f"mean CPU per version kept: whole {mean['whole']} s, overlay {mean['overlay']} s ({result['ratio']}x); "
          f"on disk at the end (keep {args.keep}): {sizes} MiB; read back the same: {same}")


if __name__ == "__main__":
    main()
