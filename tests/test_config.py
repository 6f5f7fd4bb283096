import pytest
import yaml

from increc_ray.config import Config, LabelRule
from increc_ray.errors import ConfigError


def test_defaults_are_valid_and_round_trip():
    cfg = Config()
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_serve_config_yaml_holds_a_valid_config():
    with open("serve_config.yaml") as f:
        doc = yaml.safe_load(f)
    (app,) = doc["applications"]
    cfg = Config.from_dict(app["args"]["config"])
    assert cfg.cleaning.event_types["rating"] == LabelRule(weight=1.0, min_value=3.5)


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
    ({"model": 3}, "model"),
])
def test_bad_values_name_the_key(data, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
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
