"""The serving processes' collector watch (increc_ray.serve.gcwatch): every collection counted and
timed by generation."""

import gc

from increc_ray.serve import gcwatch


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
