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
import pickle
import threading
import time
import uuid

from ray import serve
from ray.serve.handle import DeploymentHandle

from increc_ray import telemetry
from increc_ray.config import Config
from increc_ray.errors import Unavailable
from increc_ray.serve import gcwatch
from increc_ray.serve.api import build_api, resolve_token

logger = logging.getLogger("increc_ray.serve")
# how long a replica waits for the registry to quantize a new base before building the table itself:
# the registry makes it once for every replica, at a replica's own cost (1.3-2.8 s at 1M items here)
REGISTRY_INT8_WAIT_S = 30.0


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=100)
@serve.ingress()  # late-bound: the app comes from __serve_build_asgi_app__, once the config is known
class Recommender:
    """HTTP ingress; answers recommend calls with the newest weights it has swapped in."""

    async def __init__(self, config: dict, ingest: DeploymentHandle, history: DeploymentHandle,
                       trainer: DeploymentHandle) -> None:
        import torch

        torch.set_num_threads(1)  # many small requests: threads per request, not per matmul
        self._gc = gcwatch.watch()  # this process's collections, timed from here on (/status replica.gc)
        self.cfg = Config.from_dict(config)
        self._token = resolve_token(self.cfg.auth)  # no token while one is required: the replica fails to start
        self.ingest, self.history, self.trainer = ingest, history, trainer
        self._scorer = None  # replaced whole, never mutated: a request uses one consistent version
        self._followed = 0  # the newest published version swapped in (a fallback marker leaves no scorer)
        self._published_at: float | None = None
        self.swaps = 0
        # The fallback while the user-history replica is down: its popular list, refreshed by a
        # thread; and whether the last call to that replica was answered.
        self._popular: list[tuple[str, float]] | None = None
        self._history_up: bool | None = None  # None: not contacted yet
        self.degraded_answers = 0
        # This replica's copy of the user history (increc_ray.serve.sync): trusted while the poll
        # whose answer it applied last was sent less than stale_s ago; the remote hop otherwise.
        self._copy = None
        self._copy_lock = threading.Lock()  # the follow thread writes it, requests read it
        self._copy_polled_at = -float("inf")
        self._stale_s = self.cfg.serving.history_lease_s * 2 / 3
        self.local_answers = self.remote_answers = self.stale_copy_answers = 0
        self.batches = self.batched = 0  # forward passes and the model answers they gave (@serve.batch)
        serving = self.cfg.serving
        self._index = None  # the HNSW graph (serving.index: hnsw) or int8 table (int8) that follows the versions
        if serving.index == "int8":
            from increc_ray.serve.quantized import Int8Index, Int8Settings

            self._index = Int8Index(Int8Settings.of(serving), shared=self._registry_int8)
        elif serving.index == "hnsw":
            from increc_ray.serve.index import IndexSettings, ItemIndex

            self._index = ItemIndex(IndexSettings(
                min_items=serving.index_min_items, candidates=serving.index_candidates, ef=serving.index_ef,
                connectivity=serving.index_connectivity, refresh_fraction=serving.index_refresh_fraction,
                threads=serving.index_threads, tolerance=serving.index_tolerance))
        self._score_batch.set_max_batch_size(serving.max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(serving.batch_wait_s)
        try:
            self.replica_tag = serve.get_replica_context().replica_id.unique_id
        except Exception:  # constructed outside Serve (unit tests)
            self.replica_tag = f"pid-{os.getpid()}"
        self._stop = threading.Event()
        # Set once the first weight poll and the first history poll have been answered (or
        # failed): a replica takes requests only then, so one that autoscaling just added
        # answers with the live version and its own copy from its first request, not popularity.
        self._weights_tried, self._copy_tried = threading.Event(), threading.Event()
        # and once it holds something to answer a user the model cannot rank (or a request the
        # history replica leaves unanswered) with: a history copy or the popular list. Without
        # either, such a request was a 503 ("no popular list is cached yet"): a replica added
        # under load, while the history replica answered slowly, refused requests.
        self._can_fall_back = threading.Event()
        threading.Thread(target=self._follow_weights, name="increc-weights", daemon=True).start()
        threading.Thread(target=self._refresh_fallback, name="increc-fallback", daemon=True).start()
        if serving.local_history:
            threading.Thread(target=self._follow_history, name="increc-history", daemon=True).start()
        else:
            self._copy_tried.set()
        # Serve routes to a replica once __init__ returns. Waiting in a thread leaves this event
        # loop free: the handles' router may run on it (RAY_SERVE_THROUGHPUT_OPTIMIZED).
        if not await asyncio.to_thread(self._wait_ready, serving.ready_timeout_s):
            logger.warning("replica starting before its first weights and history copy arrived "
                           "(serving.ready_timeout_s %.1f s)", serving.ready_timeout_s)

    def _wait_ready(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        return all(ready.wait(max(0.0, deadline - time.monotonic()))
                   for ready in (self._weights_tried, self._copy_tried, self._can_fall_back))

    # ---- weights -----------------------------------------------------------------------------

    def _registry_int8(self, key: object):
        """The registry's quantized rows of the base ``key`` names (``serve.registry.int8_rows``),
        or None (a whole version, none made there, or not in time): the index builds its own."""
        import ray

        from increc_ray.serve.quantized import Int8Rows

        if not (isinstance(key, tuple) and key[0] == "base"):
            return None
        try:
            got = self.trainer.int8_rows.remote(key[1], REGISTRY_INT8_WAIT_S).result()
            return None if got is None else Int8Rows.from_arrays(ray.get(got[0]))
        except Exception:
            logger.exception("the registry's int8 rows of base %s could not be read; building them here", key[1])
            return None

    def _follow_weights(self) -> None:
        import ray

        from increc_ray.learn import published
        from increc_ray.serve.registry import resolve
        from increc_ray.serve.scorer import Scorer

        while not self._stop.is_set():
            # the first poll asks only for what is live now: nothing published yet need not hold
            # the replica's start for a whole long-poll
            timeout_s = self.cfg.serving.weight_poll_timeout_s if self._weights_tried.is_set() else 0.5
            try:
                got = self.trainer.wait_newer.remote(self._followed, timeout_s).result()
                if got is None:
                    continue
                version, (ref,) = got
                weights = ray.get(ref)
                # an overlay's base is fetched by reference; its vocabulary only when the one this
                # replica holds does not extend to it
                weights = resolve(weights, vocab=not published.extends(weights, getattr(self._scorer, "vocab_chain", None)))
                # None: popularity answers (the gate demoted the live one); the scorer it replaces
                # lends its vocabulary when the new one only extends it
                scorer = Scorer.from_published(weights, self._index, self._scorer)
                self._scorer, self._followed = scorer, version  # atomic swap: in-flight requests keep the old one
                self._published_at = float(weights.get("created_at") or time.time())
                self.swaps += 1
                telemetry.set_gauge("increc_served_model_version", version)
                if self.swaps == 1:
                    telemetry.watch("increc_model_freshness_seconds", lambda: time.time() - self._published_at)
            except Exception:
                logger.exception("weight follow failed; retrying")
                self._stop.wait(1.0)
            finally:  # answered, empty or failed: the replica's start need not wait for it any longer
                self._weights_tried.set()

    # ---- the user-history replica, this replica's copy of it, and the fallback ------------------

    def _follow_history(self) -> None:
        """Keep ``_copy`` in step with the history replica's change log (``UserHistory.follow``)."""
        sub, epoch, seq = uuid.uuid4().hex, None, 0
        poll_s = self.cfg.serving.history_lease_s / 3
        while not self._stop.is_set():
            sent = time.monotonic()
            try:
                got = self.history.follow.remote(sub, epoch, seq, poll_s).result(
                    timeout_s=poll_s + self.cfg.serving.history_timeout_s)
            except Exception as e:  # down or restarting: the copy goes stale, requests ask remotely
                logger.debug("history follow failed: %s", e)
                self._copy_tried.set()
                self._stop.wait(0.2)
                continue
            if "snapshot" in got:
                copy = pickle.loads(got["snapshot"])
                for rows in got["rows"]:  # logged since the snapshot was taken
                    copy.append(rows)
                with self._copy_lock:
                    self._copy = copy
                self._can_fall_back.set()
            elif got["rows"]:
                with self._copy_lock:
                    for rows in got["rows"]:
                        self._copy.append(rows)
            epoch, seq = got["epoch"], got["seq"]
            self._copy_polled_at = sent
            self._copy_tried.set()

    def _local_copy(self):
        """The copy of the user history, while it may be trusted (see ``increc_ray.serve.sync``)."""
        if self._copy is not None and time.monotonic() - self._copy_polled_at < self._stale_s:
            return self._copy
        return None

    def _refresh_fallback(self) -> None:
        serving = self.cfg.serving
        while not self._stop.is_set():
            try:
                self._popular = self.history.popular.remote(serving.max_k, []).result(
                    timeout_s=serving.history_timeout_s)
                self._can_fall_back.set()
                if self._history_up is False:
                    logger.warning("user-history replica reachable again")
                self._history_up = True
            except Exception as e:
                self._history_failed(e)
            # while the replica is down this thread is what notices it is back: probe every second
            self._stop.wait(serving.fallback_refresh_s if self._history_up else 1.0)

    def _history_failed(self, e: BaseException) -> None:
        if self._history_up is not False:
            logger.warning("user-history replica unreachable (%s): answering from the cached popular list",
                           type(e).__name__)
        self._history_up = False

    async def _ask_history(self, call):
        """``await call()`` within ``serving.history_timeout_s``; None when the replica does not
        answer, at once while it is known to be down (the fallback thread probes it meanwhile)."""
        if self._history_up is False:
            return None
        try:
            got = await asyncio.wait_for(call(), self.cfg.serving.history_timeout_s)
        except Exception as e:  # down, restarting, or too slow: the caller answers degraded
            self._history_failed(e)
            return None
        self._history_up = True
        return got

    # ---- HTTP (routes, models and errors: increc_ray.serve.api) -------------------------------

    def __serve_build_asgi_app__(self):
        """Serve calls this after ``__init__``: the API is built with this replica's config."""
        return build_api(self, self.cfg, self._token)

    def _health(self) -> dict:
        """Ready ("ok") when the user-history replica answers; "degraded" when it does not but the
        cached popular list (or the model) can still answer; not ready (None: a 503) otherwise."""
        if self._history_up:
            state = "ok"
        elif self._popular or self._scorer is not None:
            state = "degraded"
        else:
            return None
        return {"status": state, "model_version": self._version(), "history_reachable": bool(self._history_up)}

    def _version(self) -> int:
        """The newest published version this replica has swapped in (a fallback marker's too)."""
        return self._followed

    async def _ingest(self, records: list) -> dict:
        return await self.ingest.ingest.remote(records)

    async def _recommend(self, user_id: str, k: int) -> dict:
        local, context, degraded = self._local_copy(), None, False
        if local is None:
            context = await self._ask_history(lambda: self.history.context.remote(user_id))
            self.remote_answers += 1
            if context is None and self._copy is not None:
                # the history replica did not answer in time: this replica's copy as its last poll
                # left it (the user's newest events may be missing), so the model still answers
                local, degraded = self._copy, True
                self.stale_copy_answers += 1
        else:
            self.local_answers += 1
        if local is not None and context is None:
            with self._copy_lock:
                context = local.get(user_id)
        degraded = degraded or context is None  # the user's history is unknown: popular items only
        history, seen = context or ([], [])
        scorer = self._scorer
        items: list[tuple[str, float]] = []
        if scorer is not None and history:
            items = await self._score_batch((scorer, history, k, seen))
        source = "model" if items else "fallback"
        if len(items) < k:  # top up (cold user, or few known items) with popular unseen items
            exclude = {*seen, *(i for i, _ in items)}
            if local is not None:
                with self._copy_lock:
                    extra = local.popular(k - len(items), exclude)
            else:
                extra = None if degraded else await self._ask_history(
                    lambda: self.history.popular.remote(k - len(items), list(exclude)))
            if extra is None:
                if self._popular is None:
                    raise Unavailable("the user-history replica is unreachable and no popular list is cached yet")
                degraded = True
                extra = [(i, s) for i, s in self._popular if i not in exclude][: k - len(items)]
            items += extra
        if degraded:
            self.degraded_answers += 1
            telemetry.inc("increc_degraded_answers_total", 1)
        # the version answering: a fallback marker's number too (the gate demoted the model); 0
        # only while nothing was ever published
        return {"user_id": user_id, "k": k, "source": source, "model_version": scorer.version if scorer else self._followed,
                "degraded": degraded, "items": [{"item_id": i, "score": round(float(s), 6)} for i, s in items]}

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)  # both set from the config in __init__
    async def _score_batch(self, requests: list[tuple]) -> list[list[tuple[str, float]]]:
        """Concurrent calls' (scorer, history, k, seen), scored one forward pass per scorer (a swap
        mid-batch leaves two)."""
        self.batches += 1
        self.batched += len(requests)

        def run() -> list[list[tuple[str, float]]]:
            out: list = [None] * len(requests)
            by_scorer: dict[int, list[int]] = {}
            for i, (scorer, *_rest) in enumerate(requests):
                by_scorer.setdefault(id(scorer), []).append(i)
            for rows in by_scorer.values():
                scorer = requests[rows[0]][0]
                kk = max(requests[i][2] for i in rows)
                got = scorer.recommend_batch([requests[i][1] for i in rows], kk, [requests[i][3] for i in rows])
                for i, items in zip(rows, got):
                    out[i] = items[: requests[i][2]]
            return out

        # Inline on the event loop, not in a thread: at serving sizes a batch is a few ms of
        # torch, and the hop to a worker thread (submit, wake, hand the GIL back and forth) cost
        # more than it let overlap: 239 against 151 req/s in one run (bench/serve_load.py profile)
        return run()

    async def _rollback(self, version: int) -> dict:
        return await self.trainer.rollback.remote(version)

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
                "ledger": ingest["ledger"],
                "trainer": trainer, "ingest": ingest, "history": history,
                "replica": {"swaps": self.swaps, "pid": os.getpid(), "tag": self.replica_tag,
                            "degraded_answers": self.degraded_answers, "history_reachable": bool(self._history_up),
                            "local_answers": self.local_answers, "remote_answers": self.remote_answers,
                            "stale_copy_answers": self.stale_copy_answers,
                            "batches": self.batches, "batched_requests": self.batched,
                            "history_copy": self._local_copy() is not None,
                            "index": self._index_status(), "gc": self._gc.stats()}}

    def _index_status(self) -> dict | None:
        """The HNSW index's (``serving.index: hnsw``) or int8 table's (``int8``) state, and whether
        the live version answers from it."""
        if self._index is None:
            return None
        scorer = self._scorer
        if self.cfg.serving.index == "int8":
            return {**self._index.stats(), "answering": scorer is not None and scorer.first_pass is not None}
        return {**self._index.stats(), "answering": scorer is not None and scorer.view is not None,
                "fresh_rows_live": len(scorer.view.fresh) if scorer is not None and scorer.view is not None else None}

    def __del__(self) -> None:
        self._stop.set()

