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

import os
import stat

from increc_ray.errors import ConfigError
from increc_ray.profiles import from_app_args
from increc_ray.serve.deployments import EventIngest, ModelTrainer, UserHistory
from increc_ray.serve.recommender import Recommender


def app_builder(args: dict):
    """Serve application builder. ``args``: ``{"profile": NAME}`` (``deploy/profiles/NAME.yaml``)
    or ``{"config_file": PATH}``, either optionally with ``{"config": {...}}`` merged deeply on
    top; or ``{"config": {...}}`` alone (on the built-in defaults). See ``increc_ray.profiles``."""
    return build(from_app_args(args).to_dict())


def build(config: dict, recommender_options: dict | None = None):
    """The application graph for a checked config (``Config.to_dict()``); ``recommender_options``
    go to ``Recommender.options`` (tests and benchmarks set replica counts and autoscaling there,
    as serve_config.yaml's ``deployments`` section does for ``serve deploy``)."""
    private_data_dir(config["data_dir"])
    history = UserHistory.bind(config)
    ingest = EventIngest.bind(config, history)
    trainer = ModelTrainer.bind(config)
    recommender = Recommender.options(**recommender_options) if recommender_options else Recommender
    return recommender.bind(config, ingest, history, trainer)


def private_data_dir(path: str) -> None:
    """Create ``data_dir`` readable and writable by this user only (0700); refuse one that another
    user owns or that others may write to: whoever writes there feeds the trainer its events."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path)
    if st.st_uid != os.getuid():
        raise ConfigError(f"data_dir {path!r} belongs to another user (uid {st.st_uid}); use a folder of your own")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise ConfigError(f"data_dir {path!r} is writable by other users (mode {stat.S_IMODE(st.st_mode):o}); "
                          f"chmod 700 it or choose another folder")
