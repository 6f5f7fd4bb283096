"""What one cleaning pass costs: the Ray Data job against the same cleaning in the ingest's own
process (``ingest.inline_clean_max_bytes``), by the size of what is pending.

On a local Ray cluster (what the ingest replica uses), for landing files of n events as HTTP
ingest writes them (Parquet with a receipt), ``--repeats`` passes each way, alternated: the wall
time of ``clean_files_with_ray_data`` and of ``clean_files_locally`` (the same ``_clean_file_batch``),
medians, and the CPU the whole machine spent meanwhile, means (``psutil.cpu_times``, all processes: a Ray Data
job's work runs in other workers). Both return the same rows (checked).

    python bench/clean_pass.py [--sizes 1 10 100 1000 10000 100000] [--out bench/results/clean_pass.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import psutil

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from increc_ray.config import Config  # noqa: E402
from increc_ray.evaluate.offline import write_result  # noqa: E402
from increc_ray.evaluate.synthetic import SyntheticStream  # noqa: E402
from increc_ray.ingest.events import raw_table_from_records  # noqa: E402
from increc_ray.ingest.landing import LandingZone  # noqa: E402
from increc_ray.ingest.ray_job import clean_files_locally, clean_files_with_ray_data  # noqa: E402

HERE = os.path.dirname(__file__)


def cpu_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.system


def timed(fn, *a) -> tuple[float, float, object]:
    c0, t0 = cpu_s(), time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t0, cpu_s() - c0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 1000, 10000, 100000])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "clean_pass.json"))
    args = ap.parse_args()
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    tmp = tempfile.mkdtemp(prefix="increc_clean_pass_")
    cfg = Config.from_dict({"data_dir": tmp})
    landing = LandingZone(cfg.landing_uri)
    stream = SyntheticStream(n_users=500, n_items=5000, new_item_every=0, drift_every=0, seed=0)
    rows = []
    for n in args.sizes:
        raw = raw_table_from_records(stream.next_events(n))
        path = landing.write(raw.select([c for c in raw.column_names if c != "raw"] + ["raw"]))
        files = [path]
        ray_wall, ray_cpu, local_wall, local_cpu = [], [], [], []
        clean_files_with_ray_data(files, landing.fs, cfg)  # warm: the first job starts workers
        for _ in range(args.repeats):
            w, c, by_ray = timed(clean_files_with_ray_data, files, landing.fs, cfg)
            ray_wall.append(w)
            ray_cpu.append(c)
            w, c, by_local = timed(clean_files_locally, files, landing.fs, cfg)
            local_wall.append(w)
            local_cpu.append(c)
        same = by_ray.sort_by("row").equals(by_local.sort_by("row"))
        row = {"events": n, "file_kib": round(os.path.getsize(path) / 1024, 1), "same_rows": same,
               "ray_data_wall_ms": round(statistics.median(ray_wall) * 1000, 1),
               # CPU time is counted in 10 ms ticks: the mean over the repeats, not a median of ticks
               "ray_data_cpu_ms": round(statistics.mean(ray_cpu) * 1000, 1),
               "local_wall_ms": round(statistics.median(local_wall) * 1000, 1),
               "local_cpu_ms": round(statistics.mean(local_cpu) * 1000, 1)}
        row["wall_ratio"] = round(row["ray_data_wall_ms"] / max(row["local_wall_ms"], 0.01), 1)
        rows.append(row)
        print(row, flush=True)
    ray.shutdown()
    result = {"bench": "clean_pass", "repeats": args.repeats, "cpus": os.cpu_count(), "rows": rows}
    print("written", write_result(result, os.path.dirname(args.out), os.path.basename(args.out)))


if __name__ == "__main__":
    main()
