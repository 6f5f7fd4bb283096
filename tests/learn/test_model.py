"""Tests for increc_ray.learn.model: vocab, encoder, growth and the inference scorer."""

import time

import numpy as np
import pytest
import torch

from increc_ray.config import ModelConfig
from increc_ray.learn.model import SeqRecModel, left_pad, masked_scores
from increc_ray.learn.vocab import ItemVocab
from increc_ray.serve.scorer import Scorer

CFG = ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=8, dropout=0.0, initial_item_capacity=16)


def _weights(model: SeqRecModel, vocab: list[str], version: int = 3) -> dict:
    return {"version": version, "model_config": model.cfg.model_dump(), "vocab": vocab,
            "state_dict": {k: v.detach().numpy().copy() for k, v in model.state_dict().items()},
            "metrics": {"loss": 1.0}, "created_at": time.time()}


def test_vocab_semantics():
    v = ItemVocab()
    assert len(v) == 0
    assert v.add(["a", "b", "a"]).tolist() == [1, 2, 1]  # 1-based; repeats reuse the index
    assert v.add(["c", "b"]).tolist() == [3, 2]
    assert len(v) == 3 and "c" in v and "z" not in v
    assert v.lookup(["b", "z", "c"]).tolist() == [2, 0, 3]  # unknown -> 0 (padding), not added
    assert len(v) == 3
    assert v.id_of(1) == "a" and v.id_of(3) == "c"
    with pytest.raises(AssertionError):
        v.id_of(0)  # padding is no item
    assert v.to_list() == ["a", "b", "c"]
    w = ItemVocab.from_list(v.to_list())
    assert w.lookup(["a", "b", "c"]).tolist() == [1, 2, 3]
    with pytest.raises(AssertionError):
        ItemVocab.from_list(["a", "a"])


def test_vocab_from_a_list_that_extends_a_base_shares_nothing_and_matches_a_full_build():
    base = ItemVocab.from_list(["a", None, "c"])
    grown = ["a", None, "c", "d", None, "e"]
    fast, full = ItemVocab.from_list(grown, base=base), ItemVocab.from_list(grown)
    assert fast.lookup(["a", "c", "d", "e", "b"]).tolist() == full.lookup(["a", "c", "d", "e", "b"]).tolist() \
        == [1, 3, 4, 6, 0]
    assert fast.holes().tolist() == full.holes().tolist() == [2, 5]
    assert fast.to_list() == grown and fast.generation != base.generation
    assert fast.add(["x", "y", "z"]).tolist() == [2, 5, 7]  # holes first, lowest first, as a full build
    assert base.to_list() == ["a", None, "c"] and "d" not in base and "x" not in base  # base untouched
    # not an extension (an item expired, a hole was refilled): built in full, the same answer
    for changed in (["a", "b", "c", "d"], [None, None, "c"], ["a"]):
        assert ItemVocab.from_list(changed, base=base).to_list() == changed
        assert ItemVocab.from_list(changed, base=base).lookup(["a", "b", "c", "d"]).tolist() == \
            ItemVocab.from_list(changed).lookup(["a", "b", "c", "d"]).tolist()
    with pytest.raises(AssertionError):
        ItemVocab.from_list(["a", None, "c", "a"], base=base)  # a duplicate in the tail


def test_forward_is_causal_and_padding_invariant():
    torch.manual_seed(0)
    m = SeqRecModel(CFG).eval()
    seq = torch.tensor([[3, 5, 7, 2]])
    h = m(seq)  # (1, 4, C)
    assert h.shape == (1, 4, CFG.d_model)
    changed = m(torch.tensor([[3, 5, 7, 9]]))
    assert torch.allclose(h[:, :3], changed[:, :3], atol=1e-6), "a later item changed an earlier position"
    assert not torch.allclose(h[:, 3], changed[:, 3])
    padded = m(torch.tensor([[0, 0, 0, 3, 5, 7, 2]]))
    assert torch.allclose(h, padded[:, 3:], atol=1e-5), "left padding changed the hidden states"


def test_left_pad():
    x = left_pad([[1, 2], [3, 4, 5]])
    assert x.tolist() == [[0, 1, 2], [3, 4, 5]]
    assert left_pad([[1, 2, 3, 4]], 2).tolist() == [[3, 4]]  # longer sequences keep their newest items


