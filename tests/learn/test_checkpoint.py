"""Tests for increc_ray.learn.checkpoint: a resume runs the configured trainer settings, and a
model shape it cannot apply fails naming both shapes."""

import pytest

from increc_ray.config import TrainerConfig, replace
from increc_ray.errors import ConfigError
from increc_ray.learn.learner import IncrementalLearner

from test_learner import SMALL, events, feed, planted_rows


def _trained(trainer: TrainerConfig) -> IncrementalLearner:
    L = IncrementalLearner(SMALL, trainer)
    feed(L, planted_rows(n_users=20, length=6), 2)
    return L


def test_resume_runs_the_configured_trainer_settings_and_keeps_the_moments():
    saved = TrainerConfig(lr=1e-3, item_lr_mult=1.0, batch_size=16, weight_decay=0.01)
    L = _trained(saved)
    deployed = replace(saved, lr=2.5e-4, item_lr_mult=20.0, batch_size=4, weight_decay=0.0)
    R = IncrementalLearner.from_state_dict(L.state_dict(), model_cfg=SMALL, trainer_cfg=deployed)
    assert R.trainer_cfg == deployed
    groups = R.optimizer.param_groups
    assert [g["lr_mult"] for g in groups] == [20.0, 1.0, 1.0]
    assert [g["weight_decay"] for g in groups] == [0.0, 0.0, 0.0]
    item = R.model.item_emb.weight
    assert R.optimizer.state[item]["exp_avg"].abs().sum() > 0  # AdamW moments survived the resume
    R.observe(events([("u0", "i1", 10**7), ("u0", "i2", 10**7 + 1)]))
    scale = R._lr_scale  # the adaptive schedule's saved scale carries over
    assert R.update().lr == pytest.approx(2.5e-4 * scale)  # times the deployed lr
    # without settings, the saved ones
    assert IncrementalLearner.from_state_dict(L.state_dict()).trainer_cfg == saved


def test_resume_with_another_model_shape_fails_naming_both():
    L = _trained(TrainerConfig())
    wider = replace(SMALL, d_model=32)
    with pytest.raises(ConfigError, match=r"'d_model': 16.*'d_model': 32"):
        IncrementalLearner.from_state_dict(L.state_dict(), model_cfg=wider)
    # dropout is not a shape: it may change
    R = IncrementalLearner.from_state_dict(L.state_dict(), model_cfg=replace(SMALL, dropout=0.3))
    assert R.model_cfg.dropout == 0.3


def test_a_checkpoint_with_the_old_trainer_key_names_still_loads():
    L = _trained(TrainerConfig(kept_items_per_user=50, clean_store_poll_interval_s=0.25))
    old = L.state_dict()
    saved = old["trainer_config"]
    saved["history_len"] = saved.pop("kept_items_per_user")  # the names before issue 10
    saved["poll_interval_s"] = saved.pop("clean_store_poll_interval_s")
    R = IncrementalLearner.from_state_dict(old)
    assert R.trainer_cfg == L.trainer_cfg
    assert (R.trainer_cfg.kept_items_per_user, R.trainer_cfg.clean_store_poll_interval_s) == (50, 0.25)


# ---- the file format: safetensors + JSON, nothing unpickled -----------------------------------

