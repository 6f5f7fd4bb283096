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

    >>> import tempfile, numpy as np
    >>> a = WeightArchive(tempfile.mkdtemp(), keep=2)
    >>> for v in (3, 5, 8):
    ...     a.save({"version": v, "state_dict": {"w": np.zeros(2)}, "vocab": ["x"], "metrics": {}})
    >>> a.versions(), a.load(5)["vocab"]
    ([5, 8], ['x'])
    """

    NAME = "weights"

    def __init__(self, root: str, keep: int) -> None:
        self.root, self.keep = root, keep
        os.makedirs(root, exist_ok=True)

    def versions(self) -> list[int]:
        from increc_ray.learn import serialize

        return sorted(int(n) for n in os.listdir(self.root)
                      if n.isdigit() and serialize.exists(os.path.join(self.root, n), self.NAME))

    def save(self, weights: dict) -> None:
        """Keep ``weights`` (written whole before it is listed), then drop the oldest beyond ``keep``."""
        import shutil

        from increc_ray.learn import serialize

        if weights.get("fallback"):
            return
        folder = os.path.join(self.root, str(int(weights["version"])))
        os.makedirs(folder, exist_ok=True)
        serialize.save_tree(weights, folder, self.NAME)  # its JSON is written last: listed once whole
        for old in self.versions()[: -self.keep]:
            shutil.rmtree(os.path.join(self.root, str(old)), ignore_errors=True)

    def load(self, version: int) -> dict:
        """The weights of ``version``; ``KeyError`` when it is not kept."""
        from increc_ray.learn import serialize

        if version not in self.versions():
            raise KeyError(version)
        return serialize.load_tree(os.path.join(self.root, str(version)), self.NAME)


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
