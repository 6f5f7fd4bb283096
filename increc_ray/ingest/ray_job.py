"""The Ray Data job: landing files -> tagged cleaned rows (``clean.TAGGED_SCHEMA``).

One file per batch, so a file that cannot be parsed at all becomes one quarantined row
(reason ``file: ...``) without sinking the others.
"""

from __future__ import annotations

import pyarrow as pa

from increc_ray.config import Config
from increc_ray.ingest.clean import TAGGED_SCHEMA, clean_batch_tagged


def _clean_file_batch(batch: pa.Table, cfg: Config) -> pa.Table:
    """Ray Data map: (path, bytes) rows -> tagged cleaned rows, one file at a time."""
    from increc_ray.errors import DataError
    from increc_ray.ingest.loaders import parse_events_bytes

    out = []
    for path, data in zip(batch.column("path").to_pylist(), batch.column("bytes").to_pylist()):
        try:
            raw = parse_events_bytes(path.rsplit("/", 1)[-1], data)
            out.append(clean_batch_tagged(raw, cfg.cleaning, source=path))
        except DataError as e:
            # A file that cannot be read at all is quarantined as one row, not dropped.
            out.append(pa.Table.from_pylist(
                [{"row": -1, "source": path, "reason": f"file: {e}", "raw": path}], schema=TAGGED_SCHEMA))
    return pa.concat_tables(out) if out else TAGGED_SCHEMA.empty_table()


def clean_files_locally(files: list[str], fs, cfg: Config) -> pa.Table:
    """The same cleaning as the Ray Data job, in this process (small inputs, tests)."""
    data = [fs.open_input_stream(f).readall() for f in files]
    return _clean_file_batch(pa.table({"path": files, "bytes": pa.array(data, pa.binary())}), cfg)


def clean_files_with_ray_data(files: list[str], fs, cfg: Config) -> pa.Table:
    """Read and clean ``files`` in a Ray Data job; returns the tagged rows of all files."""
    import ray

    ds = ray.data.read_binary_files(files, filesystem=fs, include_paths=True,
                                    ray_remote_args={"num_cpus": 0.25})
    ds = ds.map_batches(_clean_file_batch, fn_kwargs={"cfg": cfg}, batch_format="pyarrow",
                        batch_size=1, num_cpus=0.25)
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    if not tables:
        return TAGGED_SCHEMA.empty_table()
    return pa.concat_tables([t.cast(TAGGED_SCHEMA) if t.schema != TAGGED_SCHEMA else t for t in tables])