def _same_state(a, b):
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_state(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same_state(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)  # NaN == NaN here


def test_a_checkpoint_round_trips_through_safetensors_and_json_and_resumes_exactly(tmp_path):
    from increc_ray.learn.resume import read_checkpoint
    from increc_ray.learn import serialize

    L = _trained(TrainerConfig(ema_decay=0.9))
    state = {"learner": L.state_dict(), "offset": {"seq": 3, "row": 7}, "version": 4, "n_updates": 2,
             "live": L.export_weights(4, {"gate": {"promoted": True}})}
    serialize.save_tree(state, str(tmp_path), "trainer_state")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer_state.json", "trainer_state.safetensors"]
    back = read_checkpoint(str(tmp_path))
    assert _same_state(state, back)
    a, b = IncrementalLearner.from_state_dict(state["learner"]), IncrementalLearner.from_state_dict(back["learner"])
    ev = events([("u1", "i3", 10**7), ("u1", "i4", 10**7 + 1), ("u2", "i5", 10**7 + 2)])
    for x in (a, b):
        x.observe(ev)
    assert a.update().loss == b.update().loss  # the same rng, moments and weights: the same step


def test_a_legacy_pickle_loads_only_through_the_safe_unpickler(tmp_path):
    import torch

    from increc_ray.learn.resume import read_checkpoint

    L = _trained(TrainerConfig())
    torch.save({"learner": L.state_dict(), "offset": {"seq": 0, "row": 0}, "version": 1, "n_updates": 1,
                "live": None}, tmp_path / "trainer_state.pt")
    assert read_checkpoint(str(tmp_path))["version"] == 1  # plain tensors and values: readable

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"version": 1, "x": Exploit()}, bad / "trainer_state.pt")
    with pytest.raises(ConfigError, match="legacy pickle checkpoint that the safe reader refuses"):
        read_checkpoint(str(bad))
    assert not marker.exists(), "the pickle ran code"
    with pytest.raises(ConfigError, match="no trainer checkpoint"):
        read_checkpoint(str(tmp_path / "bad" / ".."  / "bad" / "nothing"))


def test_rollback_places_each_item_row_by_id_even_when_the_learner_numbers_items_otherwise():
    """A snapshot of one learner rolled into another that saw the items in another order (a full
    pass renumbers them): every item gets the snapshot's row for that item id; an id the learner
    never saw is added with its row; items the snapshot never saw start near its mean item."""
    import torch

    from increc_ray.learn.checkpoint import rollback_weights
    from increc_ray.learn.gate import Snapshot

    source = _trained(TrainerConfig())
    snap = Snapshot.of(source)
    other = IncrementalLearner(SMALL, TrainerConfig())
    rows = [(f"w{j}", item, 1000 + j) for j, item in enumerate(reversed(snap.vocab[1:]))]
    other.observe(events(rows + [("w-new", "never-in-snapshot", 5000)]))
    assert other.vocab.to_list() != snap.vocab[: other.n_items]
    rollback_weights(other, snap.state(), snap.vocab)
    want, got = snap.state()["item_emb.weight"], other.model.item_emb.weight.detach()
    for idx, item in enumerate(snap.vocab, start=1):
        assert torch.equal(got[other.vocab.lookup([item])[0]], want[idx]), item
    unseen = other.vocab.lookup(["never-in-snapshot"])[0]
    assert torch.allclose(got[unseen], want[1: snap.n_items + 1].mean(0))
    assert other.n_items == snap.n_items + 1 and len(other.item_counts) == other.n_items + 1


def test_with_no_checkpoint_registered_the_newest_whole_one_on_disk_is_used(tmp_path):
    """A whole-cluster crash can come after the worker wrote a checkpoint and before Ray Train
    recorded it: the trainer then resumes from the newest folder on disk that reads whole."""
    import os

    from increc_ray.config import Config
    from increc_ray.learn import resume, serialize

    cfg = Config.from_dict({"data_dir": str(tmp_path)})
    assert resume._unregistered_checkpoint(cfg, "cpu") is None
    root = os.path.join(cfg.checkpoint_dir, resume.RUN_NAME)
    for name, version in (("checkpoint_v00000001_u00000001", 1), ("checkpoint_v00000001_u00000006", 2)):
        os.makedirs(os.path.join(root, name))
        serialize.save_tree({"version": version}, os.path.join(root, name), resume.CHECKPOINT_NAME)
    os.makedirs(os.path.join(root, "checkpoint_v00000002_u00000001"))  # cut short: no tensors
    with open(os.path.join(root, "checkpoint_v00000002_u00000001", "trainer_state.json"), "w") as f:
        f.write('{"format": "increc-safetensors-1", "tree": {')
    assert [os.path.basename(p) for p in resume.checkpoints_on_disk(cfg)][:2] == [
        "checkpoint_v00000002_u00000001", "checkpoint_v00000001_u00000006"]
    assert resume._unregistered_checkpoint(cfg, "cpu") == {"version": 2}


