"""The Ray Serve application: one ``serve deploy`` brings up the whole loop.

    HTTP --> Recommender (autoscaled; holds the model, hot-swaps weights)
               |  /events ----------> EventIngest (1 replica) --durable--> landing zone
               |                         |  background: Ray Data cleaning -> clean store
               |                         +--> UserHistory (read-your-writes, popularity)
               |  /recommend --------> UserHistory (recent items, seen items)
               +-- long-poll --------> ModelTrainer (1 replica): runs the Ray Train
                                         TorchTrainer and the WeightRegistry
"""

from __future__ import annotations

from increc_ray.config import Config
from increc_ray.errors import ConfigError
from increc_ray.serve.deployments import EventIngest, ModelTrainer, UserHistory
from increc_ray.serve.recommender import Recommender


def app_builder(args: dict):
    """Serve application builder: ``args`` is ``{"config": {...}}`` or ``{"config_file": path}``."""
    args = dict(args or {})
    if "config_file" in args:
        cfg = Config.from_yaml(args.pop("config_file"))
    else:
        cfg = Config.from_dict(args.pop("config", {}))
    if args:
        raise ConfigError(f"unknown application args: {', '.join(sorted(args))} (use 'config' or 'config_file')")
    config = cfg.to_dict()
    history = UserHistory.bind(config)
    ingest = EventIngest.bind(config, history)
    trainer = ModelTrainer.bind(config)
    return Recommender.bind(config, ingest, history, trainer)
