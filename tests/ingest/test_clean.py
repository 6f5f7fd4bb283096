"""Tests for increc_ray.ingest.clean: one or more per cleaning rule, plus de-duplication and the tagged form."""

import hashlib
from datetime import datetime, timezone

import pyarrow as pa
import pytest

from increc_ray.ingest.clean import TAGGED_SCHEMA, CleanResult, clean_batch, clean_batch_tagged, split_tagged
from increc_ray.ingest.dedup import SeenKeys, drop_batch_duplicates
from increc_ray.config import CleaningConfig, LabelRule
from increc_ray.ingest.events import CLEAN_SCHEMA, QUARANTINE_SCHEMA, raw_table_from_records

NOW = datetime(2024, 6, 1, tzinfo=timezone.utc)
TS = 1_700_000_000  # 2023-11-14T22:13:20Z
CFG = CleaningConfig()


def ev(**fields):
    return {"user_id": "u1", "item_id": "i1", "timestamp": TS, "event_type": "click", **fields}


def clean(records, cfg=CFG) -> CleanResult:
    return clean_batch(raw_table_from_records(records), cfg, "test", now=NOW)


def one(record, cfg=CFG) -> dict:
    """The single clean row of ``record``; fails with the quarantine reason otherwise."""
    r = clean([record], cfg)
    assert r.quarantined.num_rows == 0, r.quarantined.column("reason").to_pylist()
    return r.clean.to_pylist()[0]


def reason(record, cfg=CFG) -> str:
    r = clean([record], cfg)
    assert r.clean.num_rows == 0 and r.quarantined.num_rows == 1
    return r.quarantined.column("reason")[0].as_py()


def test_outputs_follow_the_schemas():
    r = clean([ev(), ev(user_id=None)])
    assert r.clean.schema == CLEAN_SCHEMA and r.quarantined.schema == QUARANTINE_SCHEMA
    q = r.quarantined.to_pylist()[0]
    assert (q["row"], q["source"], q["quarantined_at"]) == (1, "test", NOW)


# --- ids -----------------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["user_id", "item_id", "timestamp"])
def test_required_fields_missing_are_quarantined(field):
    assert reason(ev(**{field: None})) == f"{field}: missing"


def test_ids_are_stripped_and_integral_numbers_normalised():
    row = one(ev(user_id=" 42.0 ", item_id=7.0))
    assert (row["user_id"], row["item_id"]) == ("42", "7")
    assert one(ev(user_id="007", item_id=4.5))["user_id"] == "007"  # leading zeros are part of the id


def test_typed_id_columns_are_normalised():
    t = pa.table({"user_id": pa.array([42.0, 3.5]), "item_id": pa.array([1, 2], pa.int32()),
                  "timestamp": pa.array([TS, TS], pa.int64())})
    r = clean_batch(t, CFG, "test", now=NOW)
    assert r.clean.column("user_id").to_pylist() == ["42", "3.5"]
    assert r.clean.column("item_id").to_pylist() == ["1", "2"]


@pytest.mark.parametrize("bad", [True, [1], {"a": 1}])
def test_json_bools_lists_objects_are_rejected_as_ids(bad):
    text = reason(ev(user_id=bad))
    assert text.startswith("user_id: ") and text.endswith("is not a string or number")


def test_the_string_true_is_a_valid_id():
    assert one(ev(user_id="true"))["user_id"] == "true"


def test_empty_and_too_long_ids_are_rejected():
    assert reason(ev(item_id="   ")) == "item_id: '   ' is empty"
    cfg = CleaningConfig(max_id_length=5)
    assert "longer than 5 characters" in reason(ev(user_id="abcdef"), cfg)
    assert one(ev(user_id="abcde"), cfg)["user_id"] == "abcde"


def test_bool_typed_id_column_is_rejected():
    t = pa.table({"user_id": [True], "item_id": ["i"], "timestamp": [TS]})
    r = clean_batch(t, CFG, "test", now=NOW)
    assert r.quarantined.column("reason").to_pylist() == ["user_id: true is not a string or number"]


# --- event_type ------------------------------------------------------------------------------

