"""Fault injection on the real app: processes killed with SIGKILL, not mocks.

Runs after test_app.py on the same deployment (pytest runs the files of a folder in name order),
so the model has live versions before the first kill.
"""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest

from conftest import AUTH, record, wait_until
import test_app
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
    seen, stored = after["trainer"]["progress"].get("events_seen"), test_app.clean_rows(test_app.DATA_DIR[0])
    record("SIGKILL train worker mid-stream", trials=1, events=stored, lost=max(0, stored - seen),
           applied_twice=max(0, seen - stored), failed_requests=None, ledger_balanced=after["ledger"]["balanced"])
    _ledger_holds(after, stored)
    print(f"killed train worker {pid}; versions {before['model_version']} -> {after['model_version']}")


# ---- the ingest and history replicas -------------------------------------------------------


def _stored_keys() -> list[str]:
    from increc_ray.ingest.landing import CleanStore

    table = CleanStore(os.path.join(test_app.DATA_DIR[0], "clean")).read_all(columns=["dedup_key"])
    return [] if table is None else table.column("dedup_key").to_pylist()


def _post_retrying(c: httpx.Client, events: list[dict], failed: list[int], timeout_s: float = 180) -> dict:
    """POST until answered 200, as a client retries; counts the failed attempts."""
    def attempt():
        try:
            r = c.post("/events", content=json.dumps(events))
        except httpx.TransportError:
            r = None
        if r is not None and r.status_code == 200:
            return r.json()
        failed[0] += 1
        assert r is None or r.status_code >= 500, (r.status_code, r.text)  # never a 4xx for valid events
        return None
    return wait_until(attempt, timeout_s, interval_s=1.0, what="POST /events answered")


def _status_or_none(c: httpx.Client) -> dict | None:
    try:
        r = c.get("/status")
    except httpx.TransportError:
        return None
    return r.json() if r.status_code == 200 else None


def _quiet(c: httpx.Client, part: str, old_pid: int, n_keys: int) -> dict:
    """/status once the killed replica is back (a new pid), nothing is pending and the clean
    store holds at least ``n_keys`` rows."""
    def done():
        s = _status_or_none(c)
        if not s or s[part].get("pid") in (None, old_pid) or s["ingest"]["pending_files"]:
            return None
        return s if len(_stored_keys()) >= n_keys else None
    return wait_until(done, 240, interval_s=1.0, what=f"{part} replica back and the landing zone drained")


def _ledger_holds(s: dict, n_stored: int) -> dict:
    """The ledger in /status after a fault: balanced, its applied count the store's rows, nothing twice."""
    ledger = s["ledger"]
    assert ledger["balanced"], ledger
    assert ledger["applied"] == n_stored and ledger["applied_twice"] == 0, (ledger, n_stored)
    return ledger


def _kill_and_stream(c: httpx.Client, part: str) -> None:
    """SIGKILL the ``part`` replica ("ingest" or "history") right after a batch is acknowledged
    (its landing file not cleaned yet), retry that batch as a client would, post another; then
    every acknowledged event is in the clean store once and in user history once."""
    quiet = wait_until(lambda: (s := _status_or_none(c)) and not s["ingest"]["pending_files"] and s, 120,
                       what="an idle landing zone")
    before_keys, before_hist = set(_stored_keys()), quiet["history"]["events"]
    received = quiet["ledger"]["received"]
    a, b = STREAM.next_events(200), STREAM.next_events(200)
    failed = [0]
    post(c, a)  # acknowledged: durable in the landing zone, in user history
    pid = status(c)[part]["pid"]
    os.kill(pid, signal.SIGKILL)
    _post_retrying(c, a, failed)  # the client's retry of the acknowledged batch (it timed out, say)
    _post_retrying(c, b, failed)
    sent = {f"id:{e['event_id']}" for e in a + b}
    after = _quiet(c, part, pid, len(before_keys) + len(sent))
    keys = _stored_keys()
    lost = len(sent - set(keys))
    doubled = len(keys) - len(set(keys))
    hist_added = after["history"]["events"] - (0 if part == "history" else before_hist)
    hist_expected = len(keys) if part == "history" else len(set(keys) - before_keys)
    ledger = after["ledger"]
    record(f"SIGKILL {part} replica", trials=1, events=len(sent), lost=lost, applied_twice=doubled,
           history_events_off_by=hist_added - hist_expected, failed_requests=failed[0],
           history_duplicate_appends=after["history"].get("duplicate_appends"),
           ledger_balanced=ledger["balanced"], ledger_received=ledger["received"] - received)
    assert lost == 0 and doubled == 0
    _ledger_holds(after, len(keys))
    assert ledger["received"] - received >= 2 * len(a) + len(b), "the post, its retry and the next batch"
    assert hist_added == hist_expected, "every acknowledged event in user history exactly once"
    r = c.get("/recommend", params={"user_id": str(b[-1]["user_id"]), "k": 5})
    assert r.status_code == 200 and str(b[-1]["item_id"]) not in {i["item_id"] for i in r.json()["items"]}


