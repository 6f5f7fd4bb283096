"""Gather ``bench/serve_load.py`` result files of runs made one after another into one file, each run
labelled with the setting it varied (README's ``*-runs`` tables read these).

    python bench/collect_runs.py --out bench/results/serve_load_10k_p99_runs.json \\
        --what "..." --command "..." --field setting --code 1a2b3c4 \\
        /tmp/run1.json:true /tmp/run2.json:false ...

Each ``FILE:VALUE`` gives a run in the order made; VALUE is read as JSON (``true``, ``0.002``),
else kept as text. Kept per run: the catalogue size, the throughput sweep, the freshness phases
when run, and the replicas' final counters.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from increc_ray.evaluate.offline import write_result  # noqa: E402

KEPT = ("throughput", "history_freshness", "model_freshness")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--what", required=True, help="what the runs compare")
    p.add_argument("--command", required=True, help="the command of each run")
    p.add_argument("--field", required=True, help="the name of the setting the runs vary")
    p.add_argument("--code", required=True, help="the commit the runs ran")
    p.add_argument("runs", nargs="+", metavar="FILE:VALUE")
    args = p.parse_args()
    runs = []
    for i, spec in enumerate(args.runs, 1):
        path, _, raw = spec.rpartition(":")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        final = r.get("final_status") or {}
        runs.append({"run": i, "code": args.code, args.field: value, "items": r["setup"]["n_items"],
                     **{k: r[k] for k in KEPT if k in r},
                     "replicas": final.get("replicas") or ({final["replica"]["tag"]: final["replica"]}
                                                           if "replica" in final else {})})
        t = r.get("throughput", {})
        half = t.get("half_saturation", {})
        print(f"run {i} ({args.field} {value}): saturation {t.get('saturation_rps')}, ratio "
              f"{t.get('ratio_at_saturation')}, p99 at half saturation {half.get('p99_ms')} ms "
              f"({half.get('connections')} connections)")
    result = {"what": args.what, "command": args.command, "field": args.field, "runs": runs}
    write_result(result, os.path.dirname(os.path.abspath(args.out)), os.path.basename(args.out))


if __name__ == "__main__":
    main()
