"""Custom metrics shown in the Ray dashboard (and exported to Prometheus).

All metric names start with ``increc_``. Metrics are created lazily inside
the process that records them (no import-time side effects); each stage owns
its own subset:

ingest / cleaning  increc_events_accepted_total, increc_events_duplicate_total,
                   increc_events_quarantined_total, increc_events_cleaned_total,
                   increc_events_refused_total{rule=rate|cardinality|retention} (also quarantined),
                   increc_clean_pass_failures_total, increc_pruned_events_total,
                   increc_ingest_lag_seconds (landing -> clean store),
                   increc_ledger_events{kind=received|applied|quarantined|duplicates|pending|applied_twice}
trainer            increc_events_applied_total, increc_model_version (the live one),
                   increc_gate_decisions_total{outcome=promoted|rejected|demoted},
                   increc_update_loss, increc_update_seconds, increc_train_lag_seconds
                   (event cleaned -> applied), increc_online_hr10 (test-then-train
                   HR@10 of the live model on the events it is about to learn),
                   increc_coalesced_versions_total (versions left out while catching up)
serving            increc_request_latency_ms, increc_requests_total,
                   increc_served_model_version, increc_model_freshness_seconds,
                   increc_degraded_answers_total
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Callable

# Ray drops a gauge that has not been set for ~30 s from its export, so a quiet trainer
# would vanish from the dashboard. Gauges are therefore re-sent every REFRESH_S seconds
# by one daemon thread per process (started on the first gauge, never at import).
REFRESH_S = 10.0
_gauges: dict[tuple[str, tuple], Callable[[], float]] = {}
_refresher: threading.Thread | None = None
_lock = threading.Lock()

_LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]

_DEFS = {
    "increc_events_accepted_total": ("counter", "Events accepted by ingest (after validation and de-duplication).", ("source",)),
    "increc_events_duplicate_total": ("counter", "Events dropped as duplicates of earlier events.", ("source",)),
    "increc_events_quarantined_total": ("counter", "Events rejected into the quarantine table.", ("source",)),
    "increc_events_refused_total": ("counter", "Clean, new events quarantined by a stateful rule (ingest/rate.py).", ("rule",)),
    "increc_events_cleaned_total": ("counter", "Events written to the clean store.", ()),
    "increc_clean_pass_failures_total": ("counter", "Cleaning passes that failed before their clean part was written (retried).", ()),
    "increc_pruned_events_total": ("counter", "Events whose files retention pruned, their counts folded into the ledger (ingest.retention_s).", ()),
    "increc_ledger_events": ("gauge", "The event ledger: received = applied + quarantined + duplicates + pending; applied_twice apart (goal 0).", ("kind",)),
    "increc_ingest_lag_seconds": ("gauge", "Seconds from landing to clean store, newest batch.", ()),
    "increc_events_applied_total": ("counter", "Clean events applied to the model by the trainer.", ()),
    "increc_model_version": ("gauge", "Latest weight version published by the trainer.", ()),
    "increc_gate_decisions_total": ("counter", "Candidate weight versions judged by the champion/challenger gate (demoted: the live version lost to popularity and went).", ("outcome",)),
    "increc_update_loss": ("gauge", "Loss of the latest incremental update.", ()),
    "increc_update_seconds": ("gauge", "Wall time of the latest incremental update.", ()),
    "increc_train_lag_seconds": ("gauge", "Seconds from clean store to applied, newest update.", ()),
    "increc_coalesced_versions_total": ("counter", "Updates whose version was left out while the trainer caught up (trainer.catch_up_publish_s).", ()),
    "increc_full_passes_total": ("counter", "Full passes (bootstrap or consolidation) the trainer finished.", ("reason",)),
    "increc_trainer_phase": ("gauge", "1 for the trainer's current phase (bootstrapping, catching_up, streaming).", ("phase",)),
    "increc_online_hr10": ("gauge", "Test-then-train HR@10 of the live model on events it is about to learn.", ()),
    "increc_request_latency_ms": ("histogram", "Latency of HTTP requests handled by a replica.", ("route",)),
    "increc_requests_total": ("counter", "HTTP requests by route and status code.", ("route", "status")),
    "increc_degraded_answers_total": ("counter", "Recommend answers while the user-history replica was unreachable (from the replica's last copy of the history, or the cached popular list).", ()),
    "increc_served_model_version": ("gauge", "Weight version a serving replica is answering with.", ()),
    "increc_model_freshness_seconds": ("gauge", "Seconds since the served weights were published.", ()),
}


@lru_cache(maxsize=None)
def metric(name: str):
    """The process-wide metric object called ``name`` (created on first use)."""
    from ray.util import metrics

    kind, description, tags = _DEFS[name]
    if kind == "counter":
        return metrics.Counter(name, description=description, tag_keys=tags)
    if kind == "gauge":
        return metrics.Gauge(name, description=description, tag_keys=tags)
    return metrics.Histogram(name, description=description, boundaries=_LATENCY_BOUNDARIES_MS, tag_keys=tags)


def inc(name: str, value: float = 1.0, **tags: str) -> None:
    if value:
        metric(name).inc(value, tags=tags or None)


def set_gauge(name: str, value: float, **tags: str) -> None:
    """Set a gauge now and keep re-sending this value until it changes."""
    watch(name, lambda: value, **tags)


def watch(name: str, read: Callable[[], float], **tags: str) -> None:
    """Keep gauge ``name`` at ``read()``, sampled now and every REFRESH_S seconds."""
    global _refresher
    metric(name).set(read(), tags=tags or None)
    with _lock:
        _gauges[(name, tuple(sorted(tags.items())))] = read
        if _refresher is None:
            _refresher = threading.Thread(target=_refresh_forever, name="increc-gauges", daemon=True)
            _refresher.start()


def _refresh_forever() -> None:
    stop = threading.Event()
    while not stop.wait(REFRESH_S):
        with _lock:
            items = list(_gauges.items())
        for (name, tags), read in items:
            try:
                metric(name).set(read(), tags=dict(tags) or None)
            except Exception:  # a metric must never take its process down
                pass


def observe(name: str, value: float, **tags: str) -> None:
    metric(name).observe(value, tags=tags or None)
