import os

import pyarrow as pa

from increc_ray.ingest.landing import CleanStore, LandingZone


def test_landing_lists_whole_files_oldest_first_and_skips_temp_and_processed(tmp_path):
    zone = LandingZone(str(tmp_path / "landing"))
    first = zone.write(pa.table({"a": [1]}))
    second = zone.write(pa.table({"a": [2]}))
    (tmp_path / "landing" / "_tmp-partial.parquet").write_bytes(b"half")
    (tmp_path / "landing" / ".hidden").write_bytes(b"x")
    os.utime(first, ns=(1, 1))
    assert zone.pending() == [first, second]
    zone.mark_processed([first])
    assert zone.pending() == [second]
    assert os.listdir(tmp_path / "landing" / "_processed")


def test_clean_store_parts_are_numbered_and_read_after_offset(tmp_path):
    store = CleanStore(str(tmp_path / "clean"))
    assert store.last_seq() == -1 and store.read_all() is None
    store.append(pa.table({"x": [1, 2]}), 0)
    store.append(pa.table({"x": [3]}), 1)
    assert store.last_seq() == 1
    assert [s for s, _ in store.parts(after=0)] == [1]
    assert store.read_all(after=-1).column("x").to_pylist() == [1, 2, 3]
