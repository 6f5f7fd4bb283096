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
