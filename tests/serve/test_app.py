"""Integration: the whole loop on a real local Ray cluster, over HTTP.

One app is deployed for the module (deploying takes ~20 s on 2 cores); tests run
in file order and build on the stream the earlier ones sent.
"""

from __future__ import annotations

import glob
import json
import os
import threading
import time

import httpx
import pyarrow.parquet as pq
import pytest

from increc_ray.evaluate.synthetic import SyntheticStream

from conftest import AUTH, TEST_TOKEN, wait_until

pytestmark = pytest.mark.integration

STREAM = SyntheticStream(n_users=80, n_items=40, p_follow=0.9, n_clusters=4, new_item_every=0,
                         drift_every=0, seed=1)
LAST_ITEM: dict[str, str] = {}
DATA_DIR: list[str] = []  # the app's data_dir, set by the client fixture


@pytest.fixture(scope="module")
def client(app):
    url, data_dir = app
    DATA_DIR[:] = [data_dir]
    with httpx.Client(base_url=url, timeout=60.0, headers=AUTH) as c:
        wait_until(lambda: _ok(c, "/healthz"), 120, what="/healthz")
        yield c


def _ok(c: httpx.Client, path: str) -> bool:
    try:
        return c.get(path).status_code == 200
    except httpx.TransportError:
        return False


def post(c: httpx.Client, events: list[dict]) -> dict:
    r = c.post("/events", content=json.dumps(events))
    assert r.status_code == 200, r.text
    for e in events:
        if isinstance(e, dict) and "user_id" in e and "item_id" in e:
            LAST_ITEM[str(e["user_id"])] = str(e["item_id"])
    return r.json()


def status(c: httpx.Client) -> dict:
    r = c.get("/status")
    assert r.status_code == 200, r.text
    return r.json()


def clean_rows(data_dir: str) -> int:
    from increc_ray.ingest.landing import CleanStore

    return sum(pq.read_metadata(p).num_rows for _, p in CleanStore(os.path.join(data_dir, "clean")).parts())


def wait_applied(c: httpx.Client, min_version: int, timeout_s: float = 180) -> dict:
    """Wait until every landed event is cleaned and consumed by the trainer, and replicas
    serve a version >= min_version."""
    def done():
        s = status(c)
        seen = s["trainer"]["progress"].get("events_seen")
        caught_up = s["ingest"]["pending_files"] == 0 and seen == clean_rows(DATA_DIR[0])
        return s if caught_up and s["model_version"] >= min_version and s["served_version"] >= min_version else None
    return wait_until(done, timeout_s, what=f"events consumed and version >= {min_version} served")


def probe_successor_rate(c: httpx.Client, tag: str, k: int = 10) -> tuple[float, float, set[str]]:
    """(model, popularity) share of probe users whose planted next item is in their top-k.

    Each probe is a new user whose only event is item A, so the planted successor B is
    unseen (seen items are excluded) and only the sequence model can know that B follows A.
    """
    t = STREAM.start_time + STREAM.n_events
    popular = [i["item_id"] for i in c.get("/recommend", params={"user_id": f"cold-{tag}", "k": k + 1}).json()["items"]]
    hits = pop_hits = 0
    sources = set()
    for a in STREAM.items:
        user = f"probe-{tag}-{a}"
        post(c, [{"user_id": user, "item_id": a, "event_type": "click", "timestamp": t}])
        body = c.get("/recommend", params={"user_id": user, "k": k}).json()
        sources.add(body["source"])
        hits += STREAM.successor(a) in {i["item_id"] for i in body["items"]}
        pop_hits += STREAM.successor(a) in [i for i in popular if i != a][:k]
    return hits / len(STREAM.items), pop_hits / len(STREAM.items), sources


