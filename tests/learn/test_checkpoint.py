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
