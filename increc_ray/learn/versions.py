"""Weight version numbers: unique, and increasing across restarts of any part of the app.

The train worker is the only publisher. It takes each number from a file under ``data_dir``
(written atomically, then renamed), so a restarted worker, a restarted registry replica or a
redeployed app never hands out a number twice. A number is spent even if its publish fails:
gaps are fine, repeats are not.
"""

from __future__ import annotations

import collections
import concurrent.futures
import logging
import os
import threading
from typing import Callable

logger = logging.getLogger(__name__)


class VersionCounter:
    """The last version number handed out, kept in ``path``.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "versions", "last")
    >>> c = VersionCounter(path, at_least=3)
    >>> c.next(), c.next(), VersionCounter(path).next()
    (4, 5, 6)
    """

    def __init__(self, path: str, at_least: int = 0) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._last = max(self._read(), int(at_least))

    @property
    def last(self) -> int:
        return self._last

    def next(self) -> int:
        n = self._last + 1
        tmp = f"{self.path}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(str(n))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)  # atomic: a crash leaves the old number or the new one
        self._last = n
        return n

    def _read(self) -> int:
        try:
            with open(self.path, encoding="utf-8") as f:
                return int(f.read().strip() or 0)
        except FileNotFoundError:
            return 0


class WeightArchive:
    """The newest ``keep`` promoted weight sets (``IncrementalLearner.export_weights``), one folder
    ``<root>/<version>/`` each as safetensors plus JSON (``increc_ray.learn.serialize``): what
    ``POST /admin/rollback`` can return serving to. Fallback markers hold no weights and are not kept.

    An overlay version (``learn.published``: a base shared by many versions, and the rows moved
    since it) keeps its base once, under ``<root>/bases/<base id>/``, and its own folder the moved
    rows: at 1M items a whole version was 500 MiB and 2 s of the trainer's CPU to write, and with
    one written per publish the archive thread wanted a core of its own. ``load`` gives every
    version back whole. A base goes once no kept version names it.

    >>> import tempfile, numpy as np
    >>> a = WeightArchive(tempfile.mkdtemp(), keep=2)
    >>> for v in (3, 5, 8):
    ...     a.save({"version": v, "state_dict": {"w": np.zeros(2)}, "vocab": ["x"], "metrics": {}})
    >>> a.versions(), a.load(5)["vocab"]
    ([5, 8], ['x'])
    """

    NAME = "weights"
    BASES = "bases"  # <root>/bases/<base id>/: weights.* (the table), vocab.* (its vocabulary)
    VOCAB = "vocab"

    def __init__(self, root: str, keep: int) -> None:
        self.root, self.keep = root, keep
        os.makedirs(root, exist_ok=True)

    def versions(self) -> list[int]:
        from increc_ray.learn import serialize

        return sorted(int(n) for n in os.listdir(self.root)
                      if n.isdigit() and serialize.exists(os.path.join(self.root, n), self.NAME))

    def bases(self) -> list[str]:
        """The ids of the overlay bases kept."""
        from increc_ray.learn import serialize

        folder = os.path.join(self.root, self.BASES)
        return sorted(b for b in (os.listdir(folder) if os.path.isdir(folder) else [])
                      if serialize.exists(os.path.join(folder, b), self.NAME))

    def save(self, weights: dict) -> None:
        """Keep ``weights`` (written whole before it is listed; an overlay's base first, unless
        kept already), then drop the oldest beyond ``keep`` and the bases no kept version names."""
        import shutil

        from increc_ray.learn import published, serialize

        if weights.get("fallback"):
            return
        if published.is_overlay(weights):
            items = weights[published.ITEM_ROWS]
            base_dir = os.path.join(self.root, self.BASES, str(items["base_id"]))
            os.makedirs(base_dir, exist_ok=True)
            if not serialize.exists(base_dir, self.NAME):
                # the published base is column-major: its transpose is row-major, written without a
                # transposing copy
                serialize.save_tree({"base_t": items["base"].T}, base_dir, self.NAME)
            # the base's vocabulary, as every overlay of it that carries a tail has it (the first
            # version of a base may carry a whole list instead)
            if items.get("vocab_base") is not None and not serialize.exists(base_dir, self.VOCAB):
                serialize.save_tree({"vocab_base": items["vocab_base"]}, base_dir, self.VOCAB)
            weights = published.without_base(weights)
        folder = os.path.join(self.root, str(int(weights["version"])))
        os.makedirs(folder, exist_ok=True)
        serialize.save_tree(weights, folder, self.NAME)  # its JSON is written last: listed once whole
        for old in self.versions()[: -self.keep]:
            shutil.rmtree(os.path.join(self.root, str(old)), ignore_errors=True)
        bases = self.bases()
        named = {self._base_of(v) for v in self.versions()} if bases else set()  # whole versions: no base
        for base in bases:
            if base not in named:
                shutil.rmtree(os.path.join(self.root, self.BASES, base), ignore_errors=True)

    def load(self, version: int) -> dict:
        """The weights of ``version``, whole; ``KeyError`` when it is not kept."""
        import numpy as np

        from increc_ray.learn import published, serialize

        if version not in self.versions():
            raise KeyError(version)
        weights = serialize.load_tree(os.path.join(self.root, str(version)), self.NAME)
        if not published.is_overlay(weights):
            return weights
        items = weights[published.ITEM_ROWS]
        base = serialize.load_tree(os.path.join(self.root, self.BASES, str(items["base_id"])), self.NAME)
        items = {**items, "base": np.asarray(base["base_t"]).T}
        if "vocab_base" in items:
            items["vocab_base"] = serialize.load_tree(
                os.path.join(self.root, self.BASES, str(items["base_id"])), self.VOCAB)["vocab_base"]
        return published.dense({**weights, published.ITEM_ROWS: items})

    def _base_of(self, version: int) -> str | None:
        """The base id a kept version names (None: a whole version); read from its JSON alone."""
        import json

        from increc_ray.learn import published

        try:
            with open(os.path.join(self.root, str(version), f"{self.NAME}.json"), encoding="utf-8") as f:
                tree = json.load(f)["tree"]
        except (OSError, ValueError, KeyError):
            return None
        items = tree.get(published.ITEM_ROWS) if isinstance(tree, dict) else None
        return str(items["base_id"]) if isinstance(items, dict) and "base_id" in items else None


