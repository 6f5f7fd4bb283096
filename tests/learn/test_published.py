"""learn.published: a sampled learner publishes its item table as an overlay (a base shared across
versions plus the rows moved since), which every reader (a replica's scorer, the gate's snapshot,
the archive through ``dense``) reads as the whole table taken at the same moment; the full softmax
publishes whole."""

import numpy as np
import pytest
import torch

from increc_ray.config import TrainerConfig
from increc_ray.learn import published
from increc_ray.learn.frozen import RowLog
from increc_ray.learn.gate import Snapshot
from increc_ray.learn.learner import IncrementalLearner
from increc_ray.serve.scorer import Scorer

from test_frozen import SAMPLED, _rows, _updates
from test_learner import SMALL


def _whole_table(L) -> np.ndarray:
    return L.model.item_emb.weight.detach().numpy().copy()


def _versions(L, n_chunks: int = 16, vocabs: list | None = None):
    """(overlay artifact, the learner's table copied at the same moment) after each update; the
    learner's vocabulary lists then appended to ``vocabs``."""
    out = []
    for v, _ in enumerate(_updates(L, _rows(), n_chunks), start=1):
        out.append((L.export_weights(v), _whole_table(L)))
        if vocabs is not None:
            vocabs.append(L.vocab.to_list())
    return out


def test_a_sampled_learner_publishes_overlays_that_read_as_the_whole_table_and_share_bases():
    L = IncrementalLearner(SMALL, SAMPLED)
    L._row_log = RowLog(rebase_share=1.0)  # this small a table: an update moves a large share of it
    vocabs = []
    versions = _versions(L, vocabs=vocabs)
    assert all(published.is_overlay(w) and published.ITEM_KEY not in w["state_dict"] for w, _ in versions)
    for (w, table), vocab in zip(versions, vocabs):
        back = published.dense(w)
        whole = back["state_dict"][published.ITEM_KEY]
        assert np.array_equal(whole, table), f"version {w['version']}: the overlay is not the table"
        assert whole.flags.f_contiguous, "a whole table is published column-major, as ever"
        assert back["vocab"] == vocab == published.vocab_list(w)
    # the stream brings new items every update: versions on one base carry the ids appended since
    on_base = [w for w, _ in versions if w[published.ITEM_ROWS]["base_id"] == versions[-1][0][published.ITEM_ROWS]["base_id"]]
    assert all(w["vocab"] is None for w in on_base), "a version shipped its whole vocabulary"
    assert len({len(w[published.ITEM_ROWS]["vocab_tail"]) for w in on_base}) > 1, "no version appended ids"
    items = [w[published.ITEM_ROWS] for w, _ in versions]
    bases = {i["base_id"] for i in items}
    assert len(bases) < len(items) - 4, f"every version shipped a base of its own: {len(bases)} bases"
    shared = [i for i in items if i["base_id"] == items[-1]["base_id"]]
    assert all(i["base"] is shared[0]["base"] for i in shared), "a base was copied again for a later version"
    assert any(0 < len(i["rows"]) < len(i["base"]) for i in items), "no version was base plus a few moved rows"


def test_the_full_softmax_and_a_moving_average_publish_whole():
    for cfg in (TrainerConfig(), TrainerConfig(loss="sampled", negatives=8, ema_decay=0.9)):
        L = IncrementalLearner(SMALL, cfg)
        w, table = _versions(L, 4)[-1]
        assert not published.is_overlay(w) and published.ITEM_KEY in w["state_dict"]
        assert published.dense(w) is w


def test_a_replica_scores_an_overlay_as_it_scores_the_whole_table():
    L = IncrementalLearner(SMALL, SAMPLED)
    L._row_log = RowLog(rebase_share=1.0)
    w = [w for w, _ in _versions(L) if len(w[published.ITEM_ROWS]["rows"])][-1]
    vocab = [i for i in published.vocab_list(w) if i is not None]
    g = np.random.default_rng(1)
    histories = [list(g.choice(vocab, size=int(g.integers(1, 12)), replace=False)) for _ in range(24)]
    excludes = [h[:2] for h in histories]
    overlay, whole = Scorer.from_weights(w), Scorer.from_weights(published.dense(w))
    assert overlay.items is not None and whole.items is None
    got, want = overlay.recommend_batch(histories, 10, excludes), whole.recommend_batch(histories, 10, excludes)
    for a, b in zip(got, want):
        assert [i for i, _ in a] == [i for i, _ in b]
        assert np.allclose([s for _, s in a], [s for _, s in b], atol=1e-5)

def test_a_replica_adopting_overlays_one_after_another_extends_its_vocabulary_and_reads_them_whole():
    L = IncrementalLearner(SMALL, SAMPLED)
    L._row_log = RowLog(rebase_share=1.0)
    versions = [w for w, _ in _versions(L)]
    held, chains = None, []
    for w in versions:
        if held is not None and published.extends(w, held.vocab_chain):
            # what ``registry.resolve(weights, vocab=False)`` hands such a replica: the table's base
            # fetched, the base vocabulary not
            table = w[published.ITEM_ROWS]["base"]
            w = published.without_base(w)
            w[published.ITEM_ROWS]["base"] = table
        held = Scorer.from_weights(w, previous=held)
        chains.append(held.vocab_chain)
        whole = Scorer.from_weights(published.dense(versions[len(chains) - 1]))
        assert held.vocab.to_list() == whole.vocab.to_list()
        h = [i for i in whole.vocab.to_list()[-6:] if i is not None]
        assert [i for i, _ in held.recommend(h, 5)] == [i for i, _ in whole.recommend(h, 5)]
    assert sum(c is not None and p is not None and c.base_id == p.base_id for p, c in zip(chains, chains[1:])) >= 3, \
        "no version extended the vocabulary of the one before"


