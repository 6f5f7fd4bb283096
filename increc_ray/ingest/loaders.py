"""Loaders: event files of any supported format -> one raw table.

Part of stage 1 (events). The format is chosen by the file name:

    .jsonl / .ndjson       one JSON object per line
    .json                  a JSON array of objects, or NDJSON
    .csv                   header naming RAW_COLUMNS, or MovieLens userId,movieId,rating,timestamp
    .parquet / .pq         columns named like RAW_COLUMNS (or MovieLens names)
    u.data / *.data        MovieLens 100k: user<TAB>item<TAB>rating<TAB>unixtime, no header
    ratings.dat / *.dat    MovieLens 1M/10M: user::item::rating::timestamp

The result is a raw table (``increc_ray.ingest.events``): the RAW_COLUMNS found,
``raw`` and ``row``, plus ``error`` for records that could not be decoded.
A bad record becomes a row with an ``error`` (quarantined by cleaning); only a
file that cannot be read at all raises ``DataError``. Columns keep the types
the format gives them; ``increc_ray.ingest.clean`` normalises any of them.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import os
import posixpath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from increc_ray.errors import DataError
from increc_ray.ingest.events import RAW_COLUMNS, Unreadable, raw_table_from_records, rows_as_json

# MovieLens names -> ours; ratings become "rating" events whose value is the rating.
_MOVIELENS_NAMES = {"userId": "user_id", "movieId": "item_id", "rating": "value", "timestamp": "timestamp"}
MOVIELENS_EVENT_TYPE = "rating"


def parse_events_bytes(name: str, data: bytes) -> pa.Table:
    """Parse the bytes of the event file called ``name`` into a raw table."""
    base = posixpath.basename(name.replace("\\", "/")).lower()
    parser = _parser_for(base)
    if parser is None:
        raise DataError(f"{name}: unknown event file type (expected .jsonl, .ndjson, .json, .csv, .parquet, "
                        f"MovieLens u.data or ratings.dat)")
    try:
        return parser(data)
    except DataError as e:
        raise DataError(f"{name}: {e}") from None
    except (pa.ArrowInvalid, UnicodeDecodeError, ValueError, OSError) as e:
        raise DataError(f"{name}: cannot read as events: {e}") from None


def read_events_file(path: str, filesystem: pafs.FileSystem | None = None) -> pa.Table:
    """Read a local path or URI (``s3://...``, ``file://...``) and parse it by its name.

    I/O errors (missing file, network) propagate as ``OSError``: they are not a
    property of the data, so the file should not be quarantined for them.
    """
    if filesystem is None:
        filesystem, path = pafs.FileSystem.from_uri(path if "://" in path else os.path.abspath(path))
    with filesystem.open_input_stream(path) as f:
        data = f.read()
    return parse_events_bytes(path, data)


def load_movielens(path: str) -> pa.Table:
    """Read a MovieLens ratings file (u.data, ratings.csv, ratings.dat) as a raw table of rating events."""
    return read_events_file(path)


def _parser_for(base: str):
    if base.endswith((".jsonl", ".ndjson")):
        return _parse_jsonl
    if base.endswith(".json"):
        return _parse_json
    if base.endswith(".csv"):
        return _parse_csv
    if base.endswith((".parquet", ".pq")):
        return _parse_parquet
    if base == "u.data" or base.endswith(".data"):
        return lambda data: _parse_movielens_text(data, b"\t")
    if base.endswith(".dat"):
        return lambda data: _parse_movielens_text(data, b"::")
    return None


def _parse_jsonl(data: bytes) -> pa.Table:
    """One record per non-blank line; a line that is not JSON becomes an ``error`` row."""
    records, rows = [], []
    # split on "\n" only: str.splitlines would also split at U+2028 inside JSON strings
    for i, line in enumerate(data.decode("utf-8-sig").split("\n")):
        line = line.strip()
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except ValueError as e:
            records.append(Unreadable(f"invalid JSON: {e}", line))
        rows.append(i)  # the 0-based line number, so a quarantined row can be found in the file
    return raw_table_from_records(records, rows=rows)


def _parse_json(data: bytes) -> pa.Table:
    """A JSON array of records; anything else is read as NDJSON."""
    text = data.decode("utf-8-sig")
    try:
        decoded = json.loads(text)
    except ValueError:
        return _parse_jsonl(data)
    return raw_table_from_records(decoded if isinstance(decoded, list) else [decoded])


def _parse_csv(data: bytes) -> pa.Table:
    """CSV with a header naming RAW_COLUMNS (or MovieLens' userId,movieId,rating,timestamp)."""
    data = data.removeprefix(codecs.BOM_UTF8)
    first_line = data.split(b"\n", 1)[0].decode("utf-8")
    try:
        header = [h.strip() for h in next(csv.reader([first_line.rstrip("\r")]), [])]
    except csv.Error as e:  # e.g. a NUL byte or a stray carriage return in the header line
        raise DataError(f"CSV header line cannot be read: {e}") from None
    if not any(header):
        raise DataError("CSV file has no header line")
    return _read_delimited(data, header, ",", skip_rows=1)


def _parse_movielens_text(data: bytes, sep: bytes) -> pa.Table:
    """MovieLens ratings without a header (u.data, ratings.dat)."""
    if sep != b"\t":
        data = data.replace(sep, b"\t")  # pyarrow's CSV reader takes one-character delimiters only
    return _read_delimited(data, list(_MOVIELENS_NAMES), "\t", skip_rows=0)


def _read_delimited(data: bytes, names: list[str], delimiter: str, skip_rows: int) -> pa.Table:
    """Read delimited text with every column as text, so ids and numbers keep their digits.

    Lines with the wrong number of fields become ``error`` rows after the good ones.
    """
    bad_lines: list[pacsv.InvalidRow] = []

    def keep_bad_line(line: pacsv.InvalidRow) -> str:
        bad_lines.append(line)
        return "skip"

    read = pacsv.read_csv(
        io.BytesIO(data),
        read_options=pacsv.ReadOptions(column_names=names, skip_rows=skip_rows),
        parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=keep_bad_line),
        # only "" is null: "NA" or "null" may well be somebody's id
        convert_options=pacsv.ConvertOptions(column_types={h: pa.string() for h in names},
                                             null_values=[""], strings_can_be_null=True),
    )
    table = _event_columns(read)
    table = table.append_column("raw", rows_as_json(read))
    table = table.append_column("row", pa.array(range(table.num_rows), pa.int64()))
    if bad_lines:
        table = pa.concat_tables([table, _bad_lines(bad_lines, len(names), table.num_rows)],
                                 promote_options="default")
    return table


def _bad_lines(bad_lines: list, n_fields: int, first_row: int) -> pa.Table:
    records = [
        Unreadable(f"line {r.number if r.number is not None else '?'}: expected {n_fields} fields, "
                   f"got {r.actual_columns}", r.text)
        for r in bad_lines
    ]
    table = raw_table_from_records(records, rows=range(first_row, first_row + len(records)))
    return table.select(["raw", "row", "error"])


def _parse_parquet(data: bytes) -> pa.Table:
    read = pq.read_table(pa.BufferReader(data))
    table = _event_columns(read)
    table = table.append_column("raw", rows_as_json(read))
    return table.append_column("row", pa.array(range(table.num_rows), pa.int64()))


def _event_columns(table: pa.Table) -> pa.Table:
    """Keep the RAW_COLUMNS of ``table``, first mapping MovieLens names when the header has them."""
    names = table.column_names
    if {"userId", "movieId", "rating"} <= set(names):  # MovieLens ratings.csv, or u.data read with its names
        renamed = table.rename_columns([_MOVIELENS_NAMES.get(c, c) for c in names])
        return _as_ratings(renamed)
    kept = [c for c in RAW_COLUMNS if c in names]
    if "user_id" not in kept and "item_id" not in kept:
        raise DataError(f"no user_id or item_id column (columns: {', '.join(names)})")
    return table.select(kept)


def _as_ratings(table: pa.Table) -> pa.Table:
    table = table.select([c for c in RAW_COLUMNS if c in table.column_names])
    if "event_type" not in table.column_names:
        table = table.append_column("event_type", pa.array([MOVIELENS_EVENT_TYPE] * table.num_rows, pa.string()))
    return table
