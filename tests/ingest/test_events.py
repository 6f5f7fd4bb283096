"""Tests for increc_ray.ingest.events: schemas and raw tables from decoded JSON."""

import json

import pyarrow as pa

from increc_ray.ingest.events import (
    CLEAN_SCHEMA, NOT_AN_OBJECT, QUARANTINE_SCHEMA, RAW_COLUMNS, Unreadable, raw_table_from_records, rows_as_json,
)


def test_raw_table_has_string_columns_raw_row_and_error():
    t = raw_table_from_records([{"user_id": "u1", "item_id": "i1"}])
    assert t.column_names == [*RAW_COLUMNS, "raw", "row", "error"]
    assert all(t.schema.field(c).type == pa.string() for c in RAW_COLUMNS)
    assert t.schema.field("row").type == pa.int64()
    assert t.to_pylist()[0]["error"] is None


def test_numbers_are_stringified_exactly():
    rec = {"user_id": 42, "item_id": 12345678901234567890, "value": 4.5, "timestamp": 1.0}
    row = raw_table_from_records([rec]).to_pylist()[0]
    assert [row[k] for k in rec] == ["42", "12345678901234567890", "4.5", "1.0"]


def test_bools_lists_and_objects_stay_json_text():
    t = raw_table_from_records([{"user_id": True, "item_id": [1, 2], "event_type": {"a": 1}}])
    row = t.to_pylist()[0]
    assert (row["user_id"], row["item_id"], row["event_type"]) == ("true", "[1,2]", '{"a":1}')


def test_raw_keeps_the_whole_record_including_unknown_keys():
    rec = {"user_id": "u", "item_id": "i", "extra": {"nested": [1, None]}}
    t = raw_table_from_records([rec])
    assert json.loads(t.column("raw")[0].as_py()) == rec
    assert "extra" not in t.column_names


def test_non_objects_get_null_fields_and_an_error():
    t = raw_table_from_records([{"user_id": "u"}, [1], "text", None, 3])
    rows = t.to_pylist()
    assert [r["error"] for r in rows] == [None] + [NOT_AN_OBJECT] * 4
    assert all(r[c] is None for r in rows[1:] for c in RAW_COLUMNS)
    assert [r["raw"] for r in rows[1:]] == ["[1]", '"text"', "null", "3"]
    assert [r["row"] for r in rows] == [0, 1, 2, 3, 4]


def test_unreadable_records_carry_their_error_and_text():
    t = raw_table_from_records([Unreadable("invalid JSON: boom", "{oops")], rows=[7])
    assert t.to_pylist()[0] == {**{c: None for c in RAW_COLUMNS}, "raw": "{oops", "row": 7,
                                      "error": "invalid JSON: boom"}


def test_empty_input_gives_an_empty_table_with_the_columns():
    t = raw_table_from_records([])
    assert t.num_rows == 0 and "user_id" in t.column_names and "error" in t.column_names


def test_rows_as_json_round_trips_values_and_escapes_strings():
    t = pa.table({"a": ['say "hi"\\', None, "tab\there"], "b": [1, None, 3], "c": [1.5, float("nan"), None],
                  "d": [True, False, None]})
    decoded = [json.loads(s) for s in rows_as_json(t).to_pylist()]
    assert decoded == [{"a": 'say "hi"\\', "b": 1, "c": 1.5, "d": True},
                       {"a": None, "b": None, "c": None, "d": False},
                       {"a": "tab\there", "b": 3, "c": None, "d": None}]


def test_schemas_have_the_agreed_fields():
    assert CLEAN_SCHEMA.names == ["event_id", "dedup_key", "user_id", "item_id", "event_type", "timestamp",
                                  "value", "label", "weight"]
    assert not CLEAN_SCHEMA.field("event_id").nullable and not CLEAN_SCHEMA.field("dedup_key").nullable
    assert CLEAN_SCHEMA.field("timestamp").type == pa.timestamp("ms", tz="UTC")
    assert (CLEAN_SCHEMA.field("label").type, CLEAN_SCHEMA.field("weight").type) == (pa.int8(), pa.float32())
    assert QUARANTINE_SCHEMA.names == ["row", "source", "reason", "raw", "quarantined_at"]
