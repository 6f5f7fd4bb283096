"""Where a recommend call's time goes on the deployed app: CPU per request by process, and a
sampled profile of a Recommender replica (issue 13: "what limits each figure").

Used by ``bench/serve_load.py --phases profile``: while wrk drives ``/recommend`` at a fixed
connection count, every process on the machine is sampled for CPU time (psutil) and grouped by
what it is (a Serve replica by deployment, the train worker, HAProxy, the Serve proxy, Ray's own
daemons, wrk); one Recommender replica is recorded with py-spy (``pip install py-spy``, optional),
and its stacks are folded into the functions that hold the most samples.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import psutil

# process title or command line -> group; the first match wins
GROUPS = [
    (r"ServeReplica:increc:Recommender", "recommender replicas"),
    (r"ServeReplica:increc:UserHistory", "user history"),
    (r"ServeReplica:increc:EventIngest", "ingest"),
    (r"ServeReplica:increc:ModelTrainer|RayTrainWorker|TrainController", "trainer"),
    (r"ray::(?:ReadParquet|Map|Write|_|split|DataContext)|Ray Data|ray_data", "ray data (cleaning)"),
    (r"ServeReplica:noop", "do-nothing replica"),
    (r"ServeReplica", "other replicas"),
    (r"haproxy", "haproxy"),
    (r"ProxyActor|proxy", "serve proxy"),
    (r"ServeController", "serve controller"),
    (r"ray::", "other ray workers"),
    (r"raylet|gcs_server|dashboard|log_monitor|monitor.py|runtime_env", "ray daemons"),
    (r"\bwrk\b", "wrk (load generator)"),
]


def _group(p: psutil.Process) -> str:
    try:
        text = " ".join(p.cmdline()) or p.name()
    except (psutil.Error, OSError):
        return "other"
    for pattern, name in GROUPS:
        if re.search(pattern, text):
            return name
    if p.pid == os.getpid():
        return "bench driver (event poster)"
    return f"other: {p.name()}"


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    out = {}
    for p in psutil.process_iter():
        try:
            t = p.cpu_times()
            out[p.pid] = (_group(p), t.user + t.system)
        except (psutil.Error, OSError):
            continue
    return out


def replica_pids(deployment: str = "Recommender", app: str = "increc") -> list[int]:
    pids = []
    for p in psutil.process_iter():
        try:
            if f"ServeReplica:{app}:{deployment}" in " ".join(p.cmdline()):
                pids.append(p.pid)
        except (psutil.Error, OSError):
            continue
    return pids


def cpu_during(run) -> tuple[object, dict]:
    """``run()``'s result and the CPU seconds each group spent while it ran (processes that
    started meanwhile count from zero)."""
    before = _cpu_by_process()
    t0 = time.time()
    result = run()
    wall = time.time() - t0
    after = _cpu_by_process()
    spent: dict[str, float] = collections.defaultdict(float)
    for pid, (group, cpu) in after.items():
        spent[group] += cpu - (before[pid][1] if pid in before else 0.0)
    return result, {"wall_s": round(wall, 2), "cpu_s": {g: round(s, 2) for g, s in
                                                       sorted(spent.items(), key=lambda kv: -kv[1]) if s > 0.05}}


def py_spy(pid: int, seconds: float, top: int = 25) -> dict | None:
    """Fold a py-spy recording of ``pid`` (all threads, idle frames dropped) into the functions
    holding the most samples: self (the frame on top) and total (anywhere on the stack)."""
    # on PATH, or installed beside this interpreter (a virtual environment run without activating it)
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    exe = shutil.which("py-spy") or (beside if os.access(beside, os.X_OK) else None)
    if not exe:
        return None
    with tempfile.NamedTemporaryFile(suffix=".txt", delete=False) as f:
        path = f.name
    try:
        subprocess.run([exe, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "50", "-f", "raw", "-o", path,
                        "--nonblocking", *(["--native"] if os.environ.get("PYSPY_NATIVE") else [])], capture_output=True, timeout=seconds + 60)
        own, total, entry, n = collections.Counter(), collections.Counter(), collections.Counter(), 0
        with open(path) as fh:
            for line in fh:
                stack, _, count = line.rstrip().rpartition(" ")
                if not stack:
                    continue
                c = int(count)
                frames = [re.sub(r" \((?:/.*/)?(?:site-packages/)?([^:]*):\d+\)$", r" (\1)", fr) for fr in stack.split(";")]
                n += c
                own[frames[-1]] += c
                # what the thread runs: the first frame past threading's bootstrap (or the main thread's)
                body = [fr for fr in frames if not fr.startswith(("Thread._bootstrap", "Thread.run ", "<module>"))]
                entry[body[0] if body else frames[-1]] += c
                for fr in set(frames):
                    total[fr] += c
    except (subprocess.SubprocessError, OSError, ValueError):
        return None
    finally:
        os.unlink(path)
    if not n:
        return None
    share = lambda c: round(c / n, 3)  # noqa: E731
    return {"samples": n, "self": [[fr, share(c)] for fr, c in own.most_common(top)],
            "total": [[fr, share(c)] for fr, c in total.most_common(top)],
            "by_thread_entry": [[fr, share(c)] for fr, c in entry.most_common(12)]}


def profile(run, pid: int | None, seconds: float) -> dict:
    """``cpu_during(run)``, with ``pid`` recorded by py-spy in a thread meanwhile."""
    spy: dict = {}
    t = None
    if pid is not None:
        t = threading.Thread(target=lambda: spy.update(py_spy(pid, seconds) or {}), daemon=True)
        t.start()
    result, cpu = cpu_during(run)
    if t is not None:
        t.join(seconds + 90)
    return {"result": result, **cpu, "py_spy": spy or None}
