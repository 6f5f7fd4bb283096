"""/recommend throughput before and after the FastAPI ingress, measured in one run.

Runs bench/serve_bench.py (this tree's copy) once per tree and round, alternating
before/after/before/after..., each run on a fresh local Ray cluster whose workers import
that tree's increc_ray (PYTHONPATH is set per run). Prints req/s of each and the ratio
after/before, and writes the rows and the summary to --out.

    git worktree add --detach /work/wt-before dc0cab6
    python bench/serve_fastapi_compare.py --before /work/wt-before [--rounds 2] [--seconds 10]

On a shared machine one run can be slowed by a neighbour (its do-nothing req/s drops too):
the ratio of medians is reported next to the ratio of means for that reason. ``--resummarize``
recomputes the summary of an earlier --out file without running anything.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def git_rev(tree: str) -> str:
    return subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_bench(tree: str, args, out: str) -> dict:
    env = {**os.environ, "PYTHONPATH": tree, "RAY_USAGE_STATS_ENABLED": "0"}
    port = args.port or free_port()  # other clusters may be serving on this machine
    cmd = [sys.executable, os.path.join(HERE, "serve_bench.py"), "--seconds", str(args.seconds),
           "--clients", *map(str, args.clients), "--port", str(port), "--out", out]
    subprocess.run(cmd, env=env, check=True, cwd=tree)
    with open(out) as f:
        return json.load(f)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="a checkout of the code before (e.g. dc0cab6)")
    parser.add_argument("--after", default=ROOT, help="a checkout of the code after (default: this tree)")
    parser.add_argument("--rounds", type=int, default=2, help="before/after pairs, alternating")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--clients", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--port", type=int, default=0, help="HTTP port; 0: a free one per run")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "serve_fastapi_compare.json"))
    parser.add_argument("--resummarize", action="store_true", help="summarize the runs already in --out")
    args = parser.parse_args()

    trees = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    runs = []
    if args.resummarize:
        with open(args.out) as f:
            old = json.load(f)
        runs = [{**run, "rows": {int(c): row for c, row in run["rows"].items()}} for run in old["runs"]]
        args.rounds, args.seconds, commits = old["rounds"], old["seconds"], old["trees"]
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(0 if args.resummarize else args.rounds):
            for label, tree in trees.items():
                print(f"--- round {r + 1}/{args.rounds}: {label} ({tree} @ {git_rev(tree)})", flush=True)
                t0 = time.time()
                result = run_bench(tree, args, os.path.join(tmp, f"{label}-{r}.json"))
                runs.append({"round": r + 1, "tree": label, "wall_s": round(time.time() - t0, 1),
                             "model_version": result["model_version"],
                             "rows": {row["clients"]: {"recommend_rps": row["recommend"]["rps"],
                                                       "recommend_p50_ms": row["recommend"]["p50_ms"],
                                                       "recommend_p99_ms": row["recommend"]["p99_ms"],
                                                       "errors": row["recommend"]["errors"],
                                                       "noop_rps": row["noop"]["rps"]} for row in result["results"]}})

    summary = {}
    print(f"\n{'clients':>7} {'before req/s':>24} {'after req/s':>24} {'ratio':>6}  (per round; ratio of means)")
    for c in args.clients:
        rps = {label: [run["rows"][c]["recommend_rps"] for run in runs if run["tree"] == label] for label in trees}
        noop = {label: [run["rows"][c]["noop_rps"] for run in runs if run["tree"] == label] for label in trees}
        mean = {label: statistics.mean(v) for label, v in rps.items()}
        median = {label: statistics.median(v) for label, v in rps.items()}
        per_round = [round(a / b, 3) for a, b in zip(rps["after"], rps["before"])]
        summary[c] = {"before_rps": rps["before"], "after_rps": rps["after"],
                      "before_mean_rps": round(mean["before"], 1), "after_mean_rps": round(mean["after"], 1),
                      "ratio": round(mean["after"] / mean["before"], 3),
                      "ratio_median": round(median["after"] / median["before"], 3), "ratio_per_round": per_round,
                      "noop_rps": noop}
        print(f"{c:>7} {' '.join(f'{x:7.1f}' for x in rps['before']):>24} "
              f"{' '.join(f'{x:7.1f}' for x in rps['after']):>24} {summary[c]['ratio']:6.3f}  "
              f"(medians {summary[c]['ratio_median']:.3f}; rounds {per_round}; "
              f"do-nothing before {noop['before']} after {noop['after']})")
    worst = min(s["ratio"] for s in summary.values())
    worst_median = min(s["ratio_median"] for s in summary.values())
    print(f"worst ratio after/before: {worst:.3f} of means, {worst_median:.3f} of medians (goal >= 0.90)")

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"what": "/recommend req/s, before (hand-routed __call__) vs after (FastAPI ingress)",
                   "trees": commits if args.resummarize else {
                       label: {"path": tree, "commit": git_rev(tree)} for label, tree in trees.items()},
                   "seconds": args.seconds, "rounds": args.rounds, "summary": summary, "worst_ratio": worst,
                   "worst_ratio_median": worst_median,
                   "runs": runs, "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                             "platform": platform.platform()}}, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
