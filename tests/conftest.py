"""Shared fixtures: a real local Ray cluster with the increc_ray Serve app deployed on it."""

from __future__ import annotations

import json
import os
import socket
import time

import pytest

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout_s: float, interval_s: float = 0.5, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout_s``."""
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what} (last value: {last!r})")


def positives_table(rows) -> "pa.Table":
    """Cleaned-schema positives from (user, item, timestamp_ms) rows, in the given (file) order."""
    import pyarrow as pa

    n = len(rows)
    return pa.table({
        "user_id": pa.array([r[0] for r in rows], pa.string()),
        "item_id": pa.array([r[1] for r in rows], pa.string()),
        "timestamp": pa.array([int(r[2]) for r in rows], pa.timestamp("ms", tz="UTC")),
        "label": pa.array([1] * n, pa.int8()),
        "weight": pa.array([1.0] * n, pa.float32()),
    })


# The bearer token of the integration tests' app (auth is required by default); the replicas
# read it from the environment they inherit from this process (see ray_cluster).
TEST_TOKEN = "test-token-" + os.urandom(8).hex()
AUTH = {"Authorization": f"Bearer {TEST_TOKEN}"}

# Small and fast settings for tests: the same code paths as serve_config.yaml.
TEST_CONFIG = {
    # retention on (a year, the test stream spans hours: nothing is old enough) so the deployed
    # prune loop runs; tests/ingest/test_retention.py prunes
    # 4 KiB: small posts are cleaned inline, the 1,500-event ones by the Ray Data job (both are tested)
    "ingest": {"landing_poll_interval_s": 0.2, "max_body_bytes": 1_000_000, "retention_s": 365 * 86400.0,
               "prune_interval_s": 1.0, "inline_clean_max_bytes": 4096},
    "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 20, "dropout": 0.1,
              "initial_item_capacity": 64},
    "trainer": {"lr": 0.005, "batch_size": 64, "min_new_events": 20, "max_new_events": 250, "steps_per_update": 2,
                "checkpoint_every": 5, "clean_store_poll_interval_s": 0.2,
                # a trainer catching up after the fault tests promotes 5 versions in under a second:
                # the rollback test reads its rollback's version after them
                "keep_versions": 50},
    "bootstrap": {"min_events": 1000, "epochs": 4, "eval_every": 1, "patience": 2, "lr": 0.005, "batch_size": 64},
    "gate": {"min_events": 100},
    "serving": {"weight_poll_timeout_s": 2.0},
}


# Two recommend replicas from the start (read-your-writes and swaps are tested across replicas),
# a third when the load asks for it: a handful of concurrent clients scales the app up.
RECOMMENDER_OPTIONS = {
    "autoscaling_config": {"min_replicas": 2, "max_replicas": 3, "target_ongoing_requests": 2,
                           "upscale_delay_s": 1.0, "downscale_delay_s": 600.0},
}


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster for the integration tests of this session."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["INCREC_TOKEN"] = TEST_TOKEN  # the cluster's workers inherit it
    # address="local": always a fresh cluster of our own, even while another one runs on this
    # machine (the demo's, which plain ray.init() would join and then refuse num_cpus for)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def app(ray_cluster, tmp_path_factory):
    """The whole increc_ray app deployed with Serve; yields (base_url, data_dir)."""
    from ray import serve

    data_dir = str(tmp_path_factory.mktemp("increc_data"))
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy_app(data_dir)
    yield f"http://127.0.0.1:{port}", data_dir
    serve.delete("increc")


def deploy_app(data_dir: str, serving: dict | None = None, **sections: dict) -> None:
    """Deploy (or redeploy) the test app on ``data_dir`` (with ``serving`` settings, and those of
    other ``sections`` such as ``trainer``, on top of the test config's) and wait until it is running."""
    from ray import serve

    from increc_ray.config import Config
    from increc_ray.serve.app import build

    over = {name: {**TEST_CONFIG.get(name, {}), **values} for name, values in {**sections, "serving": serving or {}}.items()}
    config = Config.from_dict({**TEST_CONFIG, "data_dir": data_dir, **over}).to_dict()
    serve.run(build(config, recommender_options=RECOMMENDER_OPTIONS), name="increc", route_prefix="/")


def record(fault: str, **figures) -> None:
    """Print a fault trial's figures; with INCREC_FAULT_LOG set, append them there as a JSON line
    (bench/results/faults.json is made that way, README's reliability table from it)."""
    line = {"fault": fault, **figures}
    print(json.dumps(line))
    if path := os.environ.get("INCREC_FAULT_LOG"):
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
