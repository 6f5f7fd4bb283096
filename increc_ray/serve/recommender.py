"""The HTTP ingress: answers recommend calls with the newest weights it has swapped in.

Routes: ``POST /events``, ``GET /recommend?user_id=..&k=..``, ``GET /healthz``,
``GET /status``, ``GET /docs``; the FastAPI app that routes them, its models and its
error answers are in ``increc_ray.serve.api``. This module is the Serve shell: it holds
the handles and the weights and answers what the routes ask.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time

from ray import serve
from ray.serve.handle import DeploymentHandle

from increc_ray import telemetry
from increc_ray.config import Config
from increc_ray.serve.api import build_api, resolve_token

logger = logging.getLogger("increc_ray.serve")


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
@serve.ingress()  # late-bound: the app comes from __serve_build_asgi_app__, once the config is known
class Recommender:
    """HTTP ingress; answers recommend calls with the newest weights it has swapped in."""

    def __init__(self, config: dict, ingest: DeploymentHandle, history: DeploymentHandle,
                 trainer: DeploymentHandle) -> None:
        import torch

        torch.set_num_threads(1)  # many small requests: threads per request, not per matmul
        self.cfg = Config.from_dict(config)
        self._token = resolve_token(self.cfg.auth)  # no token while one is required: the replica fails to start
        self.ingest, self.history, self.trainer = ingest, history, trainer
        self._scorer = None  # replaced whole, never mutated: a request uses one consistent version
        self._followed = 0  # the newest published version swapped in (a fallback marker leaves no scorer)
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
                got = self.trainer.wait_newer.remote(self._followed, self.cfg.serving.weight_poll_timeout_s).result()
                if got is None:
                    continue
                version, (ref,) = got
                weights = ray.get(ref)
                scorer = Scorer.from_published(weights)  # None: popularity answers (the gate demoted the live one)
                self._scorer, self._followed = scorer, version  # atomic swap: in-flight requests keep the old one
                self._published_at = float(weights.get("created_at") or time.time())
                self.swaps += 1
                telemetry.set_gauge("increc_served_model_version", version)
                if self.swaps == 1:
                    telemetry.watch("increc_model_freshness_seconds", lambda: time.time() - self._published_at)
            except Exception:
                logger.exception("weight follow failed; retrying")
                self._stop.wait(1.0)

    # ---- HTTP (routes, models and errors: increc_ray.serve.api) -------------------------------

    def __serve_build_asgi_app__(self):
        """Serve calls this after ``__init__``: the API is built with this replica's config."""
        return build_api(self, self.cfg, self._token)

    def _health(self) -> dict:
        return {"status": "ok", "model_version": self._version()}

    def _version(self) -> int:
        """The newest published version this replica has swapped in (a fallback marker's too)."""
        return self._followed

    async def _ingest(self, records: list) -> dict:
        return await self.ingest.ingest.remote(records)

    async def _recommend(self, user_id: str, k: int) -> dict:
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
        return {"user_id": user_id, "k": k, "source": source, "model_version": scorer.version if scorer else 0,
                "items": [{"item_id": i, "score": round(float(s), 6)} for i, s in items]}

    async def _status(self) -> dict:
        trainer, ingest, history = await asyncio.gather(
            self.trainer.status.remote(), self.ingest.status.remote(), self.history.stats.remote())
        return {"model_version": trainer["model_version"], "served_version": self._version(),
                "last_update_time": trainer["last_update_time"],
                "phase": (trainer.get("progress") or {}).get("phase", "starting"),
                "lag": {"pending_files": ingest["pending_files"],
                        "clean_parts_behind": trainer["clean_parts_behind"],
                        "seconds_since_update": (time.time() - trainer["last_update_time"])
                        if trainer["last_update_time"] else None},
                "counts": {k: ingest[k] for k in ("accepted", "duplicates", "quarantined", "cleaned")},
                "trainer": trainer, "ingest": ingest, "history": history,
                "replica": {"swaps": self.swaps, "pid": os.getpid()}}

    def __del__(self) -> None:
        self._stop.set()

