"""Tests for increc_ray.ingest.loaders: every supported file format into the raw table."""

import io
import json
import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from increc_ray.ingest.clean import clean_batch
from increc_ray.config import CleaningConfig
from increc_ray.errors import DataError
from increc_ray.ingest.loaders import load_movielens, parse_events_bytes, read_events_file

from conftest import SHARED_DATA as DATA
ML_100K = os.path.join(DATA, "ml-100k", "u.data")
ML_SMALL = os.path.join(DATA, "ml-latest-small", "ratings.csv")


def fields(table, *names):
    return [tuple(r[n] for n in names) for r in table.select(list(names)).to_pylist()]


def test_jsonl_one_record_per_line_and_bad_lines_become_error_rows():
    data = b'{"user_id": 1, "item_id": "a", "timestamp": 5}\n\n{not json\r\n[1]\n'
    t = parse_events_bytes("events.jsonl", data)
    assert fields(t, "user_id", "item_id", "row") == [("1", "a", 0), (None, None, 2), (None, None, 3)]
    errors = t.column("error").to_pylist()
    assert errors[0] is None and errors[1].startswith("invalid JSON: ") and errors[2] == "event must be a JSON object"
    assert t.column("raw")[1].as_py() == "{not json"


def test_ndjson_extension_is_jsonl():
    t = parse_events_bytes("x.NDJSON", b'{"user_id": "u"}\n')
    assert t.column("user_id").to_pylist() == ["u"]


def test_json_array_and_json_lines():
    arr = parse_events_bytes("a.json", json.dumps([{"user_id": "u1"}, {"user_id": "u2"}]).encode())
    assert arr.column("user_id").to_pylist() == ["u1", "u2"]
    lines = parse_events_bytes("b.json", b'{"user_id": "u1"}\n{"user_id": "u2"}\n')
    assert lines.column("user_id").to_pylist() == ["u1", "u2"]


def test_csv_with_our_header_reads_text_and_keeps_digits():
    data = b"user_id,item_id,event_type,timestamp,value,extra\r\n007,42,click,1700000000,4.50,x\r\nu2,,view,,,\r\n"
    t = parse_events_bytes("e.csv", data)
    assert "extra" not in t.column_names
    assert fields(t, "user_id", "item_id", "value", "row") == [("007", "42", "4.50", 0), ("u2", None, None, 1)]
    assert json.loads(t.column("raw")[0].as_py())["extra"] == "x"


def test_csv_na_is_an_id_not_a_null():
    t = parse_events_bytes("e.csv", b"user_id,item_id,timestamp\nNA,null,1\n")
    assert fields(t, "user_id", "item_id") == [("NA", "null")]


def test_csv_rows_with_wrong_field_count_become_error_rows():
    t = parse_events_bytes("e.csv", b"user_id,item_id,timestamp\nu,i,1\nu,i,1,extra\nv,j,2\n")
    assert t.column("user_id").to_pylist() == ["u", "v", None]
    assert t.column("row").to_pylist() == [0, 1, 2]
    assert "expected 3 fields, got 4" in t.column("error")[2].as_py()
    assert t.column("raw")[2].as_py() == "u,i,1,extra"


def test_movielens_ratings_csv_header_is_mapped():
    data = b"userId,movieId,rating,timestamp\r\n1,1,4.0,964982703\r\n1,3,3.0,964981247\r\n"
    t = parse_events_bytes("ratings.csv", data)
    assert fields(t, "user_id", "item_id", "value", "event_type", "timestamp") == [
        ("1", "1", "4.0", "rating", "964982703"), ("1", "3", "3.0", "rating", "964981247")]


def test_movielens_u_data_and_ratings_dat():
    u = parse_events_bytes("ml-100k/u.data", b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    dat = parse_events_bytes("ratings.dat", b"1::1193::5::978300760\n")
    assert fields(u, "user_id", "item_id", "value", "event_type") == [("196", "242", "3", "rating"),
                                                                       ("186", "302", "3", "rating")]
    assert fields(dat, "user_id", "item_id", "value", "timestamp") == [("1", "1193", "5", "978300760")]


def test_parquet_keeps_column_types():
    buf = io.BytesIO()
    pq.write_table(pa.table({"user_id": [1, 2], "item_id": ["a", "b"], "timestamp": [1_700_000_000] * 2}), buf)
    t = parse_events_bytes("part-0.parquet", buf.getvalue())
    assert t.schema.field("user_id").type == pa.int64()
    assert t.column("row").to_pylist() == [0, 1]
    r = clean_batch(t, CleaningConfig(), "p")
    assert r.clean.column("user_id").to_pylist() == ["1", "2"]


@pytest.mark.parametrize("name, data, message", [
    ("events.txt", b"{}", "events.txt: unknown event file type"),
    ("bad.parquet", b"not parquet", "bad.parquet: cannot read as events"),
    ("bad.csv", b"", "bad.csv: CSV file has no header line"),
    ("bad.csv", b"a,b\n1,2\n", "bad.csv: no user_id or item_id column"),
    ("bad.jsonl", b"\xff\xfe{}", "bad.jsonl: cannot read as events"),
])
def test_unreadable_files_raise_data_error_naming_the_file(name, data, message):
    with pytest.raises(DataError, match="^" + message.replace(".", r"\.")):
        parse_events_bytes(name, data)


def test_read_events_file_local_path_and_uri(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"user_id": "u", "item_id": "i", "timestamp": 1700000000}\n')
    assert read_events_file(str(path)).column("user_id").to_pylist() == ["u"]
    assert read_events_file(path.as_uri()).column("item_id").to_pylist() == ["i"]


def test_read_events_file_missing_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_events_file(str(tmp_path / "nope.jsonl"))


@pytest.mark.skipif(not os.path.exists(ML_SMALL), reason=f"MovieLens ml-latest-small not found at {ML_SMALL}")
def test_real_ml_latest_small_cleans_without_quarantine():
    t = load_movielens(ML_SMALL)
    start = time.perf_counter()
    r = clean_batch(t, CleaningConfig(), ML_SMALL)
    print(f"ml-latest-small: {t.num_rows} rows cleaned in {time.perf_counter() - start:.3f}s")
    assert (r.clean.num_rows, r.quarantined.num_rows) == (100_836, 0)
    assert r.clean.column("user_id").to_pylist()[:2] == ["1", "1"]


@pytest.mark.skipif(not os.path.exists(ML_100K), reason=f"MovieLens ml-100k not found at {ML_100K}")
def test_real_ml_100k_cleans_without_quarantine():
    t = load_movielens(ML_100K)
    r = clean_batch(t, CleaningConfig(), ML_100K)
    assert (r.clean.num_rows, r.quarantined.num_rows) == (100_000, 0)
    # u.data ratings are 1..5 integers; 4 and 5 clear the default rating min_value 3.5
    assert set(r.clean.column("value").to_pylist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    values, labels = r.clean.column("value").to_pylist(), r.clean.column("label").to_pylist()
    assert all(label == (v >= 3.5) for v, label in zip(values, labels))
    assert len(r.clean.column("dedup_key").unique()) == 100_000
