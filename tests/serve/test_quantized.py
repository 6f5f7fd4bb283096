"""The int8 first pass (``serving.index: int8``, increc_ray.serve.quantized) against the exact scan:
answers are ranked by exact scores, find what the exact scan finds, follow overlay versions on
one quantized base, and never answer pad, holes or seen items."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from increc_ray.config import ModelConfig, TrainerConfig
from increc_ray.learn import published
from increc_ray.learn.frozen import RowLog
from increc_ray.learn.learner import IncrementalLearner
from increc_ray.serve.quantized import Int8Index, Int8Rows, Int8Settings
from increc_ray.serve.scorer import Scorer

import clustered
from clustered import recall, weights

@pytest.fixture()
def setting():
    return clustered.setting()


def test_int8_rows_score_close_to_the_exact_product():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(5000, 32, generator=g) * torch.rand(5000, 1, generator=g)
    hidden = torch.randn(4, 32, generator=g)
    got, want = Int8Rows(table).scores(hidden), hidden @ table.T
    assert got.shape == want.shape
    err = (got - want).abs().max() / want.abs().max()
    assert err < 0.02, f"quantized scores off by {err:.3f} of the largest"


def test_answers_are_the_exact_scans_ranked_by_exact_scores(setting):
    model, table, ids, histories = setting
    w = weights(1, table, model, ids)
    exact, first = Scorer.from_weights(w), Scorer.from_weights(w, Int8Index(Int8Settings(min_items=0, candidates=50)))
    assert first.first_pass is not None and exact.first_pass is None
    # excluded: each history's three best items, so leaving them out changes the answer
    excludes = [[i for i, _ in top[:3]] for top in exact.recommend_batch(histories, 10)]
    got, want = first.recommend_batch(histories, 10, excludes), exact.recommend_batch(histories, 10, excludes)
    assert recall(got, want) >= 0.99
    for g, e in zip(got, want):  # the scores are exact: where the items agree, so do they
        exact_of = dict(e)
        assert all(abs(s - exact_of[i]) < 1e-4 for i, s in g if i in exact_of)
        assert [s for _, s in g] == sorted((s for _, s in g), reverse=True)
    assert not any(i in set(ex) for g, ex in zip(got, excludes) for i, _ in g), "a seen item was answered"


def test_small_catalogues_and_the_default_stay_exact(setting):
    model, table, ids, _ = setting
    w = weights(1, table, model, ids)
    assert Scorer.from_weights(w, Int8Index(Int8Settings(min_items=len(ids) + 1))).first_pass is None


def test_overlay_versions_share_one_quantized_base_and_score_their_moved_rows_exactly():
    L = IncrementalLearner(ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=8, dropout=0.1),
                           TrainerConfig(loss="sampled", negatives=8))
    L._row_log = RowLog(rebase_share=1.0)  # this small a table: an update moves a large share of it
    index = Int8Index(Int8Settings(min_items=0, candidates=20))
    held, versions = None, []
    g = np.random.default_rng(0)
    for v in range(1, 13):  # new items every update: rows newer than a quantized base come in
        rows = [(f"u{g.integers(40)}", f"i{min(g.integers(1000), 100 * v + t // 2)}", 150 * v + t) for t in range(150)]
        L.observe(pa.table({"user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                            "timestamp": pa.array([r[2] for r in rows], pa.timestamp("ms", tz="UTC")),
                            "label": pa.array([1] * len(rows), pa.int8()), "weight": pa.array([1.0] * len(rows), pa.float32())}))
        L.update()
        w = L.export_weights(v)
        held = Scorer.from_weights(w, index, held)
        versions.append((w, held))
    bases = {w[published.ITEM_ROWS]["base_id"] for w, _ in versions}
    assert index.builds == len(bases) < len(versions), "a version on a known base was quantized again"
    w, scorer = versions[-1]
    exact = Scorer.from_weights(published.dense(w))
    vocab = [i for i in published.vocab_list(w) if i is not None]
    g = np.random.default_rng(3)
    histories = [list(g.choice(vocab, size=4, replace=False)) for _ in range(30)]
    got, want = scorer.recommend_batch(histories, 5), exact.recommend_batch(histories, 5)
    assert recall(got, want) >= 0.99
    assert len(vocab) > len(published.vocab_list(versions[0][0])), "no item came after the first base"


@pytest.mark.parametrize("n_old, n_new, column_major", [(3000, 3000, True), (2500, 3000, True), (3000, 2000, False)])
def test_a_build_from_the_last_table_quantizes_its_changed_rows_to_what_a_whole_build_gives(n_old, n_new, column_major):
    g = torch.Generator().manual_seed(1)
    old = torch.randn(max(n_old, n_new), 16, generator=g)
    new = old.clone()
    moved = torch.randperm(len(new), generator=g)[:300]
    new[moved] += torch.randn(300, 16, generator=g)
    new[7, 3] = float("nan")  # a NaN row differs from everything: quantized again
    if column_major:  # as a version publishes its table (published.published_array)
        old, new = old.t().contiguous().t(), new.t().contiguous().t()
    old, new = old[:n_old], new[:n_new]
    got = Int8Rows(new, (Int8Rows(old), old))
    want = Int8Rows(new)
    assert torch.equal(got.q, want.q)
    torch.testing.assert_close(got.scale, want.scale, rtol=0, atol=0, equal_nan=True)  # row 7's is NaN
    changed = int((moved < min(n_old, n_new)).sum()) + (7 not in moved.tolist())
    assert got.quantized == changed + max(0, n_new - n_old), "rows equal to the last table's were quantized again"


def test_the_index_builds_each_new_base_from_the_last():
    g = torch.Generator().manual_seed(2)
    index = Int8Index(Int8Settings(min_items=0))
    first = torch.randn(4000, 8, generator=g)
    second = first.clone()
    second[[5, 17, 3999]] = 0.5
    a = index.rows_of(("base", "a"), first, 4000)
    assert index.rows_of(("base", "a"), first, 4000) is a and index.builds == 1
    b = index.rows_of(("base", "b"), second, 4000)
    assert index.builds == 2 and index.last_build_quantized == 3 and index.stats()["last_build_quantized"] == 3
    assert torch.equal(b.q, Int8Rows(second).q)


def test_made_rows_travel_as_arrays_and_come_back_the_same():
    table = torch.randn(300, 32, generator=torch.Generator().manual_seed(3))  # the kernel's width: 16s
    made = Int8Rows(table)
    back = Int8Rows.from_arrays(made.arrays())
    assert torch.equal(back.q, made.q) and torch.equal(back.scale.float(), made.scale.float())
    assert back.q.data_ptr() == made.q.data_ptr(), "adopted without a copy"
    head = Int8Rows.from_arrays(made.arrays(), 120)
    assert len(head) == 120 and torch.equal(head.scores(table[:2]), made.scores(table[:2])[:, :120])


def test_the_index_adopts_a_shared_table_and_builds_only_without_one():
    g = torch.Generator().manual_seed(4)
    table = torch.randn(500, 8, generator=g)
    offered = {("base", "a"): Int8Rows(table)}
    asked = []

    def shared(key):
        asked.append(key)
        return offered.get(key)

    index = Int8Index(Int8Settings(min_items=0), shared=shared)
    got = index.rows_of(("base", "a"), table, 400)
    assert (index.adopted, index.builds) == (1, 0) and len(got) == 400
    assert torch.equal(got.q, Int8Rows(table[:400]).q)
    assert index.rows_of(("base", "a"), table, 400) is got and asked == [("base", "a")], "asked once per key"
    second = table.clone()
    second[7] = 1.0
    built = index.rows_of(("base", "b"), second, 500)  # none offered: built here, from the adopted one
    assert (index.adopted, index.builds, index.last_build_quantized) == (1, 1, 1 + 100)
    assert torch.equal(built.q, Int8Rows(second).q)
    offered[("base", "c")] = Int8Rows(second[:100])  # shorter than the rows asked for: not used
    index.rows_of(("base", "c"), second, 500)
    assert (index.adopted, index.builds) == (1, 2) and index.stats()["adopted"] == 1