class KeepNewest:
    """Writes published versions in a thread of its own, the newest first: at most one version
    waits, and one published while another waits replaces it (``skipped`` counts those). At 1M
    items a version is 500 MiB and its write takes longer than an update: a queue of every
    version would grow without bound, each entry holding its weights.

    >>> import time
    >>> kept = []
    >>> k = KeepNewest(lambda w: (time.sleep(0.05), kept.append(w["version"])))
    >>> for v in range(1, 6):
    ...     k.submit({"version": v})
    >>> k.wait(); kept[-1], len(kept) + k.skipped  # the newest is always written
    (5, 5)
    """

    def __init__(self, write: Callable[[dict], None]) -> None:
        self._write = write
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="increc-archive")
        self._lock = threading.Lock()
        self._next: dict | None = None  # the newest version submitted and not yet taken
        self._pinned: collections.deque[dict] = collections.deque()  # wait whatever comes after them
        self._busy = False  # a drain is queued or running
        self._done: concurrent.futures.Future = self._pool.submit(lambda: None)
        self.skipped = 0

    def submit(self, weights: dict, pin: bool = False) -> None:
        """Write ``weights`` soon; a pinned version (a rollback's) is never replaced."""
        with self._lock:
            if pin:
                self._pinned.append(weights)
            else:
                if self._next is not None:
                    self.skipped += 1
                self._next = weights
            if not self._busy:
                self._busy = True
                self._done = self._pool.submit(self._drain)

    def wait(self) -> None:
        """Until every version submitted so far is written or skipped."""
        while True:
            with self._lock:
                done, busy = self._done, self._busy
            done.result()
            if not busy or done is self._done:
                return

    def shutdown(self) -> None:
        self.wait()
        self._pool.shutdown(wait=True)

    def _drain(self) -> None:
        while True:
            with self._lock:
                if self._pinned:
                    weights = self._pinned.popleft()
                else:
                    weights, self._next = self._next, None
                if weights is None:
                    self._busy = False
                    return
            try:
                self._write(weights)
            except Exception:  # the next version is still written
                logger.exception("could not keep version %s", weights.get("version"))
