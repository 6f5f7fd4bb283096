"""The approximate top-k (increc_ray.serve.index) against the exact scan, as versions change rows."""

import pytest
import torch

from increc_ray.learn.vocab import ItemVocab
from increc_ray.serve.index import IndexSettings, ItemIndex
from increc_ray.serve.scorer import Scorer

import clustered
from clustered import N, recall, weights

pytest.importorskip("usearch")


@pytest.fixture()
def setting():
    return clustered.setting()


def test_approximate_answers_match_the_exact_scan_as_versions_move_rows(setting):
    model, table, ids, histories = setting
    index = ItemIndex(IndexSettings(min_items=100, candidates=50, refresh_fraction=0.5))
    first = weights(1, table, model, ids)
    assert Scorer.from_weights(first, index).view is None  # no graph yet: the exact scan answers
    assert index.wait_idle(60)
    approx = Scorer.from_weights(first, index)
    assert approx.view is not None and len(approx.view.fresh) == 0
    exact = Scorer.from_weights(first)
    want = exact.recommend_batch(histories, 10, histories)
    got = approx.recommend_batch(histories, 10, histories)
    assert recall(got, want) >= 0.95
    for g_, w in zip(got, want):  # scored with the version's own weights: the same scores where the items agree
        ws = dict(w)
        assert all(abs(s - ws[i]) < 1e-4 for i, s in g_ if i in ws)
        assert not {i for i, _ in g_} & set(histories[got.index(g_)])  # seen items stay excluded
    # version 2: some rows move far (a stale graph would misplace them) and new items arrive
    table2 = table.clone()
    moved = torch.arange(1, N + 1, 37)
    table2[moved] = 3 * table2[torch.randint(1, N + 1, (len(moved),))]
    ids2 = ids + [f"new{j}" for j in range(100)]
    approx2 = Scorer.from_weights(weights(2, table2, model, ids2), index)
    fresh = set(approx2.view.fresh.tolist())
    assert set(moved.tolist()) <= fresh and set(range(N + 1, N + 101)) <= fresh
    assert len(fresh) == len(moved) + 100  # unchanged rows are not fresh
    want2 = Scorer.from_weights(weights(2, table2, model, ids2)).recommend_batch(histories, 10, histories)
    got2 = approx2.recommend_batch(histories, 10, histories)
    assert recall(got2, want2) >= 0.95
    assert any(i.startswith("new") for g_ in got2 for i, _ in g_) == any(i.startswith("new") for w in want2 for i, _ in w)
    for g_ in got2:  # no item twice (a fresh row is also somewhere in the stale graph)
        assert len({i for i, _ in g_}) == len(g_)


def test_the_graph_is_refreshed_once_fresh_rows_pass_their_share(setting):
    model, table, ids, histories = setting
    index = ItemIndex(IndexSettings(min_items=100, candidates=50, refresh_fraction=0.1))
    Scorer.from_weights(weights(1, table, model, ids), index)
    assert index.wait_idle(60) and index.builds == 1
    table2 = table.clone()
    table2[1: N // 4] += 0.5  # a quarter of the catalogue moves: past the 10% share
    s2 = Scorer.from_weights(weights(2, table2, model, ids), index)
    assert len(s2.view.fresh) == N // 4 - 1
    assert index.wait_idle(60) and index.builds == 2  # a copy of the graph, brought up to version 2
    s3 = Scorer.from_weights(weights(3, table2, model, ids), index)
    assert len(s3.view.fresh) == 0  # the refreshed graph's base is version 2: nothing differs
    want = Scorer.from_weights(weights(3, table2, model, ids)).recommend_batch(histories, 10, histories)
    assert recall(s3.recommend_batch(histories, 10, histories), want) >= 0.95
    # the graph version 2's requests searched was not changed by the refresh
    assert s2.view.graph is not s3.view.graph


def test_expired_items_and_pad_are_never_answers(setting):
    model, table, ids, histories = setting
    index = ItemIndex(IndexSettings(min_items=100, candidates=50))
    Scorer.from_weights(weights(1, table, model, ids), index)
    index.wait_idle(60)
    exact = Scorer.from_weights(weights(1, table, model, ids)).recommend_batch(histories, 10)
    gone = sorted({i for got in exact for i, _ in got})[:20]  # items the exact scan would answer
    expired = [None if i in gone else i for i in ids]  # their rows become holes
    vocab = ItemVocab.from_list(expired)
    assert len(vocab.holes()) == 20
    got = Scorer.from_weights(weights(2, table, model, expired), index).recommend_batch(histories, 10)
    assert not {i for g_ in got for i, _ in g_} & set(gone)
    assert all(len(g_) == 10 for g_ in got)
