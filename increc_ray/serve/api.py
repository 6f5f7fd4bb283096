"""The HTTP API of a serving replica: FastAPI routes, their pydantic models, the error shape.

    GET  /recommend?user_id=..&k=..   top-k items for a user (model, topped up by popularity)
    POST /events                      a JSON array of events, one JSON object, or NDJSON
    POST /admin/rollback              serve a kept earlier version again: {"version": N}
    GET  /healthz                     liveness and the served model version
    GET  /status                      model, lag and pipeline counts
    GET  /docs, /openapi.json         this API, described by the models below

Every refusal is ``{"error": "<reason>", ...}`` (``BadRequest.to_json``): 400 for a malformed
request (FastAPI's 422 included), 401 for a missing or wrong bearer token, 404 for an unknown
route or weight version, 405 for a known route with the wrong method, 413 for a body over
``ingest.max_body_bytes``, 503 for an internal failure.

Access (``auth``): ``POST /events``, ``GET /status`` and ``/admin/*`` need ``Authorization: Bearer <token>``
(and ``GET /recommend`` with ``auth.protect_recommend``); the check runs before the body is
read, so a refused request writes nothing. ``/healthz`` and the docs stay open.

A plain recommend call (``user_id`` of plain characters, optionally ``k``: ``_plain_recommend``)
is answered by ``_Telemetry`` without FastAPI's routing and parameter solving, the same answer
(``tests/serve/test_api.py`` checks every query against the route); the rest goes to the route.

The app is built per replica from the replica's config, so the documented bounds are the
enforced ones. It knows nothing of Ray: ``build_api`` takes any object with the ``Service``
methods, so the HTTP layer can be tested with a stand-in and no cluster.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime, and
# RecommendQuery is local to build_api (its bounds come from the config).

import hmac
import inspect
import json
import logging
import os
import re
import time
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from increc_ray import telemetry
from increc_ray.config import AuthConfig, Config
from increc_ray.errors import BadRequest, ConfigError, NotFound, PayloadTooLarge, Unauthorized, Unavailable
from increc_ray.ingest.body import parse_body

logger = logging.getLogger("increc_ray.serve")

ROUTES = ("GET /recommend", "POST /events", "GET /status", "GET /healthz", "POST /admin/rollback", "GET /docs")


class Service(Protocol):
    """What the routes call; ``increc_ray.serve.recommender.Recommender`` is the real one."""

    async def _recommend(self, user_id: str, k: int) -> dict: ...
    async def _ingest(self, records: list) -> dict: ...
    def _health(self) -> dict | None: ...  # None: not ready (503)
    async def _status(self) -> dict: ...
    async def _rollback(self, version: int) -> dict: ...


# ---- models ------------------------------------------------------------------------------------

class ErrorResponse(BaseModel):
    """Every 4xx and 503 answer; some carry detail next to the reason."""

    model_config = ConfigDict(extra="allow")
    error: str = Field(description="Why the request was refused.", examples=["k: 0 must be between 1 and 200"])
    limit: int | None = Field(None, description="With 413: the limit the request went over.")
    line: int | None = Field(None, description="With an NDJSON body: the line that is not JSON.")


class ScoredItem(BaseModel):
    item_id: str
    score: float = Field(description="Model score, or popularity for fallback items (rounded to 6 places).")


class RecommendResponse(BaseModel):
    user_id: str
    k: int
    source: Literal["model", "fallback"] = Field(
        description="'model' when the sequence model ranked the user's history; 'fallback' for popularity only.")
    model_version: int = Field(description="Weight version that answered; 0 before the first one is served.")
    degraded: bool = Field(description="True when the user-history replica did not answer in serving.history_timeout_s: "
                                       "the model ranked the user's history as this replica's copy last had it (the newest "
                                       "events may be missing), or, with no copy, the items are the cached popular list, "
                                       "the user's seen items not excluded.")
    items: list[ScoredItem] = Field(description="Up to k unseen items, best first; popular items top up the model's.")


class Event(BaseModel):
    """One interaction. Checked by the cleaning stage, not here: a bad event is counted as
    rejected with a reason (``rejected``), never a refusal of the whole request."""

    model_config = ConfigDict(extra="allow")
    user_id: str | int
    item_id: str | int
    event_type: str | None = Field(None, description="One of cleaning.event_types; absent: the default one.")
    timestamp: float | str = Field(description="Epoch seconds, epoch milliseconds or ISO-8601.")
    value: float | None = Field(None, description="E.g. a rating; how it labels the event is per event type.")
    event_id: str | None = Field(None, description="Idempotency key; without one, identical content is a duplicate.")


class Rejection(BaseModel):
    row: int = Field(description="1-based position of the event in the request.")
    reason: str


class EventsResponse(BaseModel):
    accepted: int
    duplicates: int
    rejected_count: int
    rejected: list[Rejection] = Field(description="The first rejections with their reasons.")


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"] = Field(
        description="'degraded': the user-history replica is unreachable; answers come from this replica's last copy "
                    "of the history, or the cached popular list.")
    model_version: int
    history_reachable: bool


class Lag(BaseModel):
    pending_files: int
    clean_parts_behind: int
    seconds_since_update: float | None


class Counts(BaseModel):
    accepted: int
    duplicates: int
    quarantined: int
    cleaned: int


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=1, description="A promoted version still kept (trainer.keep_versions newest).")


class RollbackResponse(BaseModel):
    status: Literal["done", "pending"] = Field(
        description="'pending' (HTTP 202): the trainer has not published it yet (e.g. it is in a full pass).")
    rolled_back_to: int
    version: int | None = Field(description="The new version number serving the old weights (versions never repeat).")


class Ledger(BaseModel):
    """``received = applied + quarantined + duplicates + pending``, from durable counts
    (``increc_ray.ingest.ledger``); ``applied_twice`` apart (goal 0)."""

    received: int
    applied: int
    quarantined: int
    duplicates: int
    pending: int
    applied_twice: int
    balanced: bool = Field(description="Whether the identity holds.")


class StatusResponse(BaseModel):
    model_version: int = Field(description="Newest version the trainer published.")
    served_version: int = Field(description="Newest version this replica has swapped in (a version the gate "
                                            "demoted is followed by a fallback marker: popularity answers).")
    last_update_time: float | None
    phase: Literal["starting", "bootstrapping", "catching_up", "streaming"] = Field(
        description="The trainer's phase: a full pass (bootstrapping, with progress and an estimate of the "
                    "time left in trainer.progress.full_pass), learning a backlog (catching_up), or streaming.")
    lag: Lag
    counts: Counts
    ledger: Ledger
    trainer: dict[str, Any]
    ingest: dict[str, Any]
    history: dict[str, Any]
    replica: dict[str, Any]


_DESCRIBED = {400: "Malformed request.", 401: "Missing or wrong bearer token (auth).",
              404: "No such weight version is kept (the answer lists those that are).", 413: "Body over ingest.max_body_bytes, or too many events.",
              503: "Temporarily unavailable (an internal failure)."}


def _errors(*codes: int) -> dict:
    # "4XX" also keeps FastAPI from documenting a 422 that this API never sends (it answers 400).
    return {**{c: {"model": ErrorResponse, "description": _DESCRIBED[c]} for c in codes},
            "4XX": {"model": ErrorResponse, "description": "Any other client error (e.g. 405 wrong method)."}}


# ---- the app -----------------------------------------------------------------------------------

def resolve_token(auth: AuthConfig, environ: dict | None = None) -> str | None:
    """The bearer token: the environment variable ``auth.token_env``, else the file
    ``auth.token_file``; None when neither has one and ``auth.required`` is off. With it on,
    no token is a ``ConfigError`` saying how to set one (the app does not start open)."""
    environ = os.environ if environ is None else environ
    token = (environ.get(auth.token_env) or "").strip()
    if not token and auth.token_file:
        try:
            with open(os.path.expanduser(auth.token_file), encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as e:
            raise ConfigError(f"auth.token_file {auth.token_file!r}: cannot be read ({e.strerror})") from None
    if not token and auth.required:
        raise ConfigError(f"auth.required: no bearer token; set the environment variable {auth.token_env} "
                          "(before `ray start`, so the replicas inherit it) or auth.token_file, or set "
                          "auth.required: false to run with open routes")
    if not token:
        logger.warning("auth.required is false and no token is set: POST /events and /status are open to anyone")
    return token or None


def build_api(service: Service, cfg: Config, token: str | None = None, fast_recommend: bool = True) -> FastAPI:
    """The FastAPI app answering for ``service``, with bounds and limits taken from ``cfg``;
    ``token`` (``resolve_token``) guards the writing and detail routes, None leaves them open.
    ``fast_recommend``: a plain recommend call (``_plain_recommend``) skips FastAPI's routing and
    parameter solving (about a fifth of a deployed replica's time at full load); anything else
    about it, and every error, is the FastAPI route's."""
    max_k, default_k, max_id = cfg.serving.max_k, cfg.serving.default_k, cfg.cleaning.max_id_length
    max_bytes, max_events = cfg.ingest.max_body_bytes, cfg.ingest.max_events_per_request

    UserId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=max_id), Query(
        description="The user to recommend for; a user with no history gets popular items.")]
    K = Annotated[int, Query(ge=1, le=max_k, description="How many items to return.")]

    api = FastAPI(title="increc_ray", version="1", redirect_slashes=False,
                  description="Online-learning sequential recommender: post events, get fresh recommendations.")
    # FastAPI's HTTPBearer parses the header and documents the scheme in OpenAPI; the check is ours
    bearer = HTTPBearer(auto_error=False, description="auth: the token of INCREC_TOKEN or auth.token_file")
    expected = token.encode() if token else None

    async def authorized(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if expected is None:
            return
        if credentials is None:
            raise Unauthorized("missing bearer token: send Authorization: Bearer <token>")
        if not hmac.compare_digest(credentials.credentials.encode(), expected):  # constant time
            raise Unauthorized("invalid bearer token")

    guarded = [Depends(authorized)]
    recommend_guard = guarded if cfg.auth.protect_recommend else []
    auth_errors = (401,) if token else ()

    @api.get("/recommend", response_model=RecommendResponse, responses=_errors(400, *(auth_errors if recommend_guard else ()), 503),
             dependencies=recommend_guard)
    async def recommend(request: Request, user_id: UserId, k: K = default_k) -> JSONResponse:
        """Top-k unseen items for a user, from the newest weights this replica has swapped in."""
        if unknown := _unknown_params(request):
            raise BadRequest(unknown)
        # A JSONResponse skips re-validating the answer against response_model (documentation only).
        return JSONResponse(await service._recommend(user_id, k),
                            headers={"x-increc-replica": getattr(service, "replica_tag", "")})

    @api.post("/events", response_model=EventsResponse, responses=_errors(400, *auth_errors, 413, 503),
              openapi_extra={"requestBody": _events_body(max_bytes, max_events)}, dependencies=guarded)
    async def events(request: Request) -> JSONResponse:
        """Ingest events durably; they reach the user's history before the answer (read-your-writes)."""
        body = await _read_body(request, max_bytes)
        return JSONResponse(await service._ingest(parse_body(body, max_events, max_bytes)))

    @api.get("/healthz", response_model=HealthResponse, responses=_errors(503))
    async def healthz() -> JSONResponse:
        """Readiness: "ok", "degraded" (the user-history replica is down; the last copy of the
        history or popular items answer),
        or 503 when this replica can answer from neither the model nor a fallback."""
        if (health := service._health()) is None:
            raise Unavailable("not ready: the user-history replica is unreachable and no fallback is cached")
        return JSONResponse(health)

    @api.get("/status", response_model=StatusResponse, responses=_errors(*auth_errors, 503), dependencies=guarded)
    async def status() -> JSONResponse:
        """Trainer, ingest and history state: versions, lag and event counts."""
        return JSONResponse(await service._status())

    @api.post("/admin/rollback", response_model=RollbackResponse, responses=_errors(400, *auth_errors, 404, 503),
              dependencies=guarded)
    async def rollback(body: RollbackRequest) -> JSONResponse:
        """Serve an earlier promoted version again, under a new version number; the trainer
        learns on from its weights."""
        answer = await service._rollback(body.version)
        if "error" in answer:
            raise NotFound(answer["error"], available=answer["available"])
        return JSONResponse(answer, status_code=200 if answer["status"] == "done" else 202)

    documented = api.openapi

    def openapi() -> dict:  # the /events body is read raw, so its Event schema is added by hand
        if api.openapi_schema is None:
            event = Event.model_json_schema(ref_template="#/components/schemas/{model}")
            event["properties"]["event_type"]["description"] = (
                f"One of {', '.join(sorted(cfg.cleaning.event_types))}; absent: {cfg.cleaning.default_event_type}.")
            documented()["components"]["schemas"]["Event"] = event
        return api.openapi_schema

    api.openapi = openapi
    api.add_exception_handler(BadRequest, _bad_request)
    api.add_exception_handler(RequestValidationError, lambda r, e: _invalid(r, e, max_k, max_id))
    api.add_exception_handler(HTTPException, _http_error)
    async def plain_recommend(scope, receive, send) -> bool:
        """Answer a plain recommend call as the route would; False: not plain, the route's."""
        if (query := _plain_recommend(scope["query_string"], max_id, max_k, default_k)) is None:
            return False
        try:
            answer = JSONResponse(await service._recommend(*query),
                                  headers={"x-increc-replica": getattr(service, "replica_tag", "")})
        except Exception as e:  # the answer the app's handler for it gives (Unavailable's, Serve's own)
            handler = next((api.exception_handlers[t] for t in type(e).__mro__ if t in api.exception_handlers), None)
            if handler is None:
                raise
            answer = handler(Request(scope, receive), e)
            if inspect.isawaitable(answer):
                answer = await answer
        await answer(scope, receive, send)
        return True

    # a guarded route keeps FastAPI's bearer check: no fast path around it
    api.add_middleware(_Telemetry, fast_recommend=plain_recommend if fast_recommend and not recommend_guard else None)
    return api


_PLAIN_ID = re.compile(rb"[A-Za-z0-9_.:-]+")
_PLAIN_K = re.compile(rb"[1-9][0-9]{0,3}")


def _plain_recommend(query: bytes, max_id: int, max_k: int, default_k: int) -> tuple[str, int] | None:
    """(user_id, k) of a query string that every reading of it agrees on: ``user_id`` and
    optionally ``k``, each once, the id of letters, digits and ``_.:-`` only (nothing to
    unescape or strip) within ``max_id``, k a plain integer within 1..``max_k``. None for
    anything else, which goes to the FastAPI route, its validation and its error answers."""
    user, k = None, None
    for part in query.split(b"&"):
        name, eq, value = part.partition(b"=")
        if name == b"user_id" and user is None and eq and _PLAIN_ID.fullmatch(value) and len(value) <= max_id:
            user = value.decode()
        elif name == b"k" and k is None and eq and _PLAIN_K.fullmatch(value) and int(value) <= max_k:
            k = int(value)
        else:
            return None
    return None if user is None else (user, default_k if k is None else k)


def _events_body(max_bytes: int, max_events: int) -> dict:
    event = {"$ref": "#/components/schemas/Event"}
    return {"required": True,
            "description": f"At most {max_events} events and {max_bytes} bytes; a larger body is refused with 413 "
                           "before it is read whole.",
            "content": {
                "application/json": {"schema": {"oneOf": [
                    {"type": "array", "items": event, "minItems": 1, "maxItems": max_events}, event]}},
                "application/x-ndjson": {"schema": {"type": "string",
                                                    "description": "One Event JSON object per line."}}}}


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to be over ``limit``: from
    Content-Length before reading anything, or while a chunked body streams in."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is {declared} bytes, over the limit of {limit}", limit=limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over {size} bytes, over the limit of {limit}", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


# ---- errors ------------------------------------------------------------------------------------

def _bad_request(request: Request, e: BadRequest) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(e, Unauthorized) else None
    return JSONResponse(e.to_json(), status_code=e.status_code, headers=headers)


_RECOMMEND_PARAMS = frozenset({"user_id", "k"})


def _unknown_params(request: Request) -> str | None:
    """FastAPI ignores a query parameter it does not know; this API refuses it (a typo'd ``k``
    would silently be the default otherwise)."""
    unknown = set(request.query_params) - _RECOMMEND_PARAMS
    return f"unknown query parameter(s): {', '.join(sorted(unknown))}" if unknown else None


def _invalid(request: Request, e: RequestValidationError, max_k: int, max_id: int) -> JSONResponse:
    """FastAPI's 422 as this API's 400, with the reasons the hand-written parser gave."""
    unknown = _unknown_params(request) if request.url.path == "/recommend" else None
    reasons = [unknown] if unknown else []
    for err in e.errors():
        field, kind, value = str(err["loc"][-1]), err["type"], err.get("input")
        if field == "user_id" and kind in ("missing", "string_too_short"):
            reasons.append("user_id is required, e.g. /recommend?user_id=42&k=10")
        elif field == "user_id" and kind == "string_too_long":
            reasons.append(f"user_id is longer than {max_id} characters")
        elif field == "k" and kind == "int_parsing":
            reasons.append(f"k: {value!r} is not an integer")
        elif field == "k" and kind in ("greater_than_equal", "less_than_equal"):
            reasons.append(f"k: {value} must be between 1 and {max_k}")
        else:
            reasons.append(f"{field}: {err['msg']}")
    return JSONResponse({"error": "; ".join(reasons)}, status_code=400)


def _http_error(request: Request, e: HTTPException) -> JSONResponse:
    route = request.url.path
    if e.status_code == 404:
        reason = f"no route {route}; try {', '.join(ROUTES)}"
    elif e.status_code == 405:
        reason = f"{request.method} is not allowed on {route}"
    else:
        reason = str(e.detail)
    return JSONResponse({"error": reason}, status_code=e.status_code, headers=e.headers)


class _Telemetry:
    """Pure ASGI middleware: latency and count per route; a JSON 503 for an internal failure,
    and for a plain-text 5xx (Serve answers a downstream BackPressureError so); it also strips
    a trailing slash, so ``/recommend/`` is ``/recommend``, and answers a plain recommend call
    itself when ``build_api`` hands it ``fast_recommend``."""

    def __init__(self, app, fast_recommend=None) -> None:
        self.app = app
        self.fast_recommend = fast_recommend  # build_api's plain recommend call, or None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        route = scope["path"].rstrip("/") or "/"
        scope = {**scope, "path": route}
        fast = route == "/recommend" and scope["method"] == "GET" and self.fast_recommend is not None
        app = self._plain_first if fast else self.app
        status, held, text = [0], [], []  # held: a non-JSON 5xx start, sent once its body is known

        async def send_json_errors(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if status[0] >= 500 and (b"content-type", b"application/json") not in message.get("headers", []):
                    held.append(message)
                    return
            elif held:
                text.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                reason = b"".join(text).decode("utf-8", "replace").strip() or "error"
                keep = [(k, v) for k, v in held[0].get("headers", []) if k.lower() not in _REPLACED]
                return await _send_error(send, status[0], f"temporarily unavailable: {reason}", keep)
            await send(message)

        try:
            await app(scope, receive, send_json_errors)
        except Exception as e:
            if status[0]:  # the answer has begun: nothing left to tell the client
                raise
            logger.exception("request failed")
            status[0] = 503
            await _send_error(send, 503, f"temporarily unavailable: {type(e).__name__}")
        finally:
            telemetry.observe("increc_request_latency_ms", (time.perf_counter() - started) * 1000, route=route)
            telemetry.inc("increc_requests_total", route=route, status=str(status[0] or 503))

    async def _plain_first(self, scope, receive, send) -> None:
        """A plain recommend call answered here; any other goes on to the FastAPI route."""
        if not await self.fast_recommend(scope, receive, send):
            await self.app(scope, receive, send)


_REPLACED = (b"content-type", b"content-length")


async def _send_error(send, status: int, reason: str, headers: list | None = None) -> None:
    body = json.dumps({"error": reason}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        *(headers or []), (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
