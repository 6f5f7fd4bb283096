"""Cleaning: a raw event table in, clean events and quarantined rows out.

Stage 2 of the data flow (events -> clean -> train -> publish -> serve).
Every rule is a function from Arrow columns to a normalised column, and notes
the rows it rejects with a reason naming the field and the bad value. A row
with any reason goes to the quarantine; one bad event never sinks a batch.

Rules, in order: ``error`` (undecodable record), ids, event_type, timestamp,
value, then labelling and the de-duplication key. Reasons of one row are
joined with "; ". The masks are vectorised; reason strings are built in Python
only for the rejected rows, which are few.

Ray Data's ``map_batches`` must return a single table, hence the *tagged*
form: clean and quarantined rows in one table of ``TAGGED_SCHEMA``, told
apart by ``reason`` and split again by ``split_tagged``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from increc_ray.config import CleaningConfig
from increc_ray.ingest.events import CLEAN_SCHEMA, QUARANTINE_SCHEMA, UTC_MS, rows_as_json

TAGGED_SCHEMA = pa.schema(
    [f.with_nullable(True) for f in CLEAN_SCHEMA]
    + [f for f in QUARANTINE_SCHEMA if f.name != "quarantined_at"]
)

_META_COLUMNS = ("raw", "row", "error")
_EPOCH_MS_ABOVE = 1e11  # larger epoch numbers are milliseconds (1e11 s is the year 5138)
_NUMBER = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_INTEGRAL_TEXT = r"^([+-]?\d+)\.0*$"  # "42.0" (a CSV float) names the same id as "42"
_INTEGRAL_FLOAT_MAX = 2.0**53  # floats above this are not exact integers
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)


@dataclass
class CleanResult:
    """Clean events (``CLEAN_SCHEMA``) and quarantined rows (``QUARANTINE_SCHEMA``)."""

    clean: pa.Table
    quarantined: pa.Table


def clean_batch(table: pa.Table, cfg: CleaningConfig, source: str, now: datetime | None = None) -> CleanResult:
    """Validate, normalise and label a raw table; rows keep their input order.

    ``source`` names where the rows came from (a file, a request) in the
    quarantine; ``now`` (default: the current UTC time) bounds future timestamps.
    """
    now = _utc(now)
    return split_tagged(clean_batch_tagged(table, cfg, source, now), now=now)


def clean_batch_tagged(table: pa.Table, cfg: CleaningConfig, source: str, now: datetime | None = None) -> pa.Table:
    """``clean_batch`` as one table of ``TAGGED_SCHEMA``: ``reason`` is null for clean rows.

    Clean fields are null for quarantined rows; ``raw`` is null for clean rows.
    """
    now = _utc(now)
    n = table.num_rows
    reasons = _Reasons(n)
    meta = {name: table.column(name).combine_chunks() for name in _META_COLUMNS if name in table.column_names}

    def col(name: str) -> pa.Array:
        return table.column(name).combine_chunks() if name in table.column_names else pa.nulls(n, pa.string())

    json_types = _JsonTypes(meta.get("raw"))
    user_id = _clean_id("user_id", col("user_id"), cfg, reasons, json_types, required=True)
    item_id = _clean_id("item_id", col("item_id"), cfg, reasons, json_types, required=True)
    event_id = _clean_id("event_id", col("event_id"), cfg, reasons, json_types, required=False)
    event_type = _clean_event_type(col("event_type"), cfg, reasons)
    ts_ms = _clean_timestamp(col("timestamp"), cfg, now, reasons)
    value, value_missing = _clean_value(col("value"), reasons)
    label, weight = _label(event_type, value, value_missing, cfg, reasons)
    if "error" in meta:
        reasons.override(meta["error"])  # the fields of an undecodable record say nothing more

    bad = reasons.mask()
    timestamp = pa.array(np.where(bad, 0, ts_ms).astype(np.int64), pa.int64(), mask=bad).cast(UTC_MS)
    event_id, dedup_key = _keys(event_id, user_id, item_id, event_type, timestamp, value, bad)
    fields = {
        "event_id": event_id, "dedup_key": dedup_key, "user_id": user_id, "item_id": item_id,
        "event_type": event_type, "timestamp": timestamp, "value": value, "label": label, "weight": weight,
    }
    columns = {name: pc.if_else(bad, pa.scalar(None, arr.type), arr) for name, arr in fields.items()}
    columns["row"] = meta["row"].cast(pa.int64()) if "row" in meta else pa.array(np.arange(n, dtype=np.int64))
    columns["source"] = pa.array([source] * n, pa.string())
    columns["reason"] = reasons.column()
    columns["raw"] = _raw_for(table, meta.get("raw"), bad)
    return pa.table(columns).cast(TAGGED_SCHEMA)


def split_tagged(table: pa.Table, now: datetime | None = None) -> CleanResult:
    """Split a ``TAGGED_SCHEMA`` table; quarantined rows get ``quarantined_at`` = ``now``."""
    bad = pc.is_valid(table.column("reason"))
    clean = table.filter(pc.invert(bad)).select(CLEAN_SCHEMA.names).cast(CLEAN_SCHEMA)
    quarantined = table.filter(bad).select(["row", "source", "reason", "raw"])
    stamp = pa.array([_utc(now)] * quarantined.num_rows, UTC_MS)
    return CleanResult(clean, quarantined.append_column("quarantined_at", stamp).cast(QUARANTINE_SCHEMA))


# --- rules -------------------------------------------------------------------------------


class _Reasons:
    """Rejection reasons per row; built only for the rows a rule rejects."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.by_row: dict[int, list[str]] = {}

    def add(self, mask: Any, values: pa.Array, message: Callable[[Any], str]) -> None:
        """Give every row where ``mask`` holds the reason ``message(its value)``."""
        rows = np.flatnonzero(_np_mask(mask))
        for i, v in zip(rows.tolist(), values.take(pa.array(rows, pa.int64())).to_pylist()):
            self.by_row.setdefault(i, []).append(message(v))

    def override(self, errors: pa.Array) -> None:
        for i, e in enumerate(errors.cast(pa.string()).to_pylist()):
            if e is not None:
                self.by_row[i] = [e]

    def mask(self) -> np.ndarray:
        bad = np.zeros(self.n, dtype=bool)
        bad[list(self.by_row)] = True
        return bad

    def column(self) -> pa.Array:
        if not self.by_row:
            return pa.nulls(self.n, pa.string())
        return pa.array([("; ".join(self.by_row[i]) if i in self.by_row else None) for i in range(self.n)], pa.string())


