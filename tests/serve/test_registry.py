"""serve.registry on a real local Ray cluster: an overlay version's base is put into the object
store once and travels by reference; a version that leaves out a base the registry does not hold
publishes nothing (the trainer sends it whole then); ``resolve`` hands back the base's values."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from increc_ray.learn import published
from increc_ray.serve.registry import WeightRegistry, resolve

pytestmark = pytest.mark.integration


def _overlay(version: int, base_id: str, base: np.ndarray | None, rows: list[int]) -> dict:
    values = np.asfortranarray(np.full((len(rows), 4), -float(version), dtype=np.float32))
    return {"version": version, "state_dict": {"w": np.ones(3, dtype=np.float32)}, "metrics": {}, "vocab": ["a"],
            published.ITEM_ROWS: {"base_id": base_id, "base": base, "rows": np.asarray(rows, dtype=np.int64),
                                  "values": values}}


def test_an_overlays_base_is_put_once_and_a_missing_one_is_asked_for(ray_cluster):
    ray = ray_cluster
    base = np.asfortranarray(np.arange(40, dtype=np.float32).reshape(10, 4))

    async def run():
        reg = WeightRegistry()
        assert await reg.publish(_overlay(1, "b1", None, [1])) == 0, "published without the base it needs"
        assert reg.version == 0
        assert await reg.publish(_overlay(2, "b1", base, [1, 2])) == 2
        assert await reg.publish(published.without_base(_overlay(3, "b1", base, [1, 2, 5]))) == 3
        assert await reg.publish(published.without_base(_overlay(4, "b2", base, [1]))) == 0, "another base"
        newer = await reg.wait_newer(2, 1.0)
        # a second base, then a version on the first again (a gate's snapshot): both are held ...
        assert await reg.publish(_overlay(5, "b2", base + 1, [])) == 5
        assert await reg.publish(published.without_base(_overlay(6, "b1", base, [0]))) == 6
        # ... but no more than two: the one used least recently goes
        assert await reg.publish(_overlay(7, "b3", base, [])) == 7
        assert await reg.publish(published.without_base(_overlay(8, "b1", base, []))) == 8
        assert await reg.publish(published.without_base(_overlay(9, "b2", base, []))) == 0
        return reg, newer

    reg, (version, (ref,)) = asyncio.run(run())
    assert version == 3
    got = ray.get(ref)
    assert isinstance(got[published.ITEM_ROWS]["base"], ray.ObjectRef), "the base travels by reference"
    whole = published.dense(resolve(got))["state_dict"][published.ITEM_KEY]
    want = base.copy()
    want[[1, 2, 5]] = -3.0
    assert np.array_equal(whole, want)
    assert reg.counts["versions"] == 6 and reg.counts["overlays"] == 6 and reg.counts["bases"] == 3
    assert resolve({"version": 7, "fallback": True}) == {"version": 7, "fallback": True}


def test_the_registry_quantizes_each_base_once_from_the_last_for_every_replica(ray_cluster):
    import torch

    from increc_ray.serve.quantized import Int8Rows, Int8Settings

    ray = ray_cluster
    g = np.random.default_rng(0)
    first = np.asfortranarray(g.standard_normal((300, 32)).astype(np.float32))  # column-major, as published
    second = first.copy(order="F")
    second[[3, 250]] += 1.0

    async def run():
        reg = WeightRegistry(int8=Int8Settings(min_items=0))
        assert await reg.publish(_overlay(1, "b1", first, [1])) == 1
        a = await reg.int8_rows("b1", 30.0)
        assert await reg.publish(published.without_base(_overlay(2, "b1", first, [1, 2]))) == 2
        assert await reg.publish(_overlay(3, "b2", second, [])) == 3
        b = await reg.int8_rows("b2", 30.0)
        missing = await reg.int8_rows("b0", 1.0)
        off = WeightRegistry()
        await off.publish(_overlay(1, "b1", first, [1]))
        return reg, a, b, missing, await off.int8_rows("b1", 1.0)

    reg, (a,), (b,), missing, off = asyncio.run(run())
    for ref, table in ((a, first), (b, second)):
        got, want = Int8Rows.from_arrays(ray.get(ref)), Int8Rows(torch.from_numpy(table))
        assert torch.equal(got.q, want.q) and torch.equal(got.scale.float(), want.scale.float())
    assert reg.int8_counts["built"] == 2, "once per base, not per version"
    assert reg.int8_counts["last_quantized"] == 2, "the second base quantized only the rows that moved"
    assert missing is None and off is None, "a base not held, or a registry not quantizing: the replica builds"
