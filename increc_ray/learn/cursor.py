"""The trainer's read position in the clean store (Ray-free core).

The offset is (part seq, rows consumed in that part): a large part (say a whole MovieLens file
dropped into the landing folder) is learned in slices of ``trainer.max_new_events`` without ever
re-applying a row, and a checkpoint that holds the offset resumes exactly where it stopped.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.parquet as pq


class StreamCursor:
    """Reads the clean store from an offset, in slices of at most ``max_rows`` rows.

    New parts are found by name: the writer (one cleaning thread) numbers them without gaps, so
    a look stats the next few expected names (``CleanStore.probe``) rather than listing the whole
    folder, whose cost grows with every part ever written. A full listing is still made at the
    start, after a ``seek``, and after ``RELIST_S`` without a new part (a gap left by a writer
    that crashed between taking a number and writing its part would otherwise stop the cursor)."""

    RELIST_S = 30.0

    def __init__(self, store, seq: int = -1, row: int = 0) -> None:
        self.store, self.seq, self.row = store, seq, row  # next row to read is `row` of part `seq`
        self._cache: tuple[int, pa.Table] | None = None
        self._nrows: dict[int, int] = {}
        self._known: list[tuple[int, str, int | None]] = []  # (seq, path, mtime_ns) of parts >= seq found so far
        self._listed = False
        self._found_at = -float("inf")  # monotonic time of the last listing or of the last part found

    def _parts(self) -> list[tuple[int, str, int | None]]:
        """The parts from ``seq`` on, the cursor's own and any new since the last look."""
        if self._known and self._known[0][0] < self.seq:  # passed: forget them
            self._known = [p for p in self._known if p[0] >= self.seq]
            self._nrows = {s: n for s, n in self._nrows.items() if s >= self.seq}
        now = time.monotonic()
        top = self._known[-1][0] if self._known else max(self.seq, 0) - 1  # seq -1: nothing read yet
        if not self._listed or now - self._found_at > self.RELIST_S:
            self._known += [(s, p, None) for s, p in self.store.parts(after=top)]
            self._listed, self._found_at = True, now
        else:
            new = self.store.probe(after=top)
            if new:
                self._known += new
                self._found_at = now
        return self._known

    def next_slice(self, max_rows: int) -> tuple[pa.Table | None, float | None]:
        """Up to ``max_rows`` unread rows, across as many parts as hold them (one read, one
        gate test and one online metric for what arrived since the last look, however many
        cleaning passes wrote it), and the write time of the newest part they come from."""
        pieces, written, n = [], None, 0
        for seq, path, mtime in self._parts():
            if n >= max_rows:
                break
            if self._cache is None or self._cache[0] != seq:
                self._cache = (seq, self.store.read(path))
            table = self._cache[1]
            start = self.row if seq == self.seq else 0
            if start >= table.num_rows:
                continue
            piece = table.slice(start, max_rows - n)
            self.seq, self.row = seq, start + piece.num_rows
            pieces.append(piece)
            n += piece.num_rows
            mtime = mtime or self.store.fs.get_file_info(path).mtime_ns
            written = mtime / 1e9 if mtime else written
        if not pieces:
            return None, None
        return (pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces, promote_options="default")), written

    def offset(self) -> dict:
        return {"seq": self.seq, "row": self.row}

    def _rows(self, seq: int, path: str) -> int:
        n = self._nrows.get(seq)
        if n is None:  # parts are immutable: count each once, from its footer
            with self.store.fs.open_input_file(path) as f:
                n = self._nrows[seq] = pq.ParquetFile(f).metadata.num_rows
        return n

    def unread(self) -> int:
        """Rows in the store after the offset."""
        n = 0
        for seq, path, _ in self._parts():
            n += self._rows(seq, path) - (self.row if seq == self.seq else 0)
        return n

    def read_all(self) -> tuple[pa.Table | None, list[tuple[int, int]]]:
        """Every row of the store, from its first part, and (seq, first row in the table) of
        each part, for ``offset_of``; the cursor does not move."""
        tables, starts, n = [], [], 0
        for seq, path in self.store.parts():
            if (t := self.store.read_if_there(path)) is None:  # pruned meanwhile
                continue
            tables.append(t)
            starts.append((seq, n))
            n += t.num_rows
        return (pa.concat_tables(tables) if tables else None), starts

    @staticmethod
    def offset_of(starts: list[tuple[int, int]], index: int) -> dict:
        """The offset of row ``index`` of ``read_all``'s table."""
        seq, first = next((s, f) for s, f in reversed(starts) if f <= index)
        return {"seq": seq, "row": index - first}

    def seek(self, offset: dict) -> None:
        self.seq, self.row = offset["seq"], offset["row"]
        self._known, self._listed = [], False  # back before the parts it knows: list again
