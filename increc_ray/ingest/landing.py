"""The landing zone: where raw event files arrive, and the clean store after it.

Files land in a folder that is a local path or any pyarrow filesystem URI
(``s3://bucket/prefix``, ``gs://...``, ``file:///...``). Writers never expose a
half-written file: they write ``_tmp-*`` and then move it into place, so a
reader that lists the folder sees whole files only. Processed files are moved
into ``_processed/`` so the folder itself is the queue of pending work.

The clean store is a folder of ``part-<seq>.parquet`` files (CLEAN_SCHEMA);
``seq`` is the stream offset the trainer checkpoints.
"""

from __future__ import annotations

import os
import re
import time
import uuid

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

_PROCESSED = "_processed"
_CONSUMED = "_trainer_offset.json"  # in the clean store: the trainer's checkpointed offset
_PART_RE = re.compile(r"^part-(\d{12})\.parquet$")


def open_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and path for a local path or a pyarrow filesystem URI."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


def write_parquet_atomic(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write ``table`` as Parquet to ``path`` so that readers see the whole file or nothing."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    write_bytes_atomic(fs, path, sink.getvalue())


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes | pa.Buffer) -> None:
    """Write ``data`` to ``path`` so that readers see the whole file or nothing.

    On a local disk the file is fsynced before the rename and the folder after
    it, so an answer sent after this returns survives a crash of the machine.
    """
    folder, name = path.rsplit("/", 1)
    tmp = f"{folder}/_tmp-{uuid.uuid4().hex}-{name}"
    if isinstance(fs, pafs.LocalFileSystem):
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return
    fs.create_dir(folder, recursive=True)
    with fs.open_output_stream(tmp) as out:
        out.write(data)
    fs.move(tmp, path)


class LandingZone:
    """The folder where raw event files arrive (by HTTP ingest or dropped in)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.fs, self.root = open_uri(uri)
        self.fs.create_dir(self.root, recursive=True)

    def new_path(self, prefix: str = "http") -> str:
        """A fresh, unique landing file path (not yet written)."""
        return f"{self.root}/{prefix}-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"

    def write_to(self, path: str, table: pa.Table) -> str:
        """Durably write a raw event table at ``path`` (from ``new_path``)."""
        write_parquet_atomic(self.fs, path, table)
        return path

    def write(self, table: pa.Table, prefix: str = "http") -> str:
        """Durably write a raw event table as a new landing file; returns its path."""
        return self.write_to(self.new_path(prefix), table)

    def pending(self) -> list[str]:
        """Landing files not processed yet, oldest first (by modification time, then name)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        files = []
        for info in infos:
            if info.type != pafs.FileType.File:
                continue
            rel = info.path[len(self.root):].lstrip("/")
            # Hidden, temporary and already-processed files are not work to do.
            if any(part.startswith((".", "_")) for part in rel.split("/")):
                continue
            files.append((info.mtime_ns or 0, info.path))
        return [path for _, path in sorted(files)]

    def sizes(self, paths: list[str]) -> list[int]:
        """The byte size of each of ``paths`` (0 for one gone meanwhile)."""
        return [info.size or 0 for info in self.fs.get_file_info(paths)] if paths else []

    def mark_processed(self, paths: list[str]) -> None:
        """Move processed files under ``_processed/`` so they are not picked up again."""
        done = f"{self.root}/{_PROCESSED}"
        self.fs.create_dir(done, recursive=True)
        for path in paths:
            self.fs.move(path, f"{done}/{self.processed_name(path)}")

    def processed(self) -> list[str]:
        """The files ``mark_processed`` moved away, by name."""
        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.root}/{_PROCESSED}", allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.File)

    def processed_name(self, path: str) -> str:
        """The name of landing file ``path`` under ``_processed/`` (its own name there)."""
        rel = path[len(self.root):].lstrip("/")
        prefix = f"{_PROCESSED}/"
        return rel[len(prefix):] if rel.startswith(prefix) else rel.replace("/", "__")


class CleanStore:
    """Append-only, numbered Parquet parts of cleaned events: the trainer's input stream."""

    def __init__(self, path: str) -> None:
        self.fs, self.root = open_uri(path)
        self.fs.create_dir(self.root, recursive=True)

    def parts(self, after: int = -1) -> list[tuple[int, str]]:
        """(seq, path) of the parts with seq > ``after``, in stream order."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        out = []
        for info in infos:
            m = _PART_RE.match(info.base_name)
            if m and int(m.group(1)) > after:
                out.append((int(m.group(1)), info.path))
        return sorted(out)

    def path_of(self, seq: int) -> str:
        return f"{self.root}/part-{seq:012d}.parquet"

    def probe(self, after: int, n: int = 8) -> list[tuple[int, str, int | None]]:
        """(seq, path, mtime_ns) of the parts ``after`` + 1, + 2, ... that exist, up to the first
        missing one: one stat per expected name instead of a listing of the whole folder, whose
        cost grows with every part ever written (a week at one part a second is 600,000)."""
        out: list[tuple[int, str, int | None]] = []
        while True:
            seqs = range(after + 1 + len(out), after + 1 + len(out) + n)
            for seq, info in zip(seqs, self.fs.get_file_info([self.path_of(s) for s in seqs])):
                if info.type != pafs.FileType.File:
                    return out
                out.append((seq, info.path, info.mtime_ns))

    def last_seq(self) -> int:
        parts = self.parts()
        return parts[-1][0] if parts else -1

    def append(self, table: pa.Table, seq: int) -> str:
        path = self.path_of(seq)
        write_parquet_atomic(self.fs, path, table)
        return path

    def read(self, path: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(path, filesystem=self.fs, columns=columns)

    def read_all(self, columns: list[str] | None = None, after: int = -1) -> pa.Table | None:
        """All parts after ``after`` as one table, or None when there are none. A part pruned
        between the listing and its read (``increc_ray.ingest.retention``) is left out."""
        tables = [t for _, p in self.parts(after) if (t := self.read_if_there(p, columns)) is not None]
        return pa.concat_tables(tables) if tables else None

    def read_if_there(self, path: str, columns: list[str] | None = None) -> pa.Table | None:
        try:
            return self.read(path, columns)
        except FileNotFoundError:
            return None

    # ---- retention (increc_ray.ingest.retention) -------------------------------------------------

    def newest_event_ms(self, path: str) -> int | None:
        """The newest ``timestamp`` in part ``path``, from its footer's statistics (no row read)."""
        meta = pq.read_metadata(path, filesystem=self.fs)
        col = meta.schema.to_arrow_schema().get_field_index("timestamp")
        newest = None
        for rg in range(meta.num_row_groups):
            stats = meta.row_group(rg).column(col).statistics
            if stats is None or not stats.has_min_max:
                return None
            top = stats.max
            top = round(top.timestamp() * 1000) if hasattr(top, "timestamp") else int(top)  # ms: exact
            newest = top if newest is None else max(newest, top)
        return newest

    def write_consumed(self, offset: dict) -> None:
        """The trainer's checkpointed read position: parts before its ``seq`` are never read again."""
        import json

        write_bytes_atomic(self.fs, f"{self.root}/{_CONSUMED}", json.dumps(offset).encode())

    def consumed(self) -> dict | None:
        """What ``write_consumed`` last wrote, or None (no checkpoint yet: nothing may be pruned)."""
        import json

        try:
            with self.fs.open_input_stream(f"{self.root}/{_CONSUMED}") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None