class _JsonTypes:
    """Tells a JSON string "true" from a JSON bool true, using the record's ``raw`` text.

    ``raw_table_from_records`` keeps non-string JSON values as JSON text, so the
    text alone cannot say whether an id was a bool, list or object.
    """

    def __init__(self, raw: pa.Array | None) -> None:
        self.raw = raw

    def non_text(self, name: str, text: pa.Array) -> np.ndarray:
        bad = np.zeros(len(text), dtype=bool)
        if self.raw is None:
            return bad
        looks = pc.or_(pc.is_in(text, pa.array(["true", "false"])), pc.match_substring_regex(text, r"^[\[{]"))
        for i in np.flatnonzero(_np_mask(looks)).tolist():
            try:
                rec = json.loads(self.raw[i].as_py() or "")
            except ValueError:
                continue  # raw is not JSON: the value came from a typed column, not from JSON
            bad[i] = isinstance(rec, dict) and isinstance(rec.get(name), (bool, list, dict))
        return bad


def _clean_id(name: str, arr: pa.Array, cfg: CleaningConfig, reasons: _Reasons, json_types: _JsonTypes,
              required: bool) -> pa.Array:
    """A stripped string id; integral numbers lose their ".0"; null when absent."""
    text, non_text = _as_text(arr)
    reasons.add(non_text, arr, lambda v: f"{name}: {_json(v)} is not a string or number")
    reasons.add(json_types.non_text(name, text), text, lambda v: f"{name}: {v} is not a string or number")
    ids = pc.replace_substring_regex(pc.utf8_trim_whitespace(text), _INTEGRAL_TEXT, r"\1")
    empty = pc.equal(ids, "")
    if required:
        reasons.add(pc.and_(pc.is_null(arr), pc.invert(pa.array(non_text))), arr, lambda v: f"{name}: missing")
        reasons.add(empty, text, lambda v: f"{name}: {v!r} is empty")
    too_long = pc.greater(pc.utf8_length(ids), cfg.max_id_length)
    reasons.add(too_long, text, lambda v: f"{name}: {v[:40]!r}... is longer than {cfg.max_id_length} characters")
    return pc.if_else(empty, pa.scalar(None, pa.string()), ids)


def _clean_event_type(arr: pa.Array, cfg: CleaningConfig, reasons: _Reasons) -> pa.Array:
    """Lowercased event type; absent -> ``cfg.default_event_type``; must be configured."""
    text, non_text = _as_text(arr)
    known = sorted(cfg.event_types)
    reasons.add(non_text, arr, lambda v: f"event_type: {_json(v)} is not one of [{', '.join(known)}]")
    types = pc.utf8_lower(pc.utf8_trim_whitespace(text))
    types = pc.fill_null(pc.if_else(pc.equal(types, ""), pa.scalar(None, pa.string()), types), cfg.default_event_type)
    unknown = pc.and_(pc.invert(pc.is_in(types, pa.array(known))), pc.is_valid(text))
    reasons.add(unknown, text, lambda v: f"event_type: {v!r} is not one of [{', '.join(known)}]")
    return types