def test_tensors_that_share_memory_are_written_apart_and_the_rest_without_a_copy(tmp_path):
    import numpy as np
    import torch

    from increc_ray.learn import serialize

    w = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tree = {"w": w, "same": w, "row": w[1], "t": w.t(), "col": np.asfortranarray(np.arange(6.0).reshape(2, 3))}
    tensors: dict = {}
    serialize._flatten(tree, tensors)
    assert tensors["t0"].data_ptr() == w.data_ptr()  # written as it is
    assert len({t.untyped_storage().data_ptr() for t in tensors.values()}) == len(tensors)  # none shared
    serialize.save_tree(tree, str(tmp_path), "s")
    back = serialize.load_tree(str(tmp_path), "s")
    assert torch.equal(back["w"], w) and torch.equal(back["same"], w) and torch.equal(back["row"], w[1])
    assert torch.equal(back["t"], w.t()) and np.array_equal(back["col"], tree["col"])


def test_a_checkpoint_waits_until_checkpoints_would_take_at_most_their_share_of_the_time():
    from increc_ray.learn.resume import checkpoint_due

    tcfg = replace(TrainerConfig(), checkpoint_every=10, checkpoint_max_share=0.1)
    assert not checkpoint_due(tcfg, 9, 1e9, 0.0)  # too few updates
    assert checkpoint_due(tcfg, 10, 0.5, 0.05)  # a cheap checkpoint: every 10 updates, as before
    assert not checkpoint_due(tcfg, 50, 80.0, 10.0)  # a 10 s one: 90 s of other work first
    assert checkpoint_due(tcfg, 50, 90.0, 10.0)


def test_the_archive_thread_writes_the_newest_version_and_skips_those_a_newer_one_replaced():
    import threading

    from increc_ray.learn.versions import KeepNewest

    release, kept = threading.Event(), []

    def write(w):
        if w["version"] == 1:
            release.wait(10)  # a slow write: versions 2..5 arrive meanwhile
        kept.append(w["version"])

    k = KeepNewest(write)
    k.submit({"version": 1})
    for _ in range(200):  # until the thread has taken version 1
        if k._next is None:
            break
        threading.Event().wait(0.01)
    for v in (2, 3, 4, 5):
        k.submit({"version": v})
    release.set()
    k.wait()
    assert kept == [1, 5] and k.skipped == 3  # at most one version waited: memory stays bounded
    k.submit({"version": 6})
    k.shutdown()
    assert kept == [1, 5, 6]


# ---- the checkpoint writer: a snapshot on the loop, the write in a thread ---------------------

def test_a_checkpoint_holds_the_snapshot_even_when_the_learner_moves_on_during_the_write(tmp_path, monkeypatch):
    """The write runs while the learner updates; what lands is the learner as it was at the
    snapshot, reported once with the snapshot's offset, in a folder the listings saw only whole."""
    import os
    import threading

    from increc_ray.config import Config
    from increc_ray.learn import resume, serialize

    cfg = Config.from_dict({"data_dir": str(tmp_path)})
    release, real_save = threading.Event(), serialize.save_tree
    listed_while_writing = []

    def held_save(tree, directory, name):  # the write starts only once the learner has moved on
        assert release.wait(10)
        real_save(tree, directory, name)
        listed_while_writing.append(resume.checkpoints_on_disk(cfg))

    monkeypatch.setattr(serialize, "save_tree", held_save)
    reports, consumed = [], []
    writer = resume.CheckpointWriter(cfg.checkpoint_dir, reported=consumed.append,
                                     report=lambda folder, name, metrics, local: reports.append((folder, name, metrics, local)))
    L = _trained(TrainerConfig())
    want = L.state_dict()
    writer.start(L, {"seq": 4, "row": 2}, 3, 5, {"loss": 1.0}, None)
    assert writer.busy and not writer.collect()  # under way: nothing to report yet
    L.observe(events([("u1", "i3", 10**7), ("u1", "i4", 10**7 + 1), ("u2", "i5", 10**7 + 2)]))
    assert L.update() is not None
    moved = L.state_dict()
    assert not _same_state(want["model"], moved["model"])  # the learner did move on
    release.set()
    assert writer.wait() and not writer.busy
    folder = os.path.join(cfg.checkpoint_dir, resume.RUN_NAME, "checkpoint_v00000003_u00000005")
    assert reports == [(folder, "checkpoint_v00000003_u00000005", {"loss": 1.0}, True)]
    assert consumed == [{"seq": 4, "row": 2}]
    assert listed_while_writing == [[]]  # written under a name the listings skip
    back = resume.read_checkpoint(folder)
    assert back["offset"] == {"seq": 4, "row": 2} and back["version"] == 3 and back["n_updates"] == 5
    assert _same_state(want, back["learner"])
    assert writer.written == 1 and writer.failed == 0 and writer.seconds >= writer.snapshot_seconds