def test_event_type_is_lowercased_and_stripped():
    assert one(ev(event_type="  PURCHASE "))["event_type"] == "purchase"


def test_missing_event_type_gets_the_default():
    cfg = CleaningConfig(default_event_type="view")
    assert one(ev(event_type=None), cfg)["event_type"] == "view"
    assert one(ev(event_type=""), cfg)["event_type"] == "view"


def test_unknown_event_type_is_rejected_with_the_allowed_ones():
    assert reason(ev(event_type="boop")) == (
        "event_type: 'boop' is not one of [add_to_cart, click, like, purchase, rating, view]")


# --- timestamp -------------------------------------------------------------------------------

def ms(row):
    return int(row["timestamp"].timestamp() * 1000)


@pytest.mark.parametrize("ts, expected_ms", [
    (TS, TS * 1000),
    (TS + 0.25, TS * 1000 + 250),
    (str(TS), TS * 1000),
    (TS * 1000 + 7, TS * 1000 + 7),  # above 1e11: already milliseconds
    (f"{TS * 1000 + 7}", TS * 1000 + 7),
    ("2023-11-14T22:13:20Z", TS * 1000),
    ("2023-11-14T22:13:20", TS * 1000),  # naive = UTC
    ("2023-11-15T00:13:20+02:00", TS * 1000),
    ("2023-11-14 22:13:20.5+00:00", TS * 1000 + 500),
])
def test_timestamp_formats_normalise_to_utc_ms(ts, expected_ms):
    assert ms(one(ev(timestamp=ts))) == expected_ms


@pytest.mark.parametrize("col", [
    pa.array([datetime(2023, 11, 14, 22, 13, 20)], pa.timestamp("us")),  # naive = UTC
    pa.array([datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)], pa.timestamp("s", tz="Europe/Paris")),
    pa.array([TS * 1_000_000_000], pa.timestamp("ns", tz="UTC")),
])
def test_arrow_timestamp_columns_are_accepted(col):
    t = pa.table({"user_id": ["u"], "item_id": ["i"], "timestamp": col})
    r = clean_batch(t, CFG, "test", now=NOW)
    assert r.clean.column("timestamp").cast(pa.int64()).to_pylist() == [TS * 1000]


def test_unreadable_timestamp_is_rejected():
    assert reason(ev(timestamp="yesterday")) == "timestamp: 'yesterday' is not epoch seconds, epoch ms or ISO-8601"
    assert "timestamp: 'true'" in reason(ev(timestamp=True))


def test_timestamp_too_far_in_the_future_is_rejected():
    assert reason(ev(timestamp="2099-01-01")) == "timestamp: '2099-01-01' is more than 86400s in the future"
    just_inside = NOW.timestamp() + 86_000
    assert one(ev(timestamp=just_inside))["timestamp"] > NOW


def test_timestamp_before_min_is_rejected():
    assert reason(ev(timestamp="1980-01-01")) == "timestamp: '1980-01-01' is before 1990-01-01T00:00:00Z"
    assert "is before" in reason(ev(timestamp=0))


# --- value and labels --------------------------------------------------------------------------

def test_value_is_parsed_as_float():
    assert one(ev(value="4.5"))["value"] == 4.5
    assert one(ev(value=3))["value"] == 3.0
    assert one(ev(value=None))["value"] is None


@pytest.mark.parametrize("bad", ["abc", "NaN", "1e999", True, [1]])
def test_non_numeric_or_non_finite_values_are_rejected(bad):
    assert reason(ev(value=bad)).startswith("value: ")


def test_rule_with_min_value_needs_a_value():
    assert reason(ev(event_type="rating")) == "value: missing (rating events need a value)"


def test_labels_follow_the_rules():
    rows = clean([ev(event_type="rating", value=4.0), ev(event_type="rating", value=3.0),
                  ev(event_type="purchase"), ev(event_type="view")]).clean.to_pylist()
    assert [(r["label"], r["weight"]) for r in rows] == [(1, 1.0), (0, 0.0), (1, 3.0), (1, 0.5)]


