import re

import pytest
import yaml
from pydantic import ValidationError

from increc_ray import profiles
from increc_ray.config import RENAMED, Config, LabelRule, ModelConfig, TrainerConfig, replace
from increc_ray.errors import ConfigError


def test_defaults_are_valid_and_round_trip():
    cfg = Config()
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_serve_config_yaml_deploys_the_ml_100k_fresh_profile():
    with open("serve_config.yaml") as f:
        doc = yaml.safe_load(f)
    (app,) = doc["applications"]
    assert app["args"]["profile"] == "ml-100k-fresh" == profiles.DEFAULT_PROFILE
    assert set(app["args"]["config"]) == {"data_dir"}  # nothing else duplicates the profile
    cfg = profiles.from_app_args(app["args"])
    assert cfg == profiles.load("ml-100k-fresh") and cfg.data_dir == "/tmp/increc_ray"
    assert cfg.gate.mode == "optimistic" and cfg.model == profiles.load("ml-100k").model
    assert cfg.cleaning.event_types["rating"] == LabelRule(weight=1.0, min_value=None)


def _missing_keys(doc: dict, full: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in full.items():
        if key not in doc:
            out.append(prefix + key)
        elif isinstance(value, dict) and key not in ("event_types", "variants"):
            out += _missing_keys(doc[key], value, f"{prefix}{key}.")
    return out


@pytest.mark.parametrize("name", profiles.profile_names())
def test_every_profile_is_a_complete_valid_config(name):
    doc = profiles.read_yaml(profiles.profile_path(name))
    while "extends" in doc:  # a profile built on another (maybe on a third): complete once merged over it
        parent = profiles.read_yaml(profiles.profile_path(doc.pop("extends")))
        doc = profiles.merge(parent, doc)
    cfg = profiles.load(name)  # validates
    assert _missing_keys(doc, cfg.to_dict()) == []  # every section and key written out
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_the_profiles_reproduce_the_committed_stream_settings():
    import json

    for name in ("ml-100k", "ml-latest-small"):
        with open(f"bench/results/stream_{name}.json") as f:
            result = json.load(f)
        cfg, used = profiles.load(name), result["config"]
        if "strategies" in used:  # written before the profiles: the old layout
            used = {"model": used["strategies"]["model"], "trainer": used["strategies"]["incremental"],
                    "bootstrap_trainer": used["strategies"]["scratch"], "epochs": used["strategies"]["warmup_epochs"],
                    "min_new_events": used["stream"]["update_every"]}
            assert cfg.model.model_dump() == used["model"]
            keep = {k: v for k, v in used["trainer"].items() if k not in ("min_new_events", "history_len", "poll_interval_s")}
            assert {k: cfg.trainer.model_dump()[k] for k in keep} == keep
            assert cfg.trainer.min_new_events == used["min_new_events"] and cfg.bootstrap.epochs == used["epochs"]
        else:
            assert used == cfg.to_dict() and result["profile"] == name


def test_a_profile_with_an_unknown_key_fails_naming_it(tmp_path, monkeypatch):
    doc = profiles.read_yaml(profiles.profile_path("ml-100k"))
    doc["trainer"]["lr_decay"] = 0.5
    (tmp_path / "deploy" / "profiles").mkdir(parents=True)
    (tmp_path / "deploy" / "profiles" / "typo.yaml").write_text(yaml.safe_dump(doc))
    monkeypatch.setattr(profiles, "profile_dir", lambda: tmp_path / "deploy" / "profiles")
    with pytest.raises(ConfigError, match=r"typo\.yaml: unknown key 'trainer\.lr_decay' \(allowed: batch_size, "):
        profiles.load("typo")
    with pytest.raises(ConfigError, match=r"unknown profile 'ml-1m' \(known: typo;"):
        profiles.load("ml-1m")


def test_app_args_take_a_profile_with_deep_overrides():
    cfg = profiles.from_app_args({"profile": "ml-100k", "config": {"trainer": {"lr": 0.01}, "data_dir": "/d"}})
    base = profiles.load("ml-100k")
    assert cfg.trainer == replace(base.trainer, lr=0.01) and cfg.model == base.model and cfg.data_dir == "/d"
    assert profiles.from_app_args({"config": {"model": {"d_model": 32}}}).model == ModelConfig(d_model=32)
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        profiles.from_app_args({"profile": "nope"})
    with pytest.raises(ConfigError, match="not both"):
        profiles.from_app_args({"profile": "ml-100k", "config_file": "x.yaml"})
    with pytest.raises(ConfigError, match="unknown application args: profiles"):
        profiles.from_app_args({"profiles": "ml-100k"})
    with pytest.raises(ConfigError, match=r"ml-100k\.yaml: trainer\.lr: -1 must be > 0"):
        profiles.from_app_args({"profile": "ml-100k", "config": {"trainer": {"lr": -1}}})


def test_strict_values_and_revalidating_replace():
    for bad in ({"trainer": {"batch_size": "32"}}, {"trainer": {"lr": True}}, {"model": {"d_model": 64.0}}):
        with pytest.raises(ConfigError, match="expected an? (integer|number)"):
            Config.from_dict(bad)
    t = TrainerConfig(lr=1)  # an integer is a number
    assert t.lr == 1.0 and isinstance(t.lr, float)
    with pytest.raises(ConfigError, match=r"^trainer\.batch_size: 0 must be > 0$"):
        replace(t, batch_size=0)  # model_copy(update=...) would not have checked it
    with pytest.raises(ConfigError, match="unknown key 'trainer.bacth_size'"):
        replace(t, bacth_size=8)
    with pytest.raises(ValidationError, match="frozen"):
        t.lr = 2.0


@pytest.mark.parametrize("old,new", sorted(RENAMED.items()))
def test_renamed_keys_fail_naming_the_new_name(old, new):
    section, key = old.split(".")
    with pytest.raises(ConfigError, match=f"unknown key '{old}' .*renamed to '{new}'"):
        Config.from_dict({section: {key: 1}})


@pytest.mark.parametrize("data,needle", [
    ({"modle": {}}, "'modle'"),
    ({"model": {"d_model": 30, "n_heads": 4}}, "model.n_heads"),
    ({"trainer": {"optimizer": "adagrad"}}, "trainer.optimizer"),
    ({"trainer": {"lr": -1}}, "trainer.lr"),
    ({"trainer": {"lr": "fast"}}, "trainer.lr"),
    ({"trainer": {"batch_size": 1.5}}, "trainer.batch_size"),
    ({"cleaning": {"event_types": {"click": {"weight": -1}}}}, "weight"),
    ({"cleaning": {"default_event_type": "tap"}}, "cleaning.default_event_type"),
    ({"cleaning": {"min_timestamp": "yesterday"}}, "cleaning.min_timestamp"),
    ({"serving": {"default_k": 50, "max_k": 10}}, "serving.max_k"),
    ({"model": 3}, "model: expected a mapping, got 3"),
    ({"bootstrap": {"epochs": 0}}, "bootstrap.epochs: 0 must be > 0"),
    ({"evaluation": {"warmup_fraction": 1.0}}, "evaluation.warmup_fraction: 1.0 must be < 1"),
    ({"evaluation": {"variants": {"ogd": {"optimiser": "sgd"}}}}, "evaluation.variants.ogd"),
    ({"model": {"d_modle": 32}}, "unknown key 'model.d_modle' (allowed: arch, d_model,"),
    ({"serving": {"index": "int8"}, "model": {"d_model": 24, "n_heads": 2}}, "needs model.d_model a multiple of 16 (got 24)"),
])
def test_bad_values_name_the_key(data, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        Config.from_dict(data)


def test_from_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data_dir: /x\ntrainer: {use_gpu: false, lr: 0.01}\n")
    cfg = Config.from_yaml(str(p))
    assert cfg.trainer.use_gpu == "false" and cfg.trainer.lr == 0.01
    assert cfg.landing_uri == "/x/landing" and cfg.clean_dir == "/x/clean"


def test_serve_config_yaml_is_a_valid_serve_deploy_config():
    from ray.serve.schema import ServeDeploySchema

    with open("serve_config.yaml") as f:
        schema = ServeDeploySchema.model_validate(yaml.safe_load(f)) if hasattr(ServeDeploySchema, "model_validate") \
            else ServeDeploySchema.parse_obj(yaml.safe_load(f))
    (app,) = schema.applications
    assert app.import_path == "increc_ray.serve.app:app_builder"
    (rec,) = [d for d in app.deployments if d.name == "Recommender"]
    assert rec.autoscaling_config["min_replicas"] >= 1 and rec.autoscaling_config["max_replicas"] > 1


def test_a_profile_that_extends_another_changes_only_its_own_keys():
    base, fresh = profiles.load("ml-100k"), profiles.load("ml-100k-fresh")
    assert fresh.gate.mode == "optimistic" and fresh.trainer.max_update_delay_s == 0.25
    assert base.gate.mode == "strict" and base.trainer.max_update_delay_s is None
    assert fresh.model == base.model and fresh.trainer.min_new_events == base.trainer.min_new_events