def test_cold_start_serves_popularity_fallback(client):
    r = client.get("/recommend", params={"user_id": "nobody", "k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["source"] == "fallback" and body["model_version"] == 0 and body["items"] == []


def test_learns_planted_structure_better_than_popularity(client):
    # one large first request: the cold trainer finds bootstrap.min_events waiting and trains a
    # model to convergence on them (a full pass) before it streams the rest incrementally
    answer = post(client, STREAM.next_events(1500))
    assert answer["accepted"] == 1500 and answer["rejected_count"] == 0
    for _ in range(10):
        answer = post(client, STREAM.next_events(250))
        assert answer["accepted"] == 250 and answer["rejected_count"] == 0
    s = wait_applied(client, min_version=1)
    assert s["phase"] == "streaming"
    first = s["trainer"]["progress"]["last_full_pass"]
    assert first is not None and first["n_train"] >= 900 and first["holdout_ndcg@10"] is not None
    assert first["reason"] == "cold start" or first["reason"].startswith("backlog"), first["reason"]
    progress = s["trainer"]["progress"]
    assert progress["loop_seconds"]["read"] > 0 and progress["loop_seconds"]["report"] > 0  # where its time went
    assert progress["expiry"]["live_items"] == progress["n_items"] > 0  # nothing expired: no holes
    rate, pop_rate, sources = probe_successor_rate(client, "learn")
    print(f"planted successor in top-10: model {rate:.2f}, popularity {pop_rate:.2f}")
    assert sources == {"model"}
    assert rate >= 0.7, f"model put the planted successor in the top 10 for only {rate:.0%} of probes"
    assert rate >= pop_rate + 0.3, f"model {rate:.2f} is not clearly better than popularity {pop_rate:.2f}"


def test_read_your_writes_before_the_model_updates(client):
    item = STREAM.items[0]
    before = client.get("/recommend", params={"user_id": "fresh-user", "k": 10}).json()
    assert before["source"] == "fallback"
    t = STREAM.n_events + STREAM.start_time + 1
    post(client, [{"user_id": "fresh-user", "item_id": item, "event_type": "purchase", "timestamp": t}])
    after = client.get("/recommend", params={"user_id": "fresh-user", "k": 10}).json()
    assert after["source"] == "model", "the just-posted event did not reach the user's history"
    assert item not in {i["item_id"] for i in after["items"]}, "a seen item was recommended"
    assert STREAM.successor(item) in {i["item_id"] for i in after["items"]}


def test_posted_event_shows_in_the_next_recommendation_on_every_replica(client):
    """Read-your-writes across replicas: each recommend replica answers from its own copy of the
    user history (increc_ray.serve.sync); a 200 from /events means every copy has the event."""
    t = STREAM.n_events + STREAM.start_time + 2
    first_reads: dict[str, int] = {}
    for n in range(40):
        user, item = f"rw-{n}", STREAM.items[n % len(STREAM.items)]
        post(client, [{"user_id": user, "item_id": item, "event_type": "click", "timestamp": t + n}])
        # a fresh connection per read: the proxy picks a replica per request, not per client
        for _ in range(3):
            with httpx.Client(base_url=str(client.base_url), timeout=30.0) as c:
                r = c.get("/recommend", params={"user_id": user, "k": 10})
            assert r.status_code == 200, r.text
            body, replica = r.json(), r.headers["x-increc-replica"]
            first_reads[replica] = first_reads.get(replica, 0) + 1
            assert body["source"] == "model", f"{user}'s event missing on replica {replica}: {body}"
            assert item not in {i["item_id"] for i in body["items"]}, f"seen item recommended by {replica}"
    print(f"reads per replica: {first_reads}")
    assert len(first_reads) >= 2, f"every read went to one replica: {first_reads}"
    local = [s["replica"]["local_answers"] for s in _status_per_replica(client, len(first_reads))]
    assert all(n > 0 for n in local), f"a replica never answered from its local copy: {local}"


def _status_per_replica(client: httpx.Client, n: int, tries: int = 60) -> list[dict]:
    """/status from ``n`` distinct replicas (the proxy picks one per request)."""
    seen: dict[str, dict] = {}
    for _ in range(tries):
        with httpx.Client(base_url=str(client.base_url), timeout=30.0, headers=AUTH) as c:
            s = status(c)
        seen[s["replica"]["tag"]] = s
        if len(seen) >= n:
            break
    return list(seen.values())


def test_new_item_recommendable_after_next_update_without_restart(client):
    version_before = status(client)["model_version"]
    new_item = STREAM.introduce_item()
    pred = STREAM.predecessor(new_item)
    known = {i["item_id"] for u in list(LAST_ITEM)[:10]
             for i in client.get("/recommend", params={"user_id": u, "k": 40}).json()["items"]}
    assert new_item not in known
    # Users walk the chain through the new item: ... -> pred -> new_item -> successor.
    for _ in range(3):
        post(client, STREAM.next_events(300))
    t = STREAM.start_time + STREAM.n_events + 10
    burst = []
    for n, user in enumerate(sorted(LAST_ITEM)[:40]):
        burst += [{"user_id": user, "item_id": pred, "event_type": "click", "timestamp": t + n},
                  {"user_id": user, "item_id": new_item, "event_type": "click", "timestamp": t + n + 0.5}]
    post(client, burst * 1)
    wait_applied(client, min_version=version_before + 1)
    t += 100
    post(client, [{"user_id": "chain-walker", "item_id": pred, "event_type": "click", "timestamp": t}])
    body = client.get("/recommend", params={"user_id": "chain-walker", "k": 10}).json()
    assert body["source"] == "model"
    assert new_item in {i["item_id"] for i in body["items"]}, f"{new_item} (after {pred}) not in {body['items']}"


def test_no_failed_request_while_versions_swap_and_replicas_scale_up(client):
    """Concurrent clients while the trainer publishes versions: the app scales from its two
    replicas to three (RECOMMENDER_OPTIONS), every replica swaps weights, and no request fails."""
    results: list[tuple[int, int, str]] = []
    stop = threading.Event()

    def hammer(offset: int):
        with httpx.Client(base_url=str(client.base_url), timeout=30.0) as c:
            users = sorted(LAST_ITEM)[:10]
            n = offset
            while not stop.is_set():
                try:
                    r = c.get("/recommend", params={"user_id": users[n % len(users)], "k": 10})
                    results.append((r.status_code, r.json().get("model_version", -1),
                                    r.headers.get("x-increc-replica", "")))
                except httpx.TransportError:
                    results.append((599, -1, ""))
                n += 1

    start_version = status(client)["served_version"]
    threads = [threading.Thread(target=hammer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            replicas = {tag for _, _, tag in results}
            if status(client)["served_version"] >= start_version + 3 and len(replicas) >= 3:
                break
            post(client, STREAM.next_events(200))
            time.sleep(0.3)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    codes = [code for code, _, _ in results]
    versions = sorted({v for _, v, _ in results})
    per_replica = {}
    for _, v, tag in results:
        per_replica.setdefault(tag, set()).add(v)
    print(f"{len(results)} requests during swaps; versions seen {versions}; "
          f"replicas {[(tag, len(vs)) for tag, vs in per_replica.items()]}")
    assert len(results) > 100
    assert set(codes) == {200}, f"failed requests: {[c for c in codes if c != 200][:10]}"
    # a replica takes requests only once it holds the live weights: the one autoscaling added
    # answers with a version from its first request (model_version 0 means none swapped in)
    assert start_version >= 1 and 0 not in versions, f"a replica answered before it had the live weights: {per_replica}"
    assert len([v for v in versions if v >= start_version]) >= 3, f"saw only versions {versions}"
    assert len(per_replica) >= 3, f"the app did not scale up under load: replicas {sorted(per_replica)}"
    swapped = [tag for tag, vs in per_replica.items() if len(vs) >= 2]
    assert len(swapped) >= 2, f"versions swapped on fewer than two replicas under load: {per_replica}"


def test_duplicates_and_bad_events_are_counted_not_applied(client):
    t = STREAM.start_time + STREAM.n_events + 500
    good = {"event_id": "dup-1", "user_id": "u-dup", "item_id": STREAM.items[1], "event_type": "click", "timestamp": t}
    bad = [{"user_id": "u-dup", "item_id": "x", "event_type": "boop", "timestamp": t},
           {"user_id": "u-dup", "event_type": "click", "timestamp": t},
           {"user_id": "u-dup", "item_id": "x", "event_type": "click", "timestamp": "not a time"},
           "not an object"]
    first = post(client, [good, good, *bad])
    assert first["accepted"] == 1 and first["duplicates"] == 1 and first["rejected_count"] == 4
    reasons = {r["row"]: r["reason"] for r in first["rejected"]}
    assert set(reasons) == {2, 3, 4, 5}
    assert "event_type" in reasons[2] and "item_id" in reasons[3] and "timestamp" in reasons[4]
    again = post(client, [good])
    assert again["accepted"] == 0 and again["duplicates"] == 1


@pytest.mark.parametrize("method,path,body,code,needle", [
    ("GET", "/recommend", None, 400, "user_id"),
    ("GET", "/recommend?user_id=u1&k=abc", None, 400, "k"),
    ("GET", "/recommend?user_id=u1&k=0", None, 400, "k"),
    ("GET", "/recommend?user_id=u1&k=100000", None, 400, "k"),
    ("GET", "/recommend?user_id=u1&kk=3", None, 400, "kk"),
    ("POST", "/events", b"", 400, "empty"),
    ("POST", "/events", b"{not json", 400, "JSON"),
    ("POST", "/events", b"\xff\xfe", 400, "UTF-8"),
    ("POST", "/events", b"[]", 400, "no events"),
    ("POST", "/events", b"[" + b",".join([b"{}"] * 10001) + b"]", 413, "limit"),
    ("POST", "/events", b"[" * 200_000, 400, "nested too deeply"),  # json.loads: RecursionError
    ("POST", "/events", b" " * 1_000_001, 413, "limit"),  # refused from Content-Length
    ("POST", "/recommend", None, 405, "POST"),
    ("GET", "/events", None, 405, "GET"),
    ("GET", "/nope", None, 404, "/nope"),
])
def test_malformed_requests_get_4xx_with_json_reason(client, method, path, body, code, needle):
    r = client.request(method, path, content=body)
    assert r.status_code == code, r.text
    assert needle in r.json()["error"]


@pytest.mark.parametrize("headers,reason", [
    ({}, "missing bearer token"),
    ({"Authorization": "Bearer wrong"}, "invalid bearer token"),
    ({"Authorization": f"Basic {TEST_TOKEN}"}, "missing bearer token"),
])
def test_writes_and_status_need_the_bearer_token_and_nothing_is_written_without_it(client, headers, reason):
    before = status(client)["counts"]["accepted"]
    event = {"user_id": "u-auth", "item_id": STREAM.items[0], "event_type": "click",
             "timestamp": STREAM.start_time + STREAM.n_events + 900}
    with httpx.Client(base_url=str(client.base_url), timeout=30.0, headers=headers) as anon:
        r = anon.post("/events", content=json.dumps([event]))
        assert r.status_code == 401 and r.json()["error"].startswith(reason) and r.headers["www-authenticate"] == "Bearer"
        s = anon.get("/status")
        assert s.status_code == 401 and s.json()["error"].startswith(reason)
        assert anon.get("/recommend", params={"user_id": "u1"}).status_code == 200  # public by default
        assert anon.get("/healthz").status_code == 200
    after = status(client)
    assert after["counts"]["accepted"] == before and TEST_TOKEN not in json.dumps(after)


def test_chunked_body_over_the_limit_is_cut_off(client):
    """No Content-Length: the replica counts the body as it streams in and stops at the limit."""
    def chunks():
        for _ in range(40):  # 2.6 MB, the limit is 1 MB
            yield b" " * 65536
    r = client.post("/events", content=chunks())
    assert r.status_code == 413, r.text
    assert r.json()["limit"] == 1_000_000 and "limit" in r.json()["error"]


def test_openapi_lists_every_route_with_its_parameters(client):
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    assert {"/recommend", "/events", "/healthz", "/status"} <= set(paths)
    assert set(paths["/recommend"]) == {"get"} and set(paths["/events"]) == {"post"}
    assert set(paths["/healthz"]) == {"get"} and set(paths["/status"]) == {"get"}
    params = {p["name"]: p for p in paths["/recommend"]["get"]["parameters"]}
    assert set(params) == {"user_id", "k"} and params["user_id"]["required"] and params["user_id"]["in"] == "query"
    assert params["k"]["schema"]["minimum"] == 1 and params["k"]["schema"]["maximum"] == 200
    body = paths["/events"]["post"]["requestBody"]
    assert body["required"] and {"application/json", "application/x-ndjson"} <= set(body["content"])
    assert "Event" in doc["components"]["schemas"] and "ErrorResponse" in doc["components"]["schemas"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()


def test_files_dropped_in_landing_folder_are_cleaned_and_bad_rows_quarantined(app, client):
    _, data_dir = app
    # start from an idle pipeline, so that no earlier test's events are counted as this file's
    before = wait_until(lambda: (lambda s: s if s["lag"]["pending_files"] == 0 else None)(status(client)),
                        120, what="an idle landing zone")["counts"]
    t = int(STREAM.start_time + STREAM.n_events + 1000)
    lines = [json.dumps({"user_id": "file-user", "item_id": STREAM.items[2], "event_type": "view", "timestamp": t}),
             json.dumps({"user_id": "file-user", "item_id": STREAM.items[3], "event_type": "purchase", "timestamp": t + 1}),
             json.dumps({"user_id": "file-user", "item_id": STREAM.items[3], "event_type": "purchase", "timestamp": t + 1}),
             "{broken json",
             json.dumps({"user_id": "file-user", "item_id": "i1", "event_type": "click", "timestamp": 4102444800})]
    landing = os.path.join(data_dir, "landing")
    tmp = os.path.join(landing, "_incoming.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(tmp, os.path.join(landing, "drop-1.jsonl"))
    after = wait_until(lambda: (lambda s: s if s["counts"]["cleaned"] >= before["cleaned"] + 2 else None)(status(client)),
                       120, what="dropped file cleaned")
    assert after["counts"]["quarantined"] == before["quarantined"] + 2
    assert after["counts"]["duplicates"] == before["duplicates"] + 1
    rows = [pq.read_table(p).to_pylist() for p in glob.glob(os.path.join(data_dir, "quarantine", "*.parquet"))]
    reasons = [r["reason"] for table in rows for r in table if r["source"].endswith("drop-1.jsonl")]
    assert len(reasons) == 2 and any("JSON" in r for r in reasons) and any("future" in r for r in reasons)
    # The dropped file's events reach the user's history too.
    hist = client.get("/recommend", params={"user_id": "file-user", "k": 50}).json()
    assert STREAM.items[3] not in {i["item_id"] for i in hist["items"]}


def test_trainer_checkpoints_model_optimizer_vocab_and_offsets(app, client):
    _, data_dir = app
    ckpts = wait_until(lambda: glob.glob(os.path.join(data_dir, "checkpoints", "**", "trainer_state.json"),
                                         recursive=True), 60, what="a trainer checkpoint")
    from increc_ray.learn.resume import read_checkpoint

    latest = os.path.dirname(sorted(ckpts)[-1])
    assert not glob.glob(os.path.join(latest, "*.pt")), "a pickle in the checkpoint"
    state = read_checkpoint(latest)  # safetensors + JSON: nothing is unpickled
    assert state["version"] >= 1 and state["offset"]["seq"] >= 0
    assert {"learner", "offset", "version", "n_updates"} <= set(state)
    # the checkpointed offset is where the ingest's retention may prune up to (ingest.retention)
    with open(os.path.join(data_dir, "clean", "_trainer_offset.json")) as f:
        assert 0 <= json.load(f)["seq"] <= _newest_offset(data_dir)["seq"]
    ingest = status(client)["ingest"]
    assert ingest["retention_horizon"] and ingest["pruned"]["parts"] == 0, "a year of retention prunes nothing here"
    # large posts went through the Ray Data job, small ones were cleaned in the ingest replica
    assert ingest["passes_ray_data"] > 0 and ingest["passes_inline"] > 0, ingest
    assert not (ingest["last_error"] or "").startswith("prune"), ingest["last_error"]


def _newest_offset(data_dir: str) -> dict:
    from increc_ray.learn.resume import read_checkpoint

    ckpts = glob.glob(os.path.join(data_dir, "checkpoints", "**", "trainer_state.json"), recursive=True)
    return read_checkpoint(os.path.dirname(sorted(ckpts)[-1]))["offset"]


def test_custom_metrics_reach_the_ray_metrics_export(app, client):
    """The dashboard reads Ray's Prometheus export: our metrics must be in it, gauges included."""
    import ray

    session_dir = ray._private.worker._global_node.get_session_dir_path()
    (port_file,) = glob.glob(os.path.join(session_dir, "metrics_export_port_*"))
    port = open(port_file).read().strip()
    wanted = {"ray_increc_events_accepted_total", "ray_increc_events_cleaned_total", "ray_increc_model_version",
              "ray_increc_update_loss", "ray_increc_served_model_version", "ray_increc_request_latency_ms_count",
              "ray_increc_events_applied_total", "ray_increc_model_freshness_seconds"}

    def exported():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        names = {line.split("{")[0] for line in text.splitlines() if line.startswith("ray_increc_")}
        return names if wanted <= names else None

    wait_until(exported, 60, interval_s=2, what=f"metrics {sorted(wanted)} in the export")


def _caught_up(client: httpx.Client, data_dir: str) -> dict | None:
    """/status once the trainer has read every clean event and a version is served, else None
    (what it showed last is printed: a timeout's output says where it stood)."""
    s = status(client)
    seen = s["trainer"]["progress"].get("events_seen")
    if s["ingest"]["pending_files"] == 0 and seen == clean_rows(data_dir) and s["served_version"] > 0:
        return s
    print(f"not caught up: pending files {s['ingest']['pending_files']}, events seen {seen} of "
          f"{clean_rows(data_dir)} clean, served version {s['served_version']}, phase {s['phase']}")
    return None


def test_redeploy_resumes_from_checkpoint_without_reapplying_events(app, client):
    """Delete and redeploy the app on the same data: the trainer resumes from its checkpoint
    (version and stream offset), and every clean event is applied exactly once."""
    from ray import serve

    from conftest import deploy_app

    _, data_dir = app
    before = wait_applied(client, min_version=1)
    serve.delete("increc")
    deploy_app(data_dir)
    wait_until(lambda: _ok(client, "/healthz"), 120, what="/healthz after redeploy")
    post(client, STREAM.next_events(200))  # new events after the restart are learned too

    after = wait_until(lambda: _caught_up(client, data_dir), 180, what="trainer caught up after redeploy")
    assert after["trainer"]["trainer"]["runs"] == 1
    restored = after["trainer"]["last_update"] or {}
    assert after["model_version"] >= 1 and (restored.get("restored") or after["model_version"] > 1)
    assert after["model_version"] > before["model_version"], "a version number was handed out twice"
    print(f"before redeploy: version {before['model_version']}; after: version {after['model_version']}, "
          f"events seen {after['trainer']['progress']['events_seen']}")
