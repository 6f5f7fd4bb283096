"""The Ray Serve application: one ``serve deploy`` brings up the whole loop.

    HTTP --> Recommender (autoscaled; holds the model, hot-swaps weights)
               |  /events ----------> EventIngest (1 replica) --durable--> landing zone
               |                         |  background: Ray Data cleaning -> clean store
               |                         +--> UserHistory (read-your-writes, popularity)
               |  /recommend --------> UserHistory (recent items, seen items)
               +-- long-poll --------> ModelTrainer (1 replica): runs the Ray Train
                                         TorchTrainer and the WeightRegistry

Routes: ``POST /events``, ``GET /recommend?user_id=..&k=..``, ``GET /healthz``,
``GET /status``. Malformed requests get a 4xx with a JSON reason.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pyarrow as pa
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.requests import Request
from starlette.responses import JSONResponse

from increc_ray import telemetry
from increc_ray.config import Config
from increc_ray.errors import BadRequest, ConfigError, PayloadTooLarge
from increc_ray.history import UserHistoryIndex
from increc_ray.ingest import parse_body
from increc_ray.landing import CleanStore
from increc_ray.pipeline import EventPipeline
from increc_ray.publish import WeightRegistry
from increc_ray.train import TrainerRunner

logger = logging.getLogger("increc_ray.serve")

HISTORY_COLUMNS = ["user_id", "item_id", "timestamp", "label", "weight"]


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=1000)
class UserHistory:
    """Users' recent items and the popularity fallback, shared by all serving replicas."""

    def __init__(self, config: dict) -> None:
        cfg = Config.from_dict(config)
        self.index = UserHistoryIndex(cfg.serving.history_len, cfg.serving.popularity_half_life_s)
        existing = CleanStore(cfg.clean_dir).read_all(columns=HISTORY_COLUMNS)
        if existing is not None:
            self.index.append(existing)

    def append(self, events: pa.Table) -> int:
        return self.index.append(events)

    def context(self, user_id: str) -> tuple[list[str], list[str]]:
        return self.index.get(user_id)

    def popular(self, k: int, exclude: list[str]) -> list[tuple[str, float]]:
        return self.index.popular(k, exclude)

    def stats(self) -> dict:
        return self.index.stats()


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64)
class EventIngest:
    """Ingests HTTP events durably and keeps cleaning the landing zone with Ray Data."""

    def __init__(self, config: dict, history: DeploymentHandle) -> None:
        from ray.data import DataContext

        self.cfg = Config.from_dict(config)
        self.pipeline = EventPipeline(self.cfg)
        self.history = history
        self.last_error: str | None = None
        self.last_batch: dict = {}
        DataContext.get_current().enable_progress_bars = False
        self._stop = threading.Event()
        threading.Thread(target=self._clean_forever, name="increc-cleaner", daemon=True).start()

    async def ingest(self, records: list) -> dict:
        report, clean = await asyncio.to_thread(self.pipeline.ingest, records)
        if clean.num_rows:
            await self.history.append.remote(clean)  # before answering: read-your-writes
        return report.to_json()

    def _clean_forever(self) -> None:
        while not self._stop.is_set():
            try:
                summary, fresh = self.pipeline.process_pending()
                if fresh is not None and fresh.num_rows:
                    self.history.append.remote(fresh).result()
                if summary["files"]:
                    self.last_batch = summary
                    continue  # more may be waiting
            except Exception as e:  # keep the loop alive; the files stay in the landing zone
                self.last_error = f"{type(e).__name__}: {e}"
                logger.exception("cleaning pass failed")
            self._stop.wait(self.cfg.ingest.poll_interval_s)

    def status(self) -> dict:
        return {**self.pipeline.status(), "last_batch": self.last_batch, "last_error": self.last_error}

    def __del__(self) -> None:
        self._stop.set()


# graceful_shutdown_timeout_s: time for the trainer to checkpoint and release its worker.
@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000,
                  graceful_shutdown_timeout_s=60)
class ModelTrainer:
    """Runs the incremental Ray Train trainer and holds the published weight versions."""

    def __init__(self, config: dict) -> None:
        self.cfg = Config.from_dict(config)
        self.registry = WeightRegistry()
        self._progress: dict = {}
        ctx = serve.get_replica_context()
        self.runner = TrainerRunner(self.cfg, ctx.app_name, ctx.deployment).start()

    async def publish(self, weights: dict) -> int:
        return await self.registry.publish(weights)

    async def wait_newer(self, after: int, timeout_s: float):
        return await self.registry.wait_newer(after, timeout_s)

    def progress(self, progress: dict) -> None:
        """The trainer's read position, sent after every slice it consumes."""
        self._progress = progress

    def __del__(self) -> None:
        # Serve calls this on shutdown (redeploy, scale-down): stop cleanly so the next
        # trainer resumes from a fresh checkpoint and finds its CPU free.
        if not self.runner.stop(timeout_s=45):
            logger.warning("trainer did not stop within 45 s; its resources are released when its actors die")

    def status(self) -> dict:
        latest = self.registry.latest
        store = CleanStore(self.cfg.clean_dir)
        consumed = self._progress.get("offset", {}).get("seq", -1)
        return {"model_version": self.registry.version,
                "last_update_time": latest.published_at if latest else None,
                "last_update": latest.metrics if latest else None,
                "clean_parts_behind": max(0, store.last_seq() - consumed),
                "progress": self._progress,
                "trainer": self.runner.status()}


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

        from increc_ray.model import Scorer

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


def app_builder(args: dict):
    """Serve application builder: ``args`` is ``{"config": {...}}`` or ``{"config_file": path}``."""
    args = dict(args or {})
    if "config_file" in args:
        cfg = Config.from_yaml(args.pop("config_file"))
    else:
        cfg = Config.from_dict(args.pop("config", {}))
    if args:
        raise ConfigError(f"unknown application args: {', '.join(sorted(args))} (use 'config' or 'config_file')")
    config = cfg.to_dict()
    history = UserHistory.bind(config)
    ingest = EventIngest.bind(config, history)
    trainer = ModelTrainer.bind(config)
    return Recommender.bind(config, ingest, history, trainer)