def test_a_vocabulary_that_is_not_an_append_to_the_base_goes_whole():
    from increc_ray.learn.frozen import FrozenRows

    items, bases = FrozenRows(torch.zeros(8, 2)), published.BaseCopies()
    first, vocab = bases.overlay(items, ["a", "b"])
    assert vocab is None and first["vocab_base"] == ["a", "b"] and first["vocab_tail"] == []
    later, vocab = bases.overlay(items, ["a", "b", "c"])
    assert vocab is None and later["vocab_tail"] == ["c"] and later["base_id"] == first["base_id"]
    for changed in (["a", None, "c"], ["a", "d", "c"], ["a"]):  # an expiry, a refilled hole, an older list
        out, vocab = bases.overlay(items, changed)
        assert vocab == changed and "vocab_tail" not in out


def test_the_gate_ranks_an_overlay_as_the_whole_table():
    L = IncrementalLearner(SMALL, SAMPLED)
    L._row_log = RowLog(rebase_share=1.0)
    w = [w for w, _ in _versions(L) if len(w[published.ITEM_ROWS]["rows"])][-1]
    n = len(published.vocab_list(w))
    g = np.random.default_rng(2)
    histories = [list(g.integers(1, n + 1, size=int(g.integers(1, 10)))) for _ in range(32)]
    targets = g.integers(1, n + 1, size=32)
    a = Snapshot.from_weights(w).ranks(histories, targets)
    b = Snapshot.from_weights(published.dense(w)).ranks(histories, targets)
    assert np.array_equal(a, b)


def test_an_overlay_exported_from_a_snapshot_is_the_snapshots_table():
    """The gate's promoted or rolled-back-to version is exported from its snapshot, later."""
    L = IncrementalLearner(SMALL, SAMPLED)
    L._row_log = RowLog(rebase_share=1.0)
    steps = _updates(L, _rows(), 12)
    for _ in range(6):
        next(steps)
    snap, table = Snapshot.of(L, 3), _whole_table(L)
    for _ in steps:  # the learner moves on
        pass
    w = L.export_weights(3, snapshot=snap)
    assert published.is_overlay(w)
    assert np.array_equal(published.dense(w)["state_dict"][published.ITEM_KEY], table)


@pytest.mark.parametrize("rows", [0, 3])
def test_dense_copies_no_more_than_it_must(rows):
    base = np.asfortranarray(np.arange(40, dtype=np.float32).reshape(10, 4))
    w = {"version": 1, "state_dict": {}, "vocab": ["a"], published.ITEM_ROWS: {
        "base_id": "b", "base": base, "rows": np.arange(rows, dtype=np.int64),
        "values": np.asfortranarray(-np.ones((rows, 4), dtype=np.float32))}}
    whole = published.dense(w)["state_dict"][published.ITEM_KEY]
    assert np.array_equal(whole[rows:], base[rows:]) and (whole[:rows] == -1).all()
    assert np.array_equal(base, np.arange(40, dtype=np.float32).reshape(10, 4)), "dense wrote into the base"
    assert np.shares_memory(whole, base) == (rows == 0)
    assert torch.equal(published.item_table(published.dense(w)).base, torch.as_tensor(whole))


def test_a_snapshot_on_the_base_before_keeps_that_bases_id():
    """A promoted candidate or the live version gone back to may hold the learner's previous base:
    its overlay names that base again rather than shipping it as a new one."""
    from increc_ray.learn.frozen import FrozenRows

    old, new, bases = FrozenRows(torch.zeros(8, 2)), FrozenRows(torch.ones(8, 2)), published.BaseCopies()
    ids = [bases.overlay(t, ["a"])[0]["base_id"] for t in (old, new, old, new, old)]
    assert ids[0] == ids[2] == ids[4] != ids[1] == ids[3]
    third = bases.overlay(FrozenRows(torch.ones(8, 2)), ["a"])[0]["base_id"]
    assert third not in ids and bases.overlay(old, ["a"])[0]["base_id"] == ids[0], "the most recent two are kept"
    assert bases.overlay(new, ["a"])[0]["base_id"] not in ids, "more than two bases remembered"


def test_the_archive_keeps_an_overlays_base_once_and_gives_every_kept_version_back_whole(tmp_path):
    from increc_ray.learn.versions import WeightArchive

    L = IncrementalLearner(SMALL, SAMPLED)
    L._row_log = RowLog(rebase_share=1.0)
    versions = _versions(L)
    archive = WeightArchive(str(tmp_path), keep=3)
    for w, _ in versions:
        archive.save(w)
    kept = archive.versions()
    assert kept == [w["version"] for w, _ in versions[-3:]]
    named = {w[published.ITEM_ROWS]["base_id"] for w, _ in versions[-3:]}
    assert set(archive.bases()) == named, "a base no kept version names was kept, or a named one lost"
    for w, table in versions[-3:]:
        back, want = archive.load(w["version"]), published.dense(w)
        assert back["vocab"] == want["vocab"]
        assert set(back["state_dict"]) == set(want["state_dict"])
        for k, v in want["state_dict"].items():
            assert np.array_equal(back["state_dict"][k], v), k
        assert np.array_equal(back["state_dict"][published.ITEM_KEY], table)
    # a version on a kept base writes its moved rows, not the table again
    base_bytes = (tmp_path / "bases" / sorted(named)[0] / "weights.safetensors").stat().st_size
    on_base = [w for w, _ in versions[-3:] if w[published.ITEM_ROWS]["base_id"] == sorted(named)[0]]
    assert all((tmp_path / str(w["version"]) / "weights.safetensors").stat().st_size < base_bytes for w in on_base)
