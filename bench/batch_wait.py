"""What ``@serve.batch`` costs one caller alone, by its ``batch_wait_timeout_s`` (Ray-free).

One coroutine calls a batched method that returns its input, in a loop, for ``--seconds`` at
each wait (the first, 0, is the baseline, measured in the same run): calls per second and CPU
per call. A lone caller's batch never fills, so each call waits out the timeout; what it costs
beyond the baseline is Ray's ``wait_for_batch`` (README "Waiting for company"). Writes
``bench/results/batch_wait.json``.

    .venv/bin/python bench/batch_wait.py [--waits 0 0.0005 0.002] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from increc_ray.evaluate.offline import write_result  # noqa: E402

HERE = os.path.dirname(__file__)


async def lone_caller(wait_s: float, seconds: float) -> dict:
    from ray import serve

    class Echo:
        @serve.batch(max_batch_size=16, batch_wait_timeout_s=wait_s)
        async def call(self, xs: list) -> list:
            return xs

    echo = Echo()
    for _ in range(100):  # warm-up
        await echo.call(1)
    cpu, wall, n = time.process_time(), time.perf_counter(), 0
    while time.perf_counter() - wall < seconds:
        await echo.call(1)
        n += 1
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"batch_wait_s": wait_s, "calls": n, "calls_per_s": round(n / wall, 1),
            "cpu_ms_per_call": round(cpu / n * 1e3, 4), "cpu_share": round(cpu / wall, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--waits", type=float, nargs="+", default=[0.0, 0.0005, 0.002])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "batch_wait.json"))
    args = parser.parse_args()
    from ray.serve import batching

    # outside a replica there is no deployment config to warn against
    batching._BatchQueue._warn_if_max_batch_size_exceeds_max_ongoing_requests = lambda self: None
    rows = [asyncio.run(lone_caller(w, args.seconds)) for w in args.waits]
    base = rows[0]["cpu_ms_per_call"]
    for r in rows:
        r["cpu_ratio_to_first"] = round(r["cpu_ms_per_call"] / base, 2)
        print(f"batch_wait_s {r['batch_wait_s']:<7g} {r['calls_per_s']:>8} calls/s, {r['cpu_ms_per_call']:.3f} ms CPU a "
              f"call ({r['cpu_ratio_to_first']}x the first)")
    write_result({"rows": rows, "seconds": args.seconds}, os.path.dirname(args.out), os.path.basename(args.out))
    print(json.dumps({r["batch_wait_s"]: r["cpu_ms_per_call"] for r in rows}))


if __name__ == "__main__":
    main()
