"""The event schema: what an event looks like before and after cleaning.

Stage 1 of the data flow (events -> clean -> train -> publish -> serve).

An event arrives as a JSON object (HTTP body) or a row of a file. Before
cleaning it is a *raw table*: the columns of ``RAW_COLUMNS`` (any subset, any
Arrow type) plus ``raw`` (the original text, kept for the quarantine) and
``row`` (its position in the input), and optionally ``error`` (why the record
could not even be decoded). ``increc_ray.ingest.clean`` turns a raw table into a
table of ``CLEAN_SCHEMA`` and quarantined rows of ``QUARANTINE_SCHEMA``.

>>> t = raw_table_from_records([{"user_id": 7, "item_id": "a", "value": 4.5}, [1, 2]])
>>> t.column("user_id").to_pylist(), t.column("value").to_pylist()
(['7', None], ['4.5', None])
>>> t.column("error").to_pylist()
[None, 'event must be a JSON object']
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa
import pyarrow.compute as pc

RAW_COLUMNS = ("event_id", "user_id", "item_id", "event_type", "timestamp", "value")

NOT_AN_OBJECT = "event must be a JSON object"
LONE_SURROGATE = "event holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape): not valid Unicode text"

UTC_MS = pa.timestamp("ms", tz="UTC")

CLEAN_SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),  # given id, or the content key when absent
    pa.field("dedup_key", pa.string(), nullable=False),  # "id:<event_id>" or "c:<sha1 of the content>"
    pa.field("user_id", pa.string()),
    pa.field("item_id", pa.string()),
    pa.field("event_type", pa.string()),
    pa.field("timestamp", UTC_MS),
    pa.field("value", pa.float64()),
    pa.field("label", pa.int8()),  # 1 = positive, 0 = seen but not positive
    pa.field("weight", pa.float32()),  # training weight; 0 for non-positives
])

QUARANTINE_SCHEMA = pa.schema([
    pa.field("row", pa.int64()),
    pa.field("source", pa.string()),
    pa.field("reason", pa.string()),
    pa.field("raw", pa.string()),
    pa.field("quarantined_at", UTC_MS),
])


@dataclass(frozen=True)
class Unreadable:
    """Stands in for a record that could not be decoded (e.g. a line that is not JSON).

    ``raw_table_from_records`` turns it into a row with ``error`` set, so the
    record is quarantined with that reason instead of failing the whole input.
    """

    error: str
    raw: str


def raw_table_from_records(records: list, *, rows: Sequence[int] | None = None) -> pa.Table:
    """One raw row per decoded JSON record; ``rows`` overrides the default 0..n-1 positions."""
    if rows is not None and len(rows) != len(records):
        raise ValueError(f"rows has {len(rows)} entries, expected one per record ({len(records)})")
    fields: dict[str, list[str | None]] = {c: [] for c in RAW_COLUMNS}
    raws: list[str] = []
    errors: list[str | None] = []
    for rec in records:
        raw = rec.raw if isinstance(rec, Unreadable) else to_json(rec)
        if not _is_utf8(raw):  # JSON's "\ud800" escape decodes to text that UTF-8 cannot hold
            raws.append(raw.encode("utf-8", "backslashreplace").decode("utf-8"))
            errors.append(LONE_SURROGATE)
        elif isinstance(rec, dict):
            for c in RAW_COLUMNS:
                fields[c].append(field_text(rec.get(c)))
            raws.append(raw)
            errors.append(None)
            continue
        else:
            raws.append(raw)
            errors.append(rec.error if isinstance(rec, Unreadable) else NOT_AN_OBJECT)
        for c in RAW_COLUMNS:
            fields[c].append(None)
    columns = {c: pa.array(fields[c], pa.string()) for c in RAW_COLUMNS}
    columns["raw"] = pa.array(raws, pa.string())
    columns["row"] = pa.array(range(len(records)) if rows is None else list(rows), pa.int64())
    columns["error"] = pa.array(errors, pa.string())
    return pa.table(columns)


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def field_text(value: Any) -> str | None:
    """A JSON field as text: strings as they are, everything else as its JSON.

    Numbers keep their exact digits (42 -> "42", 4.5 -> "4.5", big ints stay
    exact); bools, lists and objects stay JSON text so validation can reject them.
    """
    if value is None or isinstance(value, str):
        return value
    return to_json(value)


def to_json(value: Any) -> str:
    """Compact JSON; anything JSON cannot encode (timestamps, bytes) becomes its str()."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def rows_as_json(table: pa.Table) -> pa.Array:
    """Each row of ``table`` as a JSON object: the ``raw`` text of rows read from files.

    Vectorised, because loaders call it on every row of large files.
    """
    n = table.num_rows
    if table.num_columns == 0:
        return pa.array(["{}"] * n, pa.string())
    parts: list[Any] = []
    for i, name in enumerate(table.column_names):
        parts.append(("{" if i == 0 else ",") + to_json(name) + ":")
        parts.append(_json_values(table.column(name)))
    parts.append("}")
    joined = pc.binary_join_element_wise(*parts, "")
    # an Array when no part is chunked (e.g. every column all-null), else a ChunkedArray
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def _json_values(col: pa.ChunkedArray) -> pa.ChunkedArray:
    """Each value of ``col`` as JSON text ("null" for nulls)."""
    t = col.type
    if pa.types.is_dictionary(t):
        return _json_values(col.cast(t.value_type))
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = col.cast(pa.string())
        if pc.any(pc.match_substring_regex(text, r"[\x00-\x1f]")).as_py():
            return _json_values_slow(col)  # control characters need JSON's \u escapes
        escaped = pc.replace_substring(pc.replace_substring(text, "\\", "\\\\"), '"', '\\"')
        body = pc.binary_join_element_wise('"', escaped, '"', "")
    elif pa.types.is_integer(t) or pa.types.is_boolean(t):
        body = col.cast(pa.string())
        if pa.types.is_boolean(t):
            body = pc.if_else(col, "true", "false")
    elif pa.types.is_floating(t):
        finite = pc.is_finite(col)
        body = pc.if_else(finite, col.cast(pa.string()), pa.scalar(None, pa.string()))  # JSON has no NaN
    else:
        return _json_values_slow(col)
    return pc.fill_null(body, "null")


def _json_values_slow(col: pa.ChunkedArray) -> pa.Array:
    return pa.array([to_json(v) for v in col.to_pylist()], pa.string())
