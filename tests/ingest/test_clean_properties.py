"""Property-based tests (hypothesis) of the cleaning stage: arbitrary input rows either become
valid events or land in quarantine with a reason, and nothing crashes a pass.

hypothesis: it generates the odd inputs (NaN, huge ints, unicode oddities, ancient and future
timestamps) that hand-picked cases miss, and shrinks a failure to its smallest form.
"""

import math
import tempfile
from datetime import datetime, timedelta, timezone

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from increc_ray.config import Config, CleaningConfig
from increc_ray.ingest.clean import clean_batch_tagged
from increc_ray.ingest.events import RAW_COLUMNS, raw_table_from_records
from increc_ray.ingest.pipeline import EventPipeline
from increc_ray.ingest.ray_job import _clean_file_batch, clean_files_locally

NOW = datetime(2026, 12, 1, tzinfo=timezone.utc)
CFG = CleaningConfig()
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

odd_text = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(categories=["Cc", "Cf", "Zs", "Mn", "So", "Cs"]), max_size=10),
    st.sampled_from(["", " ", "\x00", "NaN", "inf", "-0", "1e309", "0x1F", "2026-12-01T00:00:00Z",
                     "1969-12-31", "9999-12-31T23:59:59Z", "click", "purchase", "\u202e", "ｕ１"]),
    st.text(min_size=257, max_size=300),  # longer than max_id_length
)
# what a loader can hand over: Arrow strings are UTF-8, so no lone surrogates
arrow_text = odd_text.filter(lambda t: not any(0xD800 <= ord(ch) <= 0xDFFF for ch in t))
json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), odd_text,
)
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=6)
timestamp = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),  # seconds or ms, ancient or future
    st.integers(min_value=1_600_000_000, max_value=1_800_000_000),  # plausible seconds
    st.floats(allow_nan=True, allow_infinity=True), st.datetimes().map(lambda d: d.isoformat()), odd_text,
)
field_value = {
    "user_id": st.one_of(st.sampled_from(["u1", "u2", 7, 7.0]), json_value),
    "item_id": st.one_of(st.sampled_from(["i1", "i2", 3, "3.0"]), json_value),
    "event_id": st.one_of(st.none(), st.text(max_size=8), json_value),
    "event_type": st.one_of(st.sampled_from(["click", "view", "purchase", "rating", "Click ", "bogus"]), json_value),
    "timestamp": timestamp,
    "value": st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), json_value),
}
record = st.fixed_dictionaries({}, optional={k: v for k, v in field_value.items()}).flatmap(
    lambda d: st.dictionaries(st.text(max_size=6), json_value, max_size=2).map(lambda extra: {**extra, **d}))
records = st.lists(st.one_of(record, json_value), max_size=25)


TRIED = [0]


@pytest.fixture(scope="module", autouse=True)
def _record_totals():
    yield
    from conftest import record

    record("hypothesis: arbitrary records, columns and file bytes through cleaning and ingest", trials=1,
           inputs=TRIED[0])


def check_tagged(tagged: pa.Table, n: int) -> None:
    TRIED[0] += 1
    assert tagged.num_rows == n
    rows = tagged.to_pylist()
    assert sorted(r["row"] for r in rows) == list(range(n)), "every input row once, clean or quarantined"
    lo = datetime.fromisoformat(CFG.min_timestamp.replace("Z", "+00:00"))
    for r in rows:
        if r["reason"] is not None:
            assert isinstance(r["reason"], str) and r["reason"].strip(), r
            assert r["raw"] is not None, "a quarantined row keeps what was sent"
            continue
        for name in ("user_id", "item_id"):
            assert isinstance(r[name], str) and 0 < len(r[name]) <= CFG.max_id_length and r[name].strip() == r[name]
        assert r["event_type"] in CFG.event_types
        assert lo <= r["timestamp"] <= NOW + timedelta(seconds=CFG.max_future_skew_s)
        assert r["label"] in (0, 1) and math.isfinite(r["weight"]) and r["weight"] >= 0
        assert r["value"] is None or math.isfinite(r["value"])
        assert r["dedup_key"] and r["event_id"]


@SETTINGS
@given(records)
def test_arbitrary_records_become_valid_events_or_quarantined_rows_with_a_reason(recs):
    tagged = clean_batch_tagged(raw_table_from_records(recs), CFG, source="http", now=NOW)
    check_tagged(tagged, len(recs))


@SETTINGS
@given(st.lists(st.fixed_dictionaries({c: st.one_of(st.none(), arrow_text) for c in RAW_COLUMNS}), max_size=20))
def test_arbitrary_text_columns_as_a_file_loader_gives_them(rows):
    table = pa.table({c: pa.array([r[c] for r in rows], pa.string()) for c in RAW_COLUMNS})
    check_tagged(clean_batch_tagged(table, CFG, source="drop.csv", now=NOW), len(rows))


@SETTINGS
@given(st.sampled_from(["x.jsonl", "x.json", "x.csv", "x.parquet", "x.txt", "noext"]), st.binary(max_size=300))
def test_arbitrary_file_bytes_never_crash_a_pass(name, data):
    cfg = Config.from_dict({})
    TRIED[0] += 1
    out = _clean_file_batch(pa.table({"path": [f"/landing/{name}"], "bytes": pa.array([data], pa.binary())}), cfg)
    assert all(r["reason"] is None or r["reason"].strip() for r in out.to_pylist())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records)
def test_http_ingest_then_a_pass_accounts_for_every_record_and_applies_each_event_once(recs):
    TRIED[0] += 1
    with tempfile.TemporaryDirectory() as d:
        p = EventPipeline(Config.from_dict({"data_dir": d}), clean_files=clean_files_locally)
        report, clean = p.ingest(recs)
        assert report.accepted + report.duplicates + report.rejected_count == len(recs)
        again, _ = p.ingest(recs)  # a client's retry of the whole request
        assert again.accepted == 0
        summary, fresh = p.process_pending()
        stored = p.store.read_all()
        n_stored = 0 if stored is None else stored.num_rows
        assert n_stored == report.accepted, "every accepted event is applied, once"
        if stored is not None:
            keys = stored.column("dedup_key").to_pylist()
            assert len(set(keys)) == len(keys)
            assert sorted(keys) == sorted(clean.column("dedup_key").to_pylist())
        assert summary.get("quarantined", 0) == 0 and (fresh is None or fresh.num_rows == 0)
        assert np.all(np.isfinite(clean.column("weight").to_numpy(zero_copy_only=False)))
