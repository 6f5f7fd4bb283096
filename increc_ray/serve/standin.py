"""Stand-in deployment handles, to run a Serve deployment's class without a cluster (Ray-free).

``Handle(method=answer)`` answers ``handle.method.remote(*args)`` with ``answer(*args)``, as a
``DeploymentResponse`` would: ``.result(timeout_s=...)`` from a thread, ``await`` on an event
loop. An answer of ``TIMEOUT`` is a call that does not come back in time (``.result`` raises
``TimeoutError`` after a short sleep). Used by ``bench/request_path.py`` and the replica's unit
tests (``tests/serve/test_readiness.py``); the deployed path is tested against a real cluster.
"""

from __future__ import annotations

import time
from typing import Any, Callable

TIMEOUT = object()  # an answer that does not come in time


class Call:
    """One call's answer, read when asked for."""

    def __init__(self, answer: Callable[[], Any]) -> None:
        self._answer = answer

    def result(self, timeout_s: float | None = None) -> Any:
        got = self._answer()
        if got is TIMEOUT:
            time.sleep(min(timeout_s or 0.05, 0.05))
            raise TimeoutError("no answer")
        return got

    def __await__(self):
        got = self._answer()
        if got is TIMEOUT:
            raise TimeoutError("no answer")
        return got
        yield  # noqa: B901 (a generator: ``await`` needs an iterator)


class Handle:
    """``handle.method.remote(*args)`` answers ``answers[method](*args)``."""

    def __init__(self, **answers: Callable[..., Any]) -> None:
        self._answers = answers

    def __getattr__(self, method: str):
        answer = self._answers[method]
        return type("Method", (), {"remote": staticmethod(lambda *a: Call(lambda: answer(*a)))})()