def test_grow_keeps_rows_and_still_runs():
    torch.manual_seed(0)
    m = SeqRecModel(CFG)
    before = m.item_emb.weight.detach().clone()
    m.grow(64)
    assert m.capacity == 64 and m.item_emb.weight.shape == (64, CFG.d_model)
    assert torch.equal(m.item_emb.weight[:16], before)
    assert masked_scores(m, m(torch.tensor([[1, 40]])), 63).shape == (1, 2, 64)  # row 40 is usable
    with pytest.raises(AssertionError):
        m.grow(8)


def test_scorer_masks_pad_spare_rows_and_excludes():
    torch.manual_seed(0)
    m = SeqRecModel(CFG).eval()
    vocab = ["a", "b", "c", "d", "e"]  # indices 1..5; rows 0 and 6..15 must never come back
    hist = ["a", "b"]
    with torch.no_grad():
        h = m(torch.tensor([[1, 2]]))[0, -1]
        m.item_emb.weight[0] = 100 * h  # pad and spare rows would win by far if not masked
        m.item_emb.weight[6:] = 100 * h
    s = Scorer.from_weights(_weights(m, vocab))
    assert s.version == 3 and s.vocab.to_list() == vocab
    recs = s.recommend(hist, k=10)
    assert sorted(r[0] for r in recs) == vocab  # only real items, even with k > n_items
    assert [r[1] for r in recs] == sorted((r[1] for r in recs), reverse=True)
    recs = s.recommend(hist, k=10, exclude={"a", "c", "zz"})
    assert sorted(r[0] for r in recs) == ["b", "d", "e"]
    assert len(s.recommend(hist, k=2, exclude={"a"})) == 2
    assert s.recommend(["zz", "yy"], k=5) == []  # nothing known: no model guess
    assert s.recommend([], k=5) == []


def test_scorer_matches_model_and_batch_matches_single():
    torch.manual_seed(1)
    m = SeqRecModel(CFG).eval()
    vocab = [f"i{j}" for j in range(12)]
    s = Scorer.from_weights(_weights(m, vocab))
    hist = ["i3", "unknown", "i7", "i1"]  # unknown ids are skipped
    with torch.no_grad():
        logits = masked_scores(m, m(torch.tensor([[4, 8, 2]]))[0, -1], 12)[1:]
    expect = [vocab[j] for j in logits.argsort(descending=True)[:5].tolist()]
    recs = s.recommend(hist, 5)
    assert [r[0] for r in recs] == expect
    np.testing.assert_allclose([r[1] for r in recs], logits.sort(descending=True).values[:5].numpy(), rtol=1e-5)
    histories = [hist, ["i2"], ["nope"], [f"i{j % 12}" for j in range(20)]]  # the last is longer than max_len
    excludes = [{"i1"}, (), (), {"i0", "i5"}]
    batch = s.recommend_batch(histories, 4, excludes)
    single = [s.recommend(h, 4, e) for h, e in zip(histories, excludes)]
    assert [[r[0] for r in b] for b in batch] == [[r[0] for r in x] for x in single]
    for b, x in zip(batch, single):
        np.testing.assert_allclose([r[1] for r in b], [r[1] for r in x], rtol=1e-4, atol=1e-5)
    assert batch[2] == []


def test_scorer_on_10k_items_returns_k_unseen_items():
    """Behaviour at catalogue scale; the time is printed, not asserted (bench/serve_bench.py measures it)."""
    cfg = ModelConfig(initial_item_capacity=16384)  # default d_model / layers / max_len
    torch.manual_seed(0)
    m = SeqRecModel(cfg)
    s = Scorer.from_weights(_weights(m, [f"x{i}" for i in range(10_000)]))
    hist = [f"x{i}" for i in range(0, 1000, 20)]  # 50 items = max_len
    s.recommend(hist, 10)
    t = time.perf_counter()
    for _ in range(20):
        recs = s.recommend(hist, 10, exclude=hist)
    per_call = (time.perf_counter() - t) / 20
    assert len(recs) == 10 and not set(r[0] for r in recs) & set(hist)
    assert all(a[1] >= b[1] for a, b in zip(recs, recs[1:]))  # best first
    print(f"\nrecommend over 10,000 items: {per_call * 1000:.1f} ms per call")
