"""Fault injection on the real app: processes killed with SIGKILL, not mocks.

Runs after test_app.py on the same deployment (pytest runs the files of a folder in name order),
so the model has live versions before the first kill.
"""

from __future__ import annotations

import os
import signal

import httpx
import pytest

from conftest import AUTH, wait_until
from test_app import STREAM, _ok, post, status, wait_applied

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(app):
    import test_app

    url, data_dir = app
    test_app.DATA_DIR[:] = [data_dir]
    with httpx.Client(base_url=url, timeout=60.0, headers=AUTH) as c:
        wait_until(lambda: _ok(c, "/healthz"), 120, what="/healthz")
        yield c


def _train_worker_pid(c: httpx.Client) -> int | None:
    """The train worker's process id, as it reports it in /status (this cluster's own worker)."""
    return status(c)["trainer"]["progress"].get("worker_pid")


def test_sigkill_of_the_train_worker_resumes_with_new_increasing_versions(client):
    """A killed train worker is restarted by Ray Train from its last checkpoint; it must not
    republish a version number serving already has (the registry refuses repeats, which used
    to make the restarted trainer loop forever on stale weights)."""
    if status(client)["model_version"] < 1:  # run alone: give the gate something to promote
        for _ in range(8):
            post(client, STREAM.next_events(250))
    before = wait_applied(client, min_version=1)
    pid = wait_until(lambda: _train_worker_pid(client), 60, what="a live train worker")
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: (_train_worker_pid(client) or pid) != pid, 180, what="a restarted train worker")
    for _ in range(6):  # the restarted worker learns and the gate promotes again
        post(client, STREAM.next_events(250))
    after = wait_applied(client, min_version=before["model_version"] + 1, timeout_s=240)
    assert after["served_version"] > before["served_version"]
    assert "must increase" not in str(after["trainer"]["trainer"].get("last_error") or "")
    gate = after["trainer"]["gate"]
    assert gate["live_version"] == after["model_version"] and gate["promoted"] >= 1
    print(f"killed train worker {pid}; versions {before['model_version']} -> {after['model_version']}")