def _clean_timestamp(arr: pa.Array, cfg: CleaningConfig, now: datetime, reasons: _Reasons) -> np.ndarray:
    """Epoch milliseconds (float, NaN where missing or bad), checked against the allowed window."""
    ms, unreadable = _timestamp_ms(arr)
    missing = np.isnan(ms) & ~unreadable
    reasons.add(missing, arr, lambda v: "timestamp: missing")
    reasons.add(unreadable, arr, lambda v: f"timestamp: {_show(v)} is not epoch seconds, epoch ms or ISO-8601")
    lo = _iso_ms(cfg.min_timestamp)
    hi = now.timestamp() * 1000 + cfg.max_future_skew_s * 1000
    with np.errstate(invalid="ignore"):
        reasons.add(ms < lo, arr, lambda v: f"timestamp: {_show(v)} is before {cfg.min_timestamp}")
        reasons.add(ms > hi, arr,
                    lambda v: f"timestamp: {_show(v)} is more than {cfg.max_future_skew_s:g}s in the future")
    return ms


def _clean_value(arr: pa.Array, reasons: _Reasons) -> tuple[pa.Array, np.ndarray]:
    """(optional float value, mask of rows with no value); non-numbers and NaN/inf are rejected."""
    t = arr.type
    missing = _np_mask(pc.is_null(arr))
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        text = pc.utf8_trim_whitespace(arr.cast(pa.string()))
        numeric = pc.match_substring_regex(text, _NUMBER)
        missing |= _np_mask(pc.equal(text, ""))
        reasons.add(pc.and_(pc.invert(numeric), pc.not_equal(text, "")), arr, lambda v: f"value: {v!r} is not a number")
        values = pc.if_else(numeric, text, pa.scalar(None, pa.string())).cast(pa.float64())
    elif pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t) or pa.types.is_null(t):
        values = arr.cast(pa.float64(), safe=False)
    else:
        reasons.add(pc.is_valid(arr), arr, lambda v: f"value: {_json(v)} is not a number")
        return pa.nulls(len(arr), pa.float64()), missing
    finite = pc.is_finite(values)
    reasons.add(pc.invert(finite), values, lambda v: f"value: {v!r} is not a finite number")
    return pc.if_else(finite, values, pa.scalar(None, pa.float64())), missing


def _label(event_type: pa.Array, value: pa.Array, value_missing: np.ndarray, cfg: CleaningConfig,
           reasons: _Reasons) -> tuple[pa.Array, pa.Array]:
    """(label, weight): positive with the rule's weight when weight > 0 and value >= min_value."""
    names = list(cfg.event_types)
    rules = [cfg.event_types[k] for k in names]
    idx = pc.fill_null(pc.index_in(event_type, pa.array(names)), 0).to_numpy()  # unknown types are rejected already
    weights = np.array([r.weight for r in rules], dtype=np.float64)[idx]
    min_values = np.array([np.nan if r.min_value is None else r.min_value for r in rules])[idx]
    v = _float(value)  # NaN where null
    needs_value = ~np.isnan(min_values) & value_missing & _np_mask(pc.is_in(event_type, pa.array(names)))
    reasons.add(needs_value, event_type, lambda t: f"value: missing ({t} events need a value)")
    with np.errstate(invalid="ignore"):
        positive = (weights > 0) & (np.isnan(min_values) | (v >= min_values))
    return pa.array(positive.astype(np.int8)), pa.array(np.where(positive, weights, 0).astype(np.float32))


