"""Weight version numbers: unique, and increasing across restarts of any part of the app.

The train worker is the only publisher. It takes each number from a file under ``data_dir``
(written atomically, then renamed), so a restarted worker, a restarted registry replica or a
redeployed app never hands out a number twice. A number is spent even if its publish fails:
gaps are fine, repeats are not.
"""

from __future__ import annotations

import os


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
