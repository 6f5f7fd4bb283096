"""Retention in the deployed app (``ingest.retention_s``): events spanning more than the retention,
posted over HTTP, are pruned from disk once the trainer has checkpointed past them; the ledger
still accounts for every event, a retry of a pruned event is refused with the reason
``retention``, and the app still recommends from the model.

`slow`, on a cluster of its own (``test_cluster_restart.Cluster``): the shared test app cannot
move its horizon past the stream without refusing the later tests' events.
``bash deploy/test.sh -m slow`` runs it (``.ci/run`` does).
"""

from __future__ import annotations

import json
import os
import shutil

import httpx
import pytest
import yaml

from conftest import TEST_CONFIG, free_port, wait_until
from increc_ray.evaluate.synthetic import SyntheticStream
from test_cluster_restart import AUTH, Cluster, _status

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DAY = 86400.0


def test_events_past_the_retention_are_pruned_and_the_ledger_still_balances(tmp_path):
    data_dir, port = str(tmp_path / "data"), free_port()
    keep = 14 * DAY
    app_config = {**TEST_CONFIG, "data_dir": data_dir,
                  "ingest": {**TEST_CONFIG["ingest"], "retention_s": keep, "prune_interval_s": 1.0},
                  "serving": {**TEST_CONFIG["serving"], "user_ttl_s": keep, "item_ttl_s": keep}}
    config = {"proxy_location": "HeadOnly", "http_options": {"host": "127.0.0.1", "port": port},
              "applications": [{"name": "increc", "route_prefix": "/", "import_path": "increc_ray.serve.app:app_builder",
                                "args": {"config": app_config}}]}
    config_path = tmp_path / "serve_config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    n_events, batch = 6000, 500
    stream = SyntheticStream(n_users=80, n_items=40, p_follow=0.9, n_clusters=4, new_item_every=0, drift_every=0,
                             seed=7, seconds_per_event=60 * DAY / n_events)  # 60 days of event time
    cluster = Cluster()
    cluster.start()
    try:
        cluster.deploy(str(config_path))
        wait_until(lambda: _status(url), 240, interval_s=2.0, what="the app up")
        with httpx.Client(base_url=url, timeout=60.0, headers=AUTH) as c:
            first = None
            for _ in range(n_events // batch):
                events = stream.next_events(batch)
                first = first or events[0]
                r = c.post("/events", content=json.dumps(events))
                assert r.status_code == 200 and r.json()["accepted"] == batch, r.text
            s = wait_until(lambda: (s := _status(url)) and s["ingest"]["pruned"]["parts"] > 0
                           and s["lag"]["clean_parts_behind"] == 0 and s["served_version"] >= 1 and s,
                           300, interval_s=2.0, what="the trainer caught up and old parts pruned")
            pruned, ledger = s["ingest"]["pruned"], s["ingest"]["ledger"]
            assert pruned["landing_files"] >= pruned["parts"] and pruned["events"] > 0, pruned
            parts_left = [n for n in os.listdir(os.path.join(data_dir, "clean")) if n.startswith("part-")]
            assert len(parts_left) < s["ingest"]["clean_parts"], "pruned parts are gone from disk"
            assert ledger["balanced"] and ledger["received"] == n_events and ledger["applied"] == n_events, ledger
            assert any(n.startswith("compacted-") for n in os.listdir(os.path.join(data_dir, "ledger")))
            # a client's retry of the first event: its copy may be pruned, so it is refused by age
            retry = c.post("/events", content=json.dumps([first])).json()
            assert retry["accepted"] == 0 and retry["rejected"][0]["reason"].startswith("retention: "), retry
            after = wait_until(lambda: (s := _status(url)) and s["ingest"]["ledger"]["received"] == n_events + 1 and s,
                               30, what="the retry counted")
            assert after["ingest"]["ledger"]["balanced"] and after["ingest"]["ledger"]["quarantined"] == 1
            got = c.get("/recommend", params={"user_id": first["user_id"], "k": 5}).json()
            assert got["source"] == "model" and len(got["items"]) == 5, got
    finally:
        cluster.crash()
        shutil.rmtree(cluster.temp_dir, ignore_errors=True)