def _keys(event_id: pa.Array, user_id: pa.Array, item_id: pa.Array, event_type: pa.Array,
          timestamp: pa.Array, value: pa.Array, bad: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """(event_id, dedup_key): "id:<event_id>", or "c:<sha1>" of the content when no id is given.

    The content is ``user_id|item_id|event_type|timestamp_ms|value`` with the
    value as Arrow writes a float64 (4.0 -> "4", 4.5 -> "4.5"; "" when null).
    """
    content = pc.binary_join_element_wise(
        user_id, item_id, event_type, timestamp.cast(pa.int64()).cast(pa.string()), value.cast(pa.string()), "|",
        null_handling="replace", null_replacement="")
    need = np.flatnonzero(_np_mask(pc.is_null(event_id)) & ~bad)
    hashed: list[str | None] = [None] * len(event_id)
    for i, text in zip(need.tolist(), content.take(pa.array(need, pa.int64())).to_pylist()):
        hashed[i] = "c:" + hashlib.sha1(text.encode("utf-8")).hexdigest()
    content_key = pa.array(hashed, pa.string())
    dedup_key = pc.if_else(pc.is_valid(event_id), pc.binary_join_element_wise("id:", event_id, ""), content_key)
    return pc.coalesce(event_id, content_key), dedup_key


# --- parsing helpers -----------------------------------------------------------------------


def _as_text(arr: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """(text, mask of values that are neither strings nor numbers) for id-like columns."""
    t = arr.type
    if pa.types.is_dictionary(t):
        return _as_text(arr.cast(t.value_type))
    if pa.types.is_floating(t):
        finite = pc.is_finite(arr)
        integral = pc.and_(pc.equal(pc.floor(arr), arr), pc.less(pc.abs(arr), _INTEGRAL_FLOAT_MAX))
        as_int = pc.if_else(integral, arr, 0.0).cast(pa.int64()).cast(pa.string())
        text = pc.if_else(finite, pc.if_else(integral, as_int, arr.cast(pa.string())), pa.scalar(None, pa.string()))
        return text, _np_mask(pc.invert(finite))
    text_like = (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t)
                 or pa.types.is_decimal(t) or pa.types.is_null(t) or pa.types.is_temporal(t))
    if text_like:
        return arr.cast(pa.string()), np.zeros(len(arr), dtype=bool)
    return pa.nulls(len(arr), pa.string()), _np_mask(pc.is_valid(arr))  # bools, lists, structs, binary


def _timestamp_ms(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(epoch ms as float, NaN where missing or unreadable; mask of unreadable values)."""
    t = arr.type
    n = len(arr)
    if pa.types.is_timestamp(t):  # naive timestamps are UTC; aware ones are stored as UTC already
        as_ms = arr.cast(pa.timestamp("ms", tz=t.tz), safe=False)  # drops sub-millisecond digits
        return _float(as_ms.cast(pa.int64())), np.zeros(n, dtype=bool)
    if pa.types.is_date(t):
        return _float(arr.cast(pa.timestamp("ms")).cast(pa.int64())), np.zeros(n, dtype=bool)
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        x = _float(arr)
        return _epoch_ms(x), _np_mask(pc.is_valid(arr)) & ~np.isfinite(x)
    if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
        return np.full(n, np.nan), _np_mask(pc.is_valid(arr))
    text = pc.utf8_trim_whitespace(arr.cast(pa.string()))
    numeric = pc.match_substring_regex(text, _NUMBER)
    x = _float(pc.if_else(numeric, text, pa.scalar(None, pa.string())))
    ms = _epoch_ms(x)
    unreadable = np.isinf(x)  # "1e999"
    other = np.flatnonzero(_np_mask(pc.and_(pc.invert(numeric), pc.not_equal(text, ""))))
    for i, s in zip(other.tolist(), text.take(pa.array(other, pa.int64())).to_pylist()):
        ms[i] = _iso_ms(s)
        unreadable[i] = np.isnan(ms[i])
    return ms, unreadable


def _epoch_ms(x: np.ndarray) -> np.ndarray:
    """Epoch seconds, or milliseconds above 1e11, -> ms; NaN where not finite."""
    with np.errstate(invalid="ignore", over="ignore"):
        ms = np.where(np.abs(x) > _EPOCH_MS_ABOVE, x, x * 1000.0)
    ms[~np.isfinite(ms)] = np.nan
    return ms


def _iso_ms(text: str) -> float:
    """ISO-8601 -> epoch ms (naive = UTC); NaN when not ISO-8601."""
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return float("nan")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return float((dt - _EPOCH) // _ONE_MS)


def _float(arr: pa.Array) -> np.ndarray:
    # unsafe: an int64 above 2**53 becomes the nearest float instead of an error
    return arr.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False).astype(np.float64)


def _np_mask(mask: Any) -> np.ndarray:
    if isinstance(mask, np.ndarray):
        return mask.astype(bool)
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False).astype(bool)


def _raw_for(table: pa.Table, raw: pa.Array | None, bad: np.ndarray) -> pa.Array:
    """The ``raw`` text of rejected rows (built from the row when the input has none); null for clean rows."""
    rows = pa.array(np.flatnonzero(bad), pa.int64())
    fields = table.select([c for c in table.column_names if c not in _META_COLUMNS]).take(rows)
    built = rows_as_json(fields)
    if raw is not None:
        built = pc.coalesce(raw.cast(pa.string()).take(rows), built)
    out: list[str | None] = [None] * table.num_rows
    for i, text in zip(rows.to_pylist(), built.to_pylist()):
        out[i] = text
    return pa.array(out, pa.string())


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(timezone.utc)
    return now if now.tzinfo is not None else now.replace(tzinfo=timezone.utc)


def _show(v: Any) -> str:
    return repr(v.isoformat()) if isinstance(v, datetime) else repr(v)


def _json(v: Any) -> str:
    return json.dumps(v, default=str)

