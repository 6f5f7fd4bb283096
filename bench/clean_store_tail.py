"""What one look for new clean events costs the trainer as the clean store grows (issue 13: a
long-running deployment must not slow down with age). The trainer's ``StreamCursor`` finds new
parts by stat-ing the next expected names (``CleanStore.probe``); the baseline, measured in the
same run on the same folder, is the listing of the whole folder it made before
(``CleanStore.parts``), whose cost grows with every part ever written.

    python bench/clean_store_tail.py [--parts 1000 10000 100000] [--out bench/results/clean_store_tail.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import pyarrow as pa

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.ingest.landing import CleanStore  # noqa: E402
from increc_ray.learn.cursor import StreamCursor  # noqa: E402

HERE = os.path.dirname(__file__)


def _time(fn, repeat: int) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - started) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parts", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "clean_store_tail.json"))
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as root:
        store = CleanStore(root)
        one = pa.table({"x": [1]})
        written = 0
        for n in sorted(args.parts):
            for seq in range(written, n):  # empty stand-ins: a look stats names, it reads no part
                with open(store.path_of(seq), "wb"):
                    pass
            written = n
            cursor = StreamCursor(store, n - 1, 0)
            cursor._parts()  # the first look lists the folder once
            store.append(one, n)  # a new part, then each look finds it by name
            probe = _time(lambda: cursor._parts(), args.repeat)
            listing = _time(lambda: store.parts(after=n - 1), args.repeat)
            os.remove(store.path_of(n))
            rows.append({"parts": n, "look_ms": round(probe * 1e3, 3), "listing_ms": round(listing * 1e3, 3),
                         "listing_over_look": round(listing / probe, 1)})
            print(json.dumps(rows[-1]))
    out = {"bench": "clean_store_tail", "repeat": args.repeat, "rows": rows}
    print(f"wrote {write_result(out, os.path.dirname(args.out), os.path.basename(args.out))}")


if __name__ == "__main__":
    main()
