"""The HTTP ingress: answers recommend calls with the newest weights it has swapped in.

Routes: ``POST /events``, ``GET /recommend?user_id=..&k=..``, ``GET /healthz``,
``GET /status``. Malformed requests get a 4xx with a JSON reason.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from increc_ray import telemetry
from increc_ray.config import Config
from increc_ray.errors import BadRequest, PayloadTooLarge
from increc_ray.ingest.body import parse_body

logger = logging.getLogger("increc_ray.serve")


def _json(status: int, body: dict) -> JSONResponse:
    return JSONResponse(body, status_code=status)


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
class Recommender:
    """HTTP ingress; answers recommend calls with the newest weights it has swapped in."""

    def __init__(self, config: dict, ingest: DeploymentHandle, history: DeploymentHandle,
                 trainer: DeploymentHandle) -> None:
        import torch

        torch.set_num_threads(1)  # many small requests: threads per request, not per matmul
        self.cfg = Config.from_dict(config)
        self.ingest, self.history, self.trainer = ingest, history, trainer
        self._scorer = None  # replaced whole, never mutated: a request uses one consistent version
        self._published_at: float | None = None
        self.swaps = 0
        self._stop = threading.Event()
        threading.Thread(target=self._follow_weights, name="increc-weights", daemon=True).start()

    # ---- weights -----------------------------------------------------------------------------

    def _follow_weights(self) -> None:
        import ray

        from increc_ray.serve.scorer import Scorer

        while not self._stop.is_set():
            try:
                current = self._scorer.version if self._scorer else 0
                got = self.trainer.wait_newer.remote(current, self.cfg.serving.weight_poll_timeout_s).result()
                if got is None:
                    continue
                version, (ref,) = got
                weights = ray.get(ref)
                scorer = Scorer.from_weights(weights)
                self._scorer = scorer  # atomic swap: in-flight requests keep the old object
                self._published_at = float(weights.get("created_at") or time.time())
                self.swaps += 1
                telemetry.set_gauge("increc_served_model_version", version)
                if self.swaps == 1:
                    telemetry.watch("increc_model_freshness_seconds", lambda: time.time() - self._published_at)
            except Exception:
                logger.exception("weight follow failed; retrying")
                self._stop.wait(1.0)

    # ---- HTTP ----------------------------------------------------------------------------------

    async def __call__(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        route = request.url.path.rstrip("/") or "/"
        handler = {("GET", "/recommend"): self._recommend, ("POST", "/events"): self._events,
                   ("GET", "/healthz"): self._healthz, ("GET", "/status"): self._status}.get((request.method, route))
        try:
            if handler is None:
                known = {"/recommend", "/events", "/healthz", "/status"}
                if route in known:
                    raise _MethodNotAllowed(f"{request.method} is not allowed on {route}")
                raise _NotFound(f"no route {route}; try GET /recommend, POST /events, GET /status, GET /healthz")
            response = await handler(request)
        except BadRequest as e:
            response = _json(e.status_code, e.to_json())
        except Exception as e:
            logger.exception("request failed")
            response = _json(503, {"error": f"temporarily unavailable: {type(e).__name__}"})
        telemetry.observe("increc_request_latency_ms", (time.perf_counter() - started) * 1000, route=route)
        telemetry.inc("increc_requests_total", route=route, status=str(response.status_code))
        return response

    async def _healthz(self, request: Request) -> JSONResponse:
        return _json(200, {"status": "ok", "model_version": self._version()})

    def _version(self) -> int:
        scorer = self._scorer
        return scorer.version if scorer else 0

    async def _events(self, request: Request) -> JSONResponse:
        limit = self.cfg.ingest.max_body_bytes
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:  # refuse before reading it all
            raise PayloadTooLarge(f"body is {declared} bytes, over the limit of {limit}", limit=limit)
        body = await request.body()
        records = parse_body(body, self.cfg.ingest.max_events_per_request, self.cfg.ingest.max_body_bytes)
        return _json(200, await self.ingest.ingest.remote(records))

    async def _recommend(self, request: Request) -> JSONResponse:
        user_id, k = self._parse_recommend(request)
        history, seen = await self.history.context.remote(user_id)
        scorer = self._scorer
        items: list[tuple[str, float]] = []
        if scorer is not None and history:
            items = await asyncio.to_thread(scorer.recommend, history, k, seen)
        source = "model" if items else "fallback"
        if len(items) < k:  # top up (cold user, or few known items) with popular unseen items
            have = {i for i, _ in items}
            extra = await self.history.popular.remote(k - len(items), [*seen, *have])
            items += extra
        return _json(200, {"user_id": user_id, "k": k, "source": source,
                           "model_version": scorer.version if scorer else 0,
                           "items": [{"item_id": i, "score": round(float(s), 6)} for i, s in items]})

    def _parse_recommend(self, request: Request) -> tuple[str, int]:
        params = request.query_params
        unknown = set(params) - {"user_id", "k"}
        if unknown:
            raise BadRequest(f"unknown query parameter(s): {', '.join(sorted(unknown))}")
        user_id = (params.get("user_id") or "").strip()
        if not user_id:
            raise BadRequest("user_id is required, e.g. /recommend?user_id=42&k=10")
        if len(user_id) > self.cfg.cleaning.max_id_length:
            raise BadRequest(f"user_id is longer than {self.cfg.cleaning.max_id_length} characters")
        raw_k = params.get("k", str(self.cfg.serving.default_k))
        try:
            k = int(raw_k)
        except ValueError:
            raise BadRequest(f"k: {raw_k!r} is not an integer") from None
        if not 1 <= k <= self.cfg.serving.max_k:
            raise BadRequest(f"k: {k} must be between 1 and {self.cfg.serving.max_k}")
        return user_id, k

    async def _status(self, request: Request) -> JSONResponse:
        trainer, ingest, history = await asyncio.gather(
            self.trainer.status.remote(), self.ingest.status.remote(), self.history.stats.remote())
        return _json(200, {"model_version": trainer["model_version"], "served_version": self._version(),
                           "last_update_time": trainer["last_update_time"],
                           "lag": {"pending_files": ingest["pending_files"],
                                   "clean_parts_behind": trainer["clean_parts_behind"],
                                   "seconds_since_update": (time.time() - trainer["last_update_time"])
                                   if trainer["last_update_time"] else None},
                           "counts": {k: ingest[k] for k in ("accepted", "duplicates", "quarantined", "cleaned")},
                           "trainer": trainer, "ingest": ingest, "history": history,
                           "replica": {"swaps": self.swaps}})

    def __del__(self) -> None:
        self._stop.set()


class _NotFound(BadRequest):
    status_code = 404


class _MethodNotAllowed(BadRequest):
    status_code = 405
