"""Every error increc_ray raises on purpose.

    IncrecError
    +-- ConfigError          a config key or value is wrong (names the key and the value)
    |   +-- SectionError     raised building one config section (increc_ray.config_errors)
    +-- BadRequest           a client request is malformed -> HTTP 4xx with a JSON reason
    |   +-- PayloadTooLarge  the body is over ingest.max_body_bytes -> 413
    |   +-- Unauthorized     a missing or wrong bearer token -> 401
    |   +-- NotFound         what the request names does not exist (e.g. a weight version) -> 404
    |   +-- Unavailable      nothing can answer it now (a back end is down, no fallback) -> 503
    +-- DataError            a file or batch cannot be read as events (whole-file quarantine)

Row-level problems are not exceptions: a bad row becomes a quarantined row
with a reason (see ``increc_ray.ingest.clean``), so one bad event never sinks a batch.
"""

from __future__ import annotations


class IncrecError(Exception):
    """Base class of the errors raised on purpose by increc_ray."""


class ConfigError(IncrecError, ValueError):
    """A configuration key or value is invalid."""


class BadRequest(IncrecError):
    """A client request is malformed; becomes an HTTP 4xx with a JSON reason."""

    status_code = 400

    def __init__(self, reason: str, **detail: object) -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail

    def to_json(self) -> dict:
        return {"error": self.reason, **self.detail}


class PayloadTooLarge(BadRequest):
    status_code = 413


class Unauthorized(BadRequest):
    status_code = 401


class NotFound(BadRequest):
    status_code = 404


class Unavailable(BadRequest):
    """Not the client's fault, but answered the same way: a status and a JSON reason."""

    status_code = 503


class DataError(IncrecError):
    """A file or batch cannot be read as events at all."""
