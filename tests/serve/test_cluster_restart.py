"""A whole-cluster crash while a client keeps posting: every process of a real Ray cluster
(started with `ray start`, the app brought up with `serve deploy`) is SIGKILLed, the cluster is
started again and the app redeployed; the loop resumes from its checkpoint and offsets, nothing
acknowledged is lost and nothing is applied twice.

`slow` (about 5 minutes on 2 cores): `bash deploy/test.sh -m slow`; `.ci/run` runs it. The
cluster is this test's own (its own temp dir and ports), so it never touches another one on
the machine, which `ray stop` would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import httpx
import pytest
import yaml

from conftest import TEST_CONFIG, free_port, record, wait_until
from increc_ray.evaluate.synthetic import SyntheticStream

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = os.path.dirname(sys.executable)
TOKEN = "restart-token-" + os.urandom(6).hex()
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Cluster:
    """A Ray cluster of this test's own: `ray start --head` in its own temp dir, with free ports."""

    def __init__(self) -> None:
        # short (not under pytest's tmp_path): Ray's socket paths in it must stay under 107 bytes
        self.temp_dir = tempfile.mkdtemp(prefix="increc-rs-", dir="/tmp")
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        # Ray 2.60 guards a cluster with a token: `ray start` and `serve deploy` share this one
        self.env = {**os.environ, "INCREC_TOKEN": TOKEN, "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}", "RAY_AUTH_MODE": "token",
                    "RAY_AUTH_TOKEN": os.urandom(16).hex()}
        self.env.pop("RAY_AUTH_TOKEN_PATH", None)

    def start(self) -> None:
        self._run([f"{BIN}/ray", "start", "--head", f"--temp-dir={self.temp_dir}", f"--port={self.gcs_port}",
                        f"--dashboard-port={self.dashboard_port}", "--dashboard-host=127.0.0.1",
                        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                   f"--metrics-export-port={free_port()}", "--num-cpus=2", "--disable-usage-stats"])

    def deploy(self, config_path: str) -> None:
        self._run([f"{BIN}/serve", "deploy", config_path, "--address", f"http://127.0.0.1:{self.dashboard_port}"])

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, f"{' '.join(cmd[:2])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"

    def pids(self) -> list[int]:
        """Every process of this cluster: those whose command line names its temp dir (GCS, raylet,
        dashboard, monitors) and all their descendants (the workers, renamed ``ray::...``)."""
        import psutil

        out = set()
        for p in psutil.process_iter(["pid", "cmdline"]):
            try:
                if self.temp_dir in " ".join(p.info["cmdline"] or ()) and p.pid != os.getpid():
                    out.add(p.pid)
                    out.update(c.pid for c in p.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return sorted(out)

    def crash(self) -> int:
        """SIGKILL every process of the cluster at once, as a machine losing power would."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not self.pids(), 60, what="every cluster process gone")
        return len(pids)


class Poster:
    """A client posting batches with ids in a loop, retrying each until it is acknowledged."""

    def __init__(self, url: str, stream: SyntheticStream) -> None:
        self.url, self.stream = url, stream
        self.acked: list[dict] = []
        self.failed = 0
        self.last: str = ""  # the last failure, for a test that times out
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Poster":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(120)

    def _run(self) -> None:
        try:
            self._post_forever()
        except BaseException as e:  # seen by the test (a thread's exception is otherwise lost)
            self.error = e

    def _post_forever(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0, headers=AUTH) as c:
            batch = self.stream.next_events(100)
            while not self._stop.is_set():
                try:
                    r = c.post("/events", content=json.dumps(batch))
                    ok = r.status_code == 200
                    # a valid batch is never a 4xx of the app; Serve's proxy answers a plain 404
                    # while the app is being (re)deployed, which a client retries like a 503
                    proxy_404 = r.status_code == 404 and "Ping http" in r.text
                    assert ok or r.status_code >= 500 or proxy_404, r.text
                    self.last = "" if ok else f"{r.status_code} {r.text[:300]}"
                except httpx.TransportError as e:
                    ok, self.last = False, f"{type(e).__name__}: {e}"
                if ok:
                    self.acked += batch
                    batch = self.stream.next_events(100)
                    self._stop.wait(0.5)
                else:  # the cluster is down: retry the same batch, as a client would
                    self.failed += 1
                    self._stop.wait(1.0)


def _status(url: str) -> dict | None:
    try:
        r = httpx.get(f"{url}/status", headers=AUTH, timeout=10)
    except httpx.TransportError:
        return None
    return r.json() if r.status_code == 200 else None


def _stored_keys(data_dir: str) -> list[str]:
    from increc_ray.ingest.landing import CleanStore

    table = CleanStore(os.path.join(data_dir, "clean")).read_all(columns=["dedup_key"])
    return [] if table is None else table.column("dedup_key").to_pylist()


def test_a_whole_cluster_crash_loses_nothing_and_resumes_from_the_checkpoint(tmp_path):
    import psutil  # noqa: F401  (the test extra)

    data_dir, port = str(tmp_path / "data"), free_port()
    config = {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": port},
              "applications": [{"name": "increc", "route_prefix": "/", "import_path": "increc_ray.serve.app:app_builder",
                                "args": {"config": {**TEST_CONFIG, "data_dir": data_dir}}}]}
    config_path = tmp_path / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    cluster = Cluster()
    stream = SyntheticStream(n_users=80, n_items=40, p_follow=0.9, n_clusters=4, new_item_every=0,
                             drift_every=0, seed=5)
    cluster.start()
    try:
        cluster.deploy(str(config_path))
        wait_until(lambda: _status(url), 240, interval_s=2.0, what="the app up")
        with Poster(url, stream) as poster:
            before = wait_until(lambda: (s := _status(url)) and s["served_version"] >= 1 and s, 300, interval_s=2.0,
                                what="a first served version")
            from increc_ray.config import Config
            from increc_ray.learn.resume import checkpoints_on_disk

            # a checkpoint written (Ray Train may not have recorded it in its run snapshot yet:
            # the trainer then resumes from the folder, learn.resume._unregistered_checkpoint)
            wait_until(lambda: checkpoints_on_disk(Config.from_dict({"data_dir": data_dir})) and
                       len(poster.acked) >= 2000, 300, interval_s=2.0, what="a checkpoint and 2000 acknowledged events")
            n_killed = cluster.crash()
            killed_at = time.time()
            cluster.start()
            cluster.deploy(str(config_path))
            # the restored trainer republishes its live version before its first progress report:
            # wait for both, or the phase read below may not be there yet
            after = wait_until(lambda: (s := _status(url)) and s["served_version"] > before["served_version"]
                               and "phase" in s["trainer"]["progress"] and s,
                               300, interval_s=2.0, what="serving again after the restart, the trainer reporting")
            back_s = time.time() - killed_at
            acked_at_restart = len(poster.acked)
            deadline = time.time() + 120
            while len(poster.acked) < acked_at_restart + 500 and poster.error is None and time.time() < deadline:
                time.sleep(1.0)
            assert poster.error is None, poster.error
            assert len(poster.acked) >= acked_at_restart + 500, f"not posting again; last failure: {poster.last}"
        quiet = wait_until(lambda: (s := _status(url)) and not s["ingest"]["pending_files"] and s, 180,
                           what="the landing zone drained")
        keys = _stored_keys(data_dir)
        sent = {f"id:{e['event_id']}" for e in poster.acked}
        lost, doubled = len(sent - set(keys)), len(keys) - len(set(keys))
        ledger = quiet["ledger"]
        record("whole-cluster crash (SIGKILL every process) + ray start + serve deploy", trials=1,
               events=len(sent), lost=lost, applied_twice=doubled, failed_requests=poster.failed,
               processes_killed=n_killed, seconds_to_serve_again=round(back_s, 1),
               ledger_balanced=ledger["balanced"])
        assert lost == 0 and doubled == 0 and ledger["applied_twice"] == 0
        assert ledger["balanced"], ledger
        assert ledger["received"] >= len(poster.acked) and ledger["applied"] == len(keys)
        # resumed from the checkpoint: no cold-start pass over the store, the learner's events kept
        progress = after["trainer"]["progress"]
        # a full pass may be running: a backlog pass (the events posted while the cluster was down
        # outnumber what the checkpoint's learner had seen) is by design; a cold-start one is not
        running = progress.get("full_pass") or {}
        assert progress["phase"] != "bootstrapping" or str(running.get("reason", "")).startswith("backlog"), progress
        assert running.get("reason") != "cold start", progress
        assert (progress.get("last_full_pass") or {}).get("reason") != "cold start", progress
        assert progress["events_seen"] > 0  # the checkpoint's learner (it may predate `before`)
    finally:
        cluster.crash()
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
