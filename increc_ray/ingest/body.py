"""HTTP ingest: turn a ``POST /events`` body into a list of event records.

Accepted bodies: a JSON array of event objects, a single JSON object, or
NDJSON (one object per line). Anything else is a ``BadRequest`` with a reason,
which the HTTP layer answers as a 4xx JSON error. Validation of each event is
not done here: it is the cleaning stage's job (``increc_ray.ingest.clean``).

>>> parse_body(b'[{"user_id": 1}]', max_events=10)
[{'user_id': 1}]
>>> parse_body(b'{"user_id": 1}\\n{"user_id": 2}\\n', max_events=10)
[{'user_id': 1}, {'user_id': 2}]
>>> parse_body(b'', max_events=10)
Traceback (most recent call last):
...
increc_ray.errors.BadRequest: empty body: send a JSON array of events or NDJSON
"""

from __future__ import annotations

import json

from increc_ray.errors import BadRequest, PayloadTooLarge


def parse_body(body: bytes, max_events: int, max_bytes: int | None = None) -> list:
    """Decode a JSON array, a JSON object or NDJSON into a list of records."""
    if max_bytes is not None and len(body) > max_bytes:
        raise PayloadTooLarge(f"body is {len(body)} bytes, over the limit of {max_bytes}", limit=max_bytes)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadRequest(f"body is not UTF-8: {e}") from None
    text = text.strip()
    if not text:
        raise BadRequest("empty body: send a JSON array of events or NDJSON")
    try:
        doc = json.loads(text)
        records = doc if isinstance(doc, list) else [doc]
    except json.JSONDecodeError as whole_err:
        records = _parse_ndjson(text, whole_err)
    except RecursionError:  # e.g. b"[" * 200_000: json's decoder recurses once per level
        raise BadRequest("body is nested too deeply to be events") from None
    if not records:
        raise BadRequest("no events in body")
    if len(records) > max_events:
        raise PayloadTooLarge(f"{len(records)} events in one request, over the limit of {max_events}",
                              limit=max_events)
    return records


def _parse_ndjson(text: str, whole_err: json.JSONDecodeError) -> list:
    lines = [line for line in text.splitlines() if line.strip()]
    if len(lines) < 2:
        raise BadRequest(f"body is not valid JSON: {whole_err.msg} at line {whole_err.lineno} column {whole_err.colno}")
    records = []
    for n, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise BadRequest(f"NDJSON line {n} is not valid JSON: {e.msg}", line=n) from None
        except RecursionError:
            raise BadRequest(f"NDJSON line {n} is nested too deeply to be an event", line=n) from None
    return records