def test_zero_weight_rule_is_never_positive():
    cfg = CleaningConfig(event_types={"click": LabelRule(weight=1.0), "impression": LabelRule(weight=0.0)})
    row = one(ev(event_type="impression"), cfg)
    assert (row["label"], row["weight"]) == (0, 0.0)


# --- event_id and dedup_key -------------------------------------------------------------------

def test_given_event_id_makes_the_dedup_key():
    row = one(ev(event_id=" e-1 "))
    assert (row["event_id"], row["dedup_key"]) == ("e-1", "id:e-1")


def test_content_key_when_event_id_is_absent():
    row = one(ev(value=4.0))
    content = f"u1|i1|click|{TS * 1000}|4"
    assert row["dedup_key"] == "c:" + hashlib.sha1(content.encode()).hexdigest()
    assert row["event_id"] == row["dedup_key"]
    # the same event from a CSV (strings) and from JSON (numbers) gets the same key
    assert one(ev(user_id="u1", timestamp=str(TS), value="4.0"))["dedup_key"] == row["dedup_key"]
    assert one(ev(value=4.5))["dedup_key"] != row["dedup_key"]


def test_bad_event_id_is_rejected():
    assert "event_id: " in reason(ev(event_id={"x": 1}))


# --- whole batches ------------------------------------------------------------------------------

def test_rows_keep_input_order_and_all_reasons_are_reported():
    r = clean([ev(item_id="a"), ev(user_id=None, value="x"), ev(item_id="b"), [1]])
    assert r.clean.column("item_id").to_pylist() == ["a", "b"]
    assert r.quarantined.column("row").to_pylist() == [1, 3]
    assert r.quarantined.column("reason").to_pylist() == ["user_id: missing; value: 'x' is not a number",
                                                          "event must be a JSON object"]
    assert r.quarantined.column("raw")[1].as_py() == "[1]"


def test_raw_is_built_when_the_input_has_none():
    t = pa.table({"user_id": ["u"], "item_id": [None], "timestamp": [TS]})
    q = clean_batch(t, CFG, "f.csv", now=NOW).quarantined.to_pylist()[0]
    assert (q["row"], q["raw"], q["reason"]) == (0, '{"user_id":"u","item_id":null,"timestamp":1700000000}',
                                                 "item_id: missing")


def test_default_now_is_the_current_time():
    r = clean_batch(raw_table_from_records([ev(timestamp="2099-01-01")]), CFG, "test")
    assert r.quarantined.num_rows == 1


def test_empty_table():
    r = clean_batch(pa.table({"user_id": pa.array([], pa.string())}), CFG, "test", now=NOW)
    assert (r.clean.num_rows, r.quarantined.num_rows) == (0, 0)


def test_tagged_round_trip():
    t = raw_table_from_records([ev(item_id="a"), ev(user_id=None), ev(event_type="rating", value=5)])
    tagged = clean_batch_tagged(t, CFG, "test", now=NOW)
    assert tagged.schema == TAGGED_SCHEMA and tagged.num_rows == 3
    assert tagged.column("reason").null_count == 2
    direct = clean_batch(t, CFG, "test", now=NOW)
    split = split_tagged(tagged, now=NOW)
    assert split.clean.equals(direct.clean) and split.quarantined.equals(direct.quarantined)


def test_drop_batch_duplicates_keeps_the_first():
    r = clean([ev(event_id="a", item_id="1"), ev(event_id="b"), ev(event_id="a", item_id="2"), ev(), ev()])
    kept, dropped = drop_batch_duplicates(r.clean)
    assert dropped == 2
    assert kept.column("event_id").to_pylist()[:2] == ["a", "b"]
    assert kept.column("item_id").to_pylist()[0] == "1"


def test_seen_keys_filters_across_batches():
    seen = SeenKeys(["id:old"])
    first = clean([ev(event_id="old"), ev(event_id="new"), ev(event_id="new")]).clean
    kept, dups = seen.filter_new(first)
    assert (kept.column("event_id").to_pylist(), dups) == (["new"], 2)
    assert "id:new" in seen and len(seen) == 2
    kept, dups = seen.filter_new(first)
    assert (kept.num_rows, dups) == (0, 3)
    seen.add(pa.array(["id:x"]))
    assert "id:x" in seen
