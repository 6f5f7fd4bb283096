"""Integration (slow): the app deployed with the sampled softmax publishes overlay versions (a
base put once, then the rows each version moved: ``learn.published``), and every replica answers
from them through the int8 first pass (``serving.index: int8``, from the first item here, each base
quantized once by the registry and adopted by every replica).

Its own deployment in a module of its own, like ``test_index_deployed`` (the default run's app
uses the full softmax, whose versions go whole). The item table's capacity (4,096 rows for the
stream's 40 items) keeps the moved rows under the rebase share, so after the first base every
version travels without one, as a large catalogue's do.
"""

from __future__ import annotations

import httpx
import pytest

from conftest import AUTH, deploy_app, free_port, wait_until
from test_app import DATA_DIR, STREAM, _ok, _status_per_replica, post, probe_successor_rate, wait_applied

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_overlay_versions_deployed_are_served_by_every_replica_through_int8_and_still_find_the_successor(
        ray_cluster, tmp_path):
    from ray import serve

    DATA_DIR[:] = [str(tmp_path)]  # where wait_applied counts the clean rows
    port = free_port()
    serve.shutdown()  # another slow module's Serve on this session's cluster keeps its own port otherwise
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy_app(str(tmp_path), serving={"index": "int8", "index_min_items": 0, "index_candidates": 20},
               trainer={"loss": "sampled", "negatives": 16}, model={"initial_item_capacity": 4096})
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60.0, headers=AUTH) as client:
        wait_until(lambda: _ok(client, "/healthz"), 120, what="/healthz with the sampled softmax")
        assert post(client, STREAM.next_events(1500))["accepted"] == 1500
        for _ in range(10):
            post(client, STREAM.next_events(250))
        first = wait_applied(client, min_version=1)

        def overlays_served():
            post(client, STREAM.next_events(40))  # more updates: more overlay versions
            s = _status_per_replica(client, 2)
            counts = s[0]["trainer"]["published"]
            newest = max(r["model_version"] for r in s)
            return (s, counts) if counts["overlays"] >= first["trainer"]["published"]["overlays"] + 5 \
                and all(r["served_version"] == newest for r in s) else None

        replicas, counts = wait_until(overlays_served, 180, interval_s=2.0, what="overlay versions on every replica")
        print(f"published: {counts}; replicas' int8 tables: {[r['replica']['index'] for r in replicas]}")
        assert counts["bases"] < counts["overlays"], f"every overlay shipped a base of its own: {counts}"
        assert counts["int8"]["built"] >= 1 and not counts["int8"]["failed"], counts
        for r in replicas:  # every replica answers through a quantized table per base it saw, the registry's
            index = r["replica"]["index"]
            assert index["kind"] == "int8" and index["answering"] and index["adopted"] >= 1, index
            assert index["builds"] + index["adopted"] <= counts["bases"], index
        assert counts["overlays"] >= counts["versions"] - 2, f"versions went whole: {counts}"  # rollbacks, markers
        rate, pop_rate, sources = probe_successor_rate(client, "overlay")
        print(f"planted successor in top-10 from overlay versions through int8: model {rate:.2f}, popularity {pop_rate:.2f}")
        assert sources == {"model"}
        assert rate >= 0.7, f"from overlay versions the model found the planted successor for only {rate:.0%} of probes"
    serve.delete("increc")
