"""The HTTP layer alone: routes, bounds, error shapes and the OpenAPI document, in process
(starlette's TestClient) against a stand-in service. tests/serve/test_app.py runs the same
API on a real Ray cluster."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from increc_ray.config import Config
from increc_ray.serve.api import build_api

CFG = Config.from_dict({"ingest": {"max_body_bytes": 1000, "max_events_per_request": 5}, "serving": {"max_k": 50}})


class FakeService:
    def __init__(self) -> None:
        self.calls: list = []

    async def _recommend(self, user_id: str, k: int) -> dict:
        self.calls.append(("recommend", user_id, k))
        if user_id == "boom":
            raise RuntimeError("the history replica is gone")
        return {"user_id": user_id, "k": k, "source": "fallback", "model_version": 0, "degraded": False, "items": []}

    async def _ingest(self, records: list) -> dict:
        self.calls.append(("ingest", records))
        return {"accepted": len(records), "duplicates": 0, "rejected_count": 0, "rejected": []}

    health: dict | None = {"status": "ok", "model_version": 3, "history_reachable": True}

    def _health(self) -> dict | None:
        return self.health

    async def _status(self) -> dict:
        return {"model_version": 3}

    kept = [2, 5]

    async def _rollback(self, version: int) -> dict:
        self.calls.append(("rollback", version))
        if version not in self.kept:
            return {"error": f"version {version} is not kept; these are: {self.kept}", "available": self.kept}
        return {"status": "done" if version == 5 else "pending", "rolled_back_to": version,
                "version": 9 if version == 5 else None}


@pytest.fixture
def service():
    return FakeService()


@pytest.fixture
def client(service):
    with TestClient(build_api(service, CFG), raise_server_exceptions=False) as c:
        yield c


def test_recommend_passes_parsed_query(client, service):
    r = client.get("/recommend", params={"user_id": "  u1 ", "k": "7"})
    assert r.status_code == 200 and r.json()["k"] == 7
    assert client.get("/recommend/", params={"user_id": "u2"}).status_code == 200  # trailing slash, default k
    assert service.calls == [("recommend", "u1", 7), ("recommend", "u2", CFG.serving.default_k)]


@pytest.mark.parametrize("query,reason", [
    ("", "user_id is required, e.g. /recommend?user_id=42&k=10"),
    ("?user_id=%20", "user_id is required, e.g. /recommend?user_id=42&k=10"),
    ("?user_id=" + "x" * 257, "user_id is longer than 256 characters"),
    ("?user_id=u1&k=abc", "k: 'abc' is not an integer"),
    ("?user_id=u1&k=0", "k: 0 must be between 1 and 50"),
    ("?user_id=u1&k=51", "k: 51 must be between 1 and 50"),
    ("?user_id=u1&kk=3&z=1", "unknown query parameter(s): kk, z"),
    ("?kk=3", "unknown query parameter(s): kk; user_id is required, e.g. /recommend?user_id=42&k=10"),
])
def test_bad_query_is_400_with_the_reason(client, service, query, reason):
    r = client.get("/recommend" + query)
    assert (r.status_code, r.json()) == (400, {"error": reason})
    assert service.calls == []


@pytest.mark.parametrize("method,path,code,reason", [
    ("GET", "/events", 405, "GET is not allowed on /events"),
    ("POST", "/recommend", 405, "POST is not allowed on /recommend"),
    ("GET", "/nope", 404, "no route /nope; try GET /recommend, POST /events, GET /status, GET /healthz, POST /admin/rollback, GET /docs"),
])
def test_unknown_route_and_wrong_method(client, method, path, code, reason):
    r = client.request(method, path)
    assert (r.status_code, r.json()) == (code, {"error": reason})


def test_events_accepts_array_object_and_ndjson(client, service):
    for body in (b'[{"user_id": 1}, {"user_id": 2}]', b'{"user_id": 1}\n{"user_id": 2}\n'):
        assert client.post("/events", content=body).json()["accepted"] == 2
    assert client.post("/events", content=b'{"user_id": 1}').json()["accepted"] == 1


def test_events_refusals(client, service):
    too_many = client.post("/events", content=b"[" + b",".join([b"{}"] * 6) + b"]")
    assert too_many.status_code == 413 and too_many.json()["limit"] == 5
    declared = client.post("/events", content=b"x" * 1001)  # refused from Content-Length
    assert declared.status_code == 413 and declared.json() == {
        "error": "body is 1001 bytes, over the limit of 1000", "limit": 1000}
    chunked = client.post("/events", content=(b"[{}]" + b" " * 96 for _ in range(20)))  # no Content-Length
    assert chunked.status_code == 413 and chunked.json()["limit"] == 1000
    assert service.calls == []


def test_chunked_body_is_cut_off_not_read_whole(service):
    """A chunked body that grows past the limit is refused as soon as it does."""
    read = []

    async def receive():
        read.append(1)
        return {"type": "http.request", "body": b" " * 400, "more_body": True}  # never ends

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/events", "raw_path": b"/events", "query_string": b"",
             "headers": [(b"transfer-encoding", b"chunked")], "root_path": "", "scheme": "http",
             "server": ("t", 80), "client": ("c", 1), "http_version": "1.1", "asgi": {"version": "3.0"}}
    import asyncio

    asyncio.run(build_api(service, CFG)(scope, receive, send))
    assert sent[0]["status"] == 413 and len(read) == 3  # 1200 bytes read, of an endless body


def test_internal_failure_is_503_with_a_reason(client):
    r = client.get("/recommend", params={"user_id": "boom"})
    assert (r.status_code, r.json()) == (503, {"error": "temporarily unavailable: RuntimeError"})


def test_openapi_describes_every_route(client):
    doc = client.get("/openapi.json").json()
    paths = doc["paths"]
    assert set(paths) == {"/recommend", "/events", "/healthz", "/status", "/admin/rollback"}
    params = {p["name"]: p for p in paths["/recommend"]["get"]["parameters"]}
    assert params["user_id"]["required"] and params["user_id"]["schema"]["maxLength"] == 256
    assert params["k"]["schema"] == {"type": "integer", "minimum": 1, "maximum": 50, "default": 10,
                                     "title": "K", "description": "How many items to return."}
    body = paths["/events"]["post"]["requestBody"]["content"]
    assert {"application/json", "application/x-ndjson"} <= set(body)
    assert body["application/json"]["schema"]["oneOf"][0]["maxItems"] == 5
    for path, ops in paths.items():
        for op in ops.values():
            assert "422" not in op["responses"], f"{path} documents a 422 it never sends"
            assert op["responses"]["503"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"}
    assert paths["/events"]["post"]["responses"]["413"]
    assert client.get("/docs").status_code == 200


def test_a_plain_text_503_from_serve_becomes_a_json_reason(service):
    """Serve installs its own handler for a downstream BackPressureError: text, 503, Retry-After."""
    from starlette.responses import Response

    class Overloaded(Exception):
        pass

    async def recommend(user_id, k):
        raise Overloaded()

    service._recommend = recommend
    api = build_api(service, CFG)
    api.add_exception_handler(Overloaded, lambda r, e: Response("Request dropped: overloaded", 503,
                                                                headers={"Retry-After": "2"}))
    with TestClient(api) as c:
        r = c.get("/recommend", params={"user_id": "u1"})
    assert (r.status_code, r.json()) == (503, {"error": "temporarily unavailable: Request dropped: overloaded"})
    assert r.headers["retry-after"] == "2"


# ---- access: the bearer token ------------------------------------------------------------------

def _guarded(service, **auth):
    cfg = Config.from_dict({**CFG.to_dict(), "auth": {**CFG.auth.model_dump(), **auth}})
    return TestClient(build_api(service, cfg, token="s3cret"), raise_server_exceptions=False)


@pytest.mark.parametrize("headers,reason", [({}, "missing bearer token: send Authorization: Bearer <token>"),
                                            ({"Authorization": "Bearer nope"}, "invalid bearer token"),
                                            ({"Authorization": "s3cret"}, "missing bearer token: send Authorization: Bearer <token>")])
def test_a_missing_or_wrong_token_is_a_401_and_the_service_is_not_called(service, headers, reason):
    with _guarded(service) as c:
        for method, path, body in (("POST", "/events", b'[{"user_id": "u", "item_id": "i"}]'), ("GET", "/status", b""),
                                   ("POST", "/admin/rollback", b'{"version": 5}')):
            r = c.request(method, path, content=body, headers=headers)
            assert r.status_code == 401 and r.json() == {"error": reason}, r.text
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/recommend", params={"user_id": "u"}, headers=headers).status_code == 200
        assert c.get("/healthz", headers=headers).status_code == 200
    assert [call[0] for call in service.calls] == ["recommend"]


def test_the_right_token_passes_and_recommend_can_be_protected(service):
    ok = {"Authorization": "Bearer s3cret"}
    with _guarded(service, protect_recommend=True) as c:
        assert c.post("/events", content=b'{"user_id": "u", "item_id": "i"}', headers=ok).status_code == 200
        assert c.get("/status", headers=ok).status_code == 200
        assert c.get("/recommend", params={"user_id": "u"}).status_code == 401
        assert c.get("/recommend", params={"user_id": "u"}, headers=ok).status_code == 200
        doc = c.get("/openapi.json").json()
    assert "HTTPBearer" in doc["components"]["securitySchemes"]
    assert "401" in doc["paths"]["/events"]["post"]["responses"] and "401" in doc["paths"]["/recommend"]["get"]["responses"]
    assert "s3cret" not in str(doc)


def test_without_a_token_the_routes_are_open(client, service):
    assert client.post("/events", content=b'{"user_id": "u", "item_id": "i"}').status_code == 200


def test_resolve_token_reads_the_environment_then_the_file_and_refuses_none(tmp_path):
    from increc_ray.config import AuthConfig
    from increc_ray.errors import ConfigError
    from increc_ray.serve.api import resolve_token

    (tmp_path / "token").write_text("  from-file\n")
    assert resolve_token(AuthConfig(), {"INCREC_TOKEN": " from-env "}) == "from-env"
    assert resolve_token(AuthConfig(token_env="MY_TOKEN", token_file=str(tmp_path / "token")), {}) == "from-file"
    with pytest.raises(ConfigError, match="set the environment variable INCREC_TOKEN"):
        resolve_token(AuthConfig(), {})
    with pytest.raises(ConfigError, match="cannot be read"):
        resolve_token(AuthConfig(token_file=str(tmp_path / "missing")), {})
    assert resolve_token(AuthConfig(required=False), {}) is None


def test_healthz_is_a_503_with_a_reason_when_the_replica_cannot_answer(client, service):
    assert client.get("/healthz").json()["status"] == "ok"
    service.health = {"status": "degraded", "model_version": 3, "history_reachable": False}
    assert client.get("/healthz").status_code == 200 and client.get("/healthz").json()["status"] == "degraded"
    service.health = None
    r = client.get("/healthz")
    assert r.status_code == 503 and "not ready" in r.json()["error"]


def test_rollback_names_a_kept_version_or_gets_a_404_listing_them(client, service):
    assert client.post("/admin/rollback", json={"version": 5}).json() == {"status": "done", "rolled_back_to": 5, "version": 9}
    r = client.post("/admin/rollback", json={"version": 2})
    assert r.status_code == 202 and r.json()["status"] == "pending"
    r = client.post("/admin/rollback", json={"version": 4})
    assert r.status_code == 404 and r.json() == {"error": "version 4 is not kept; these are: [2, 5]", "available": [2, 5]}
    for body in ({}, {"version": 0}, {"version": "x"}, {"version": 5, "also": 1}):
        assert client.post("/admin/rollback", json=body).status_code == 400, body
    assert service.calls == [("rollback", 5), ("rollback", 2), ("rollback", 4)]


# ---- the plain recommend call: FastAPI's answer without FastAPI ----------------------------------

def test_plain_recommend_reads_only_queries_every_reading_agrees_on():
    from increc_ray.serve.api import _plain_recommend

    plain = lambda q: _plain_recommend(q, max_id=10, max_k=50, default_k=10)  # noqa: E731
    assert plain(b"user_id=u1&k=5") == ("u1", 5)
    assert plain(b"k=50&user_id=a.b:c-d_e") == ("a.b:c-d_e", 50)
    assert plain(b"user_id=u1") == ("u1", 10)
    for query in (b"", b"k=5", b"user_id=", b"user_id=u%31", b"user_id=u+1", b"user_id= u1", b"user_id=123456789ab",
                  b"user_id=u1&k=0", b"user_id=u1&k=05", b"user_id=u1&k=51", b"user_id=u1&k=", b"user_id=u1&k=-1",
                  b"user_id=u1&user_id=u2", b"user_id=u1&k=5&k=6", b"user_id=u1&x=1", b"user_id=u1&", b"user_id"):
        assert plain(query) is None, query


def _asgi_get(api, query: bytes) -> tuple[int, bytes, dict]:
    import asyncio

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/recommend", "raw_path": b"/recommend", "query_string": query,
             "headers": [(b"host", b"t")], "root_path": "", "scheme": "http", "server": ("t", 80),
             "client": ("c", 1), "http_version": "1.1", "asgi": {"version": "3.0"}}
    asyncio.run(api(scope, receive, send))
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], body, dict(start["headers"])


QUERY_PARTS = ("user_id=u1", "user_id=a.b:c-d_e", "user_id=", "user_id=u%31", "user_id=+u1", "user_id=%20u1",
               "user_id=" + "x" * 300, "k=1", "k=50", "k=51", "k=0", "k=05", "k=x", "k=", "k=-3", "kk=2", "")


def test_the_plain_path_answers_as_the_fastapi_route_does():
    """Every query (valid or not) gets the same status, body and headers with the fast path as
    through FastAPI alone: the fast path takes what it can read, the route the rest."""
    from hypothesis import given, settings, strategies as st

    service = FakeService()
    fast, route = build_api(service, CFG), build_api(service, CFG, fast_recommend=False)

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.sampled_from(QUERY_PARTS), max_size=3))
    def same_answer(parts):
        query = "&".join(parts).encode()
        assert _asgi_get(fast, query) == _asgi_get(route, query), query

    same_answer()
    assert any(call[0] == "recommend" for call in service.calls)


def test_the_plain_path_keeps_the_apps_error_answers(service):
    """A failure inside a plain call is answered as the route answers it: Unavailable with its
    JSON 503, another exception as the app's handler for it (Serve adds its own), else a 503."""
    from starlette.responses import Response

    from increc_ray.errors import Unavailable

    class Overloaded(Exception):
        pass

    async def recommend(user_id, k):
        raise {"down": Unavailable("no popular list"), "busy": Overloaded(), "boom": RuntimeError("x")}[user_id]

    service._recommend = recommend
    apps = [build_api(service, CFG), build_api(service, CFG, fast_recommend=False)]
    for api in apps:
        api.add_exception_handler(Overloaded, lambda r, e: Response("Request dropped: overloaded", 503,
                                                                    headers={"Retry-After": "2"}))
    for user in ("down", "busy", "boom"):
        fast, route = (_asgi_get(api, f"user_id={user}".encode()) for api in apps)
        assert fast == route and fast[0] == 503, (user, fast, route)