def test_the_next_snapshot_copies_into_the_last_ones_memory_and_a_taken_name_gets_a_suffix(tmp_path):
    import os

    from increc_ray.config import Config
    from increc_ray.learn import resume

    cfg = Config.from_dict({"data_dir": str(tmp_path)})
    root = os.path.join(cfg.checkpoint_dir, resume.RUN_NAME)
    os.makedirs(os.path.join(root, ".checkpoint_v00000001_u00000001.partial"))  # a killed writer's
    writer = resume.CheckpointWriter(cfg.checkpoint_dir, report=lambda *a: None)
    assert os.listdir(root) == []  # cleared at the start
    L = _trained(TrainerConfig())
    writer.start(L, {"seq": 0, "row": 0}, 1, 1, {}, None)
    writer.wait()
    first = writer._state["model"]["item_emb.weight"]
    L.observe(events([("u1", "i3", 10**7), ("u1", "i4", 10**7 + 1)]))
    L.update()
    writer.start(L, {"seq": 0, "row": 9}, 1, 1, {}, None)  # the same version and updates: a stop after a checkpoint
    writer.wait()
    again = writer._state["model"]["item_emb.weight"]
    assert again.data_ptr() == first.data_ptr()  # no fresh memory for the table
    assert _same_state(writer._state, L.state_dict())  # and the values are the learner's now
    assert [os.path.basename(p) for p in resume.checkpoints_on_disk(cfg)] == [
        "checkpoint_v00000001_u00000001_1", "checkpoint_v00000001_u00000001"]
    assert resume.read_checkpoint(resume.checkpoints_on_disk(cfg)[0])["offset"] == {"seq": 0, "row": 9}


def test_a_failed_write_is_counted_and_reported_nowhere_and_the_next_one_lands(tmp_path, monkeypatch):
    import os

    from increc_ray.config import Config
    from increc_ray.learn import resume, serialize

    cfg = Config.from_dict({"data_dir": str(tmp_path)})
    real_save, calls = serialize.save_tree, []

    def failing_once(tree, directory, name):
        calls.append(directory)
        if len(calls) == 1:
            raise OSError("disk full")
        real_save(tree, directory, name)

    monkeypatch.setattr(serialize, "save_tree", failing_once)
    reports, consumed = [], []
    writer = resume.CheckpointWriter(cfg.checkpoint_dir, reported=consumed.append,
                                     report=lambda folder, *a: reports.append(folder))
    L = _trained(TrainerConfig())
    writer.start(L, {"seq": 1, "row": 0}, 1, 1, {}, None)
    assert not writer.wait() and writer.failed == 1 and reports == [] and consumed == []
    assert os.listdir(os.path.join(cfg.checkpoint_dir, resume.RUN_NAME)) == []  # nothing half-written left
    writer.start(L, {"seq": 2, "row": 0}, 1, 2, {}, None)
    assert writer.wait() and writer.written == 1 and consumed == [{"seq": 2, "row": 0}]
    assert [p for p in resume.checkpoints_on_disk(cfg)] == reports
