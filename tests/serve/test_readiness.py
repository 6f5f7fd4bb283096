"""When a Recommender replica starts taking requests (``Recommender._wait_ready``), Ray-free:
the replica's class is built with stand-in handles for the trainer and the user-history
replica, which answer, fail or hang as each test needs. The deployed path (a replica added by
autoscaling under load) is measured by ``bench/serve_load.py --phases swaps``."""

from __future__ import annotations

import asyncio
import threading

from increc_ray.serve.recommender import Recommender
from increc_ray.serve.standin import TIMEOUT, Handle


def _replica(history: Handle, config: dict | None = None):
    replica = Recommender.func_or_class.__new__(Recommender.func_or_class)
    cfg = {"serving": {"ready_timeout_s": 0.0, "history_lease_s": 0.3}, "auth": {"required": False}, **(config or {})}
    trainer = Handle(wait_newer=lambda after, timeout_s: None)  # nothing published yet
    asyncio.run(replica.__init__(cfg, Handle(), history, trainer))
    return replica


def test_not_ready_without_a_fallback_then_ready_once_the_popular_list_arrives():
    # the history replica answers neither the copy's follow nor the popular list: a replica
    # that took requests now would refuse a cold user with a 503
    up = threading.Event()

    def popular(k, exclude):
        return [("i1", 3.0), ("i2", 1.0)] if up.is_set() else TIMEOUT

    replica = _replica(Handle(follow=lambda *a: TIMEOUT, popular=popular))
    try:
        assert replica._weights_tried.wait(10.0) and replica._copy_tried.wait(10.0)  # both polls done
        assert not replica._wait_ready(0.5)
        up.set()
        assert replica._wait_ready(5.0)
        assert replica._popular == [("i1", 3.0), ("i2", 1.0)]
    finally:
        replica._stop.set()


def test_a_history_copy_is_a_fallback_on_its_own():
    import pickle

    from increc_ray.serve.history import UserHistoryIndex

    snapshot = pickle.dumps(UserHistoryIndex())
    follow = lambda sub, epoch, after, timeout_s: {"epoch": "e", "seq": 0, "snapshot": snapshot, "rows": []}  # noqa: E731
    replica = _replica(Handle(follow=follow, popular=lambda k, exclude: TIMEOUT))
    try:
        assert replica._wait_ready(5.0)
        assert replica._popular is None and replica._copy is not None
    finally:
        replica._stop.set()
