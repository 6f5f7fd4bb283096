"""The replica's collector watch (increc_ray.serve.gcwatch): every collection counted and timed by
generation, and the freeze that puts the objects alive at a replica's start out of its reach."""

import gc

import pytest

from increc_ray.serve import gcwatch


@pytest.fixture()
def unfrozen():
    yield
    gc.unfreeze()  # the rest of the test session collects as before


def test_each_collection_is_counted_and_timed_by_generation():
    w = gcwatch.watch()
    assert gcwatch.watch() is w and gc.callbacks.count(w) == 1, "installed once per process"
    before = w.stats()
    gc.collect(0)
    gc.collect()
    after = w.stats()
    assert after["collections"][0] >= before["collections"][0] + 1
    assert after["collections"][2] >= before["collections"][2] + 1
    assert after["total_ms"][2] > before["total_ms"][2] and after["max_ms"][2] > 0


def test_frozen_objects_leave_the_collectors_generations(unfrozen):
    class Node:
        pass

    alive = [Node() for _ in range(100)]
    assert any(o is alive[0] for o in gc.get_objects())
    frozen = gcwatch.freeze()
    assert frozen >= 100 and gcwatch.watch().stats()["frozen_objects"] == frozen
    assert not any(o is alive[0] for o in gc.get_objects()), "a collection would still walk it"
