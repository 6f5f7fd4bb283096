"""Integration (slow): the app deployed with ``serving.index: hnsw`` answers from its HNSW graph.

Marked slow and in a module of its own, it does not share the default run's app: a second
deployment right after another (delete, deploy) left the new trainer waiting to start for
minutes on a loaded 2-core machine. It starts Serve anew on the session's cluster (another slow
module may have left one on another port).
``bash deploy/test.sh -m slow`` runs it (``.ci/run`` does).
"""

from __future__ import annotations

import httpx
import pytest

from conftest import AUTH, deploy_app, free_port, wait_until
from test_app import DATA_DIR, STREAM, _ok, _status_per_replica, post, probe_successor_rate, wait_applied

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_hnsw_top_k_deployed_answers_from_the_graph_and_still_finds_the_successor(ray_cluster, tmp_path):
    """``serving.index: hnsw`` from the first item (it is meant for large catalogues; here it runs
    on a small one): the planted stream is learned, every replica builds a graph over the live
    version and answers from it once a newer version arrives, and the model's answers found
    through the graph still hold the planted successor."""
    from ray import serve

    DATA_DIR[:] = [str(tmp_path)]  # where wait_applied counts the clean rows
    port = free_port()
    serve.shutdown()  # another slow module's Serve on this session's cluster keeps its own port otherwise
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy_app(str(tmp_path), serving={"index": "hnsw", "index_min_items": 0})
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0, headers=AUTH) as client:
        wait_until(lambda: _ok(client, "/healthz"), 120, what="/healthz with hnsw")
        assert post(client, STREAM.next_events(1500))["accepted"] == 1500
        for _ in range(10):
            post(client, STREAM.next_events(250))
        wait_applied(client, min_version=1)

        def answering():
            post(client, STREAM.next_events(40))  # new versions: a replica's scorer takes the graph with the next one
            replicas = _status_per_replica(client, 2)
            return replicas if all((r["replica"]["index"] or {}).get("answering") for r in replicas) else None

        replicas = wait_until(answering, 180, interval_s=2.0, what="every replica answering from its graph")
        for r in replicas:
            index = r["replica"]["index"]
            assert index["built"] and index["builds"] >= 1 and index["base_rows"] > 1, index
        rate, pop_rate, sources = probe_successor_rate(client, "hnsw")
        print(f"planted successor in top-10 through the graph: model {rate:.2f}, popularity {pop_rate:.2f}")
        assert sources == {"model"}
        assert rate >= 0.7, f"through the graph the model found the planted successor for only {rate:.0%} of probes"
    serve.delete("increc")