def test_sigkill_of_the_ingest_replica_loses_nothing_and_applies_nothing_twice(client):
    _kill_and_stream(client, "ingest")


def test_sigkill_of_the_history_replica_rebuilds_it_with_every_event_once(client):
    _kill_and_stream(client, "history")


def test_sigkill_of_the_ingest_replica_during_a_cleaning_pass_loses_nothing(client):
    """A file dropped into the landing folder; the replica that runs the Ray Data pass over it is
    SIGKILLed while the pass runs. Its replacement cleans the file again: every row in the store
    once, in user history once, and the ledger balanced."""
    quiet = wait_until(lambda: (s := _status_or_none(client)) and not s["ingest"]["pending_files"] and s, 120,
                       what="an idle landing zone")
    before_keys, before_hist = set(_stored_keys()), quiet["history"]["events"]
    items = sorted(set(test_app.LAST_ITEM.values())) or ["1"]
    now = time.time() - 3600
    rows = [{"event_id": f"drop-{i}", "user_id": f"dropper-{i % 200}", "item_id": items[i % len(items)],
             "event_type": "click", "timestamp": now + i} for i in range(2000)]
    landing = os.path.join(test_app.DATA_DIR[0], "landing")
    with open(os.path.join(landing, "_tmp-drop.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    pid = quiet["ingest"]["pid"]
    os.rename(os.path.join(landing, "_tmp-drop.jsonl"), os.path.join(landing, "drop-mid-pass.jsonl"))
    wait_until(lambda: ((s := _status_or_none(client)) and s["ingest"]["pass_started_at"]) or None, 30,
               interval_s=0.05, what="the cleaning pass under way")
    os.kill(pid, signal.SIGKILL)
    sent = {f"id:{r['event_id']}" for r in rows}
    after = _quiet(client, "ingest", pid, len(before_keys) + len(sent))
    keys = _stored_keys()
    lost, doubled = len(sent - set(keys)), len(keys) - len(set(keys))
    new = len(set(keys) - before_keys)
    for _ in range(120):  # the ingest hands a clean part to user history right after writing it
        if after["history"]["events"] - before_hist >= new:
            break
        time.sleep(0.5)
        after = _status_or_none(client) or after
    hist_off = after["history"]["events"] - before_hist - new
    record("SIGKILL cleaning (ingest) replica during a pass", trials=1, events=len(sent), lost=lost,
           applied_twice=doubled, history_events_off_by=hist_off, failed_requests=0,
           ledger_balanced=after["ledger"]["balanced"])
    assert lost == 0 and doubled == 0 and hist_off == 0
    _ledger_holds(after, len(keys))


# ---- serving while a back end, or a serving replica, is killed ----------------------------------


class _Hammer:
    """A client thread calling GET /recommend in a loop; tallies answers by status and degraded."""

    def __init__(self, url: str, users: list[str]) -> None:
        import threading

        self.url, self.users = url, users
        self.codes: dict[int | str, int] = {}
        self.degraded = 0
        self.answers: dict[tuple[str, bool], int] = {}  # (source, degraded) -> answers
        self.not_json: list[tuple[int, str]] = []  # failed answers without a JSON reason
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_Hammer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30.0) as c:
            i = 0
            while not self._stop.is_set():
                i += 1
                try:
                    r = c.get("/recommend", params={"user_id": self.users[i % len(self.users)], "k": 5})
                    code = r.status_code
                    if code == 200:
                        body = r.json()
                        key = (body["source"], body["degraded"])
                        self.answers[key] = self.answers.get(key, 0) + 1
                        self.degraded += body["degraded"]
                    elif not r.headers["content-type"].startswith("application/json"):
                        self.not_json.append((code, r.text[:200]))  # not our JSON reason: the test judges it
                except httpx.TransportError as e:
                    code = type(e).__name__
                self.codes[code] = self.codes.get(code, 0) + 1
                self._stop.wait(0.02)

    @property
    def failed(self) -> int:
        return sum(n for code, n in self.codes.items() if code != 200)


def _users() -> list[str]:
    return [str(u) for u in list(test_app.LAST_ITEM)[:20]] or ["1", "2", "3"]


def _fresh_users(client: httpx.Client, n: int = 20) -> list[str]:
    """Users whose one event, on an item the model knows, is recent: the earlier users may have
    left the history (user_ttl_s) once the file-drop test posted events at wall-clock times."""
    items = sorted(set(test_app.LAST_ITEM.values())) or ["1"]
    events = [{"user_id": f"hammer-{i}", "item_id": items[i % len(items)], "event_type": "click",
               "timestamp": time.time()} for i in range(n)]
    post(client, events)
    return [e["user_id"] for e in events]


def test_recommend_answers_degraded_while_the_history_replica_is_down(client):
    """The user-history replica hangs (SIGSTOP), then is killed (SIGKILL), under recommend load:
    every call is answered (200), marked degraded meanwhile, and the model still ranks the users'
    histories as the replica's copy last had them; /healthz says "degraded", not "ok", meanwhile.

    Hung first so that the outage outlasts a copy's trust (2/3 of serving.history_lease_s after
    its last poll): a replica Serve replaces within that is no outage to the recommend path, and
    the test raced it."""
    pid = status(client)["history"]["pid"]
    health = []
    with _Hammer(str(client.base_url), _fresh_users(client)) as hammer:
        wait_until(lambda: sum(hammer.codes.values()) >= 20, 60, what="recommend load")
        os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(lambda: health.append(client.get("/healthz").json()["status"]) or health[-1] == "degraded",
                       60, interval_s=0.2, what="/healthz degraded")
            wait_until(lambda: hammer.answers.get(("model", True), 0) >= 5, 30, what="degraded answers")
        finally:
            os.kill(pid, signal.SIGKILL)
        back = wait_until(lambda: (s := _status_or_none(client)) and s["history"]["pid"] != pid and s, 240,
                          what="a new history replica")
        wait_until(lambda: client.get("/healthz").json()["status"] == "ok", 60, what="/healthz ok again")
        after = hammer.degraded
        wait_until(lambda: sum(hammer.codes.values()) >= 20, 60)
    record("SIGKILL history replica under recommend load", trials=1, requests=sum(hammer.codes.values()),
           failed_requests=hammer.failed, degraded_answers=hammer.degraded, lost=None, applied_twice=None)
    print(f"history {pid} -> {back['history']['pid']}: answers {hammer.codes}, by (source, degraded) {hammer.answers}")
    assert hammer.failed == 0 and not hammer.not_json, (hammer.codes, hammer.not_json)
    assert after > 0, "the answers while the replica was down are marked degraded"
    assert hammer.answers.get(("model", True), 0) > 0, f"degraded answers came from popularity, not the copy: {hammer.answers}"


def test_sigkill_of_a_recommender_replica_is_replaced_and_answers_again(client):
    """SIGKILL of a Recommender replica under load: Serve replaces it; the requests that fail
    meanwhile are counted (each with a JSON reason or a dropped connection, never a hang), except
    the one the killed replica was answering: Ray Serve's proxy answers it with its own 500
    ("Internal Server Error", text/plain; the hammer has one request in flight at a time)."""
    pid = status(client)["replica"]["pid"]
    with _Hammer(str(client.base_url), _users()) as hammer:
        wait_until(lambda: sum(hammer.codes.values()) >= 20, 60, what="recommend load")
        os.kill(pid, signal.SIGKILL)
        back = wait_until(lambda: (s := _status_or_none(client)) and s["replica"]["pid"] != pid
                          and s["served_version"] >= s["model_version"] and s, 240,
                          what="a new recommender replica serving the newest weights")
        served = hammer.codes.get(200, 0)
        wait_until(lambda: hammer.codes.get(200, 0) >= served + 20, 120, what="answers from the new replica")
    record("SIGKILL recommender replica under load", trials=1, requests=sum(hammer.codes.values()),
           failed_requests=hammer.failed, lost=None, applied_twice=None)
    print(f"recommender {pid} -> {back['replica']['pid']}: answers {hammer.codes}, not JSON {hammer.not_json}")
    assert len(hammer.not_json) <= 1 and all(code == 500 for code, _ in hammer.not_json), hammer.not_json
