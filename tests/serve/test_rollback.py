"""POST /admin/rollback on the real app: serving returns to a kept earlier version, under a new
number, and the trainer learns on from it. Runs on the session's deployment after test_app.py."""

from __future__ import annotations

import os

import httpx
import numpy as np
import pytest

from conftest import AUTH, wait_until
import test_app
from test_app import STREAM, _ok, post, status, wait_applied

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(app):
    url, data_dir = app
    test_app.DATA_DIR[:] = [data_dir]
    with httpx.Client(base_url=url, timeout=90.0, headers=AUTH) as c:
        wait_until(lambda: _ok(c, "/healthz"), 120, what="/healthz")
        yield c


def _kept(c: httpx.Client) -> list[int]:
    r = c.post("/admin/rollback", json={"version": 10**9})
    assert r.status_code == 404, r.text
    assert r.json()["error"].startswith(f"version {10**9} is not kept")
    return r.json()["available"]


def _weights(version: int) -> dict:
    from increc_ray.learn.versions import WeightArchive

    return WeightArchive(os.path.join(test_app.DATA_DIR[0], "published"), keep=100).load(version)


def test_rollback_serves_a_kept_version_again_and_learning_goes_on(client):
    assert httpx.post(f"{client.base_url}/admin/rollback", json={"version": 1}).status_code == 401
    def two_kept():
        if len(kept := _kept(client)) >= 2:
            return kept
        post(client, STREAM.next_events(250))
        return None
    wait_until(two_kept, 300, interval_s=2.0, what="two promoted versions kept")
    before = wait_applied(client, min_version=1)
    kept = _kept(client)
    target = kept[-2]  # an earlier promoted version (versions keep coming: the list is read last)
    r = client.post("/admin/rollback", json={"version": target})
    # done within the route's wait: the trainer carries a rollback out at its next slice (a 202
    # here once hid a publish that raised once the rollback was done, and crashed the train worker)
    assert r.status_code == 200 and r.json()["status"] == "done", r.text
    answer = r.json()
    new = answer["version"]
    assert new > before["model_version"] and answer["rolled_back_to"] == target
    # served, and the trainer's gate reports it live (its report comes with the next slice)
    after = wait_until(lambda: (s := status(client)) and s["served_version"] >= new
                       and s["trainer"]["gate"]["live_version"] >= new and s, 60, what="it served and live")
    # the new number serves exactly the old weights (kept by the archive thread: wait for its write)
    wait_until(lambda: new in _kept(client), 30, what=f"version {new} kept")
    assert _weights(new)["metrics"]["rolled_back_to"] == target, "the answer names the rollback's own version"
    old, again = _weights(target), _weights(new)
    assert again["vocab"] == old["vocab"]
    assert all(np.array_equal(again["state_dict"][k], old["state_dict"][k]) for k in old["state_dict"])
    user = next(iter(test_app.LAST_ITEM))
    got = client.get("/recommend", params={"user_id": user, "k": 5}).json()
    assert got["model_version"] >= new and got["source"] == "model"
    # the trainer goes on learning from it
    seen = after["trainer"]["progress"]["events_seen"]
    post(client, STREAM.next_events(250))
    wait_until(lambda: status(client)["trainer"]["progress"]["events_seen"] >= seen + 250, 120,
               what="the trainer learning after the rollback")
    print(f"rolled back to {target} as version {new} (kept {kept})")
