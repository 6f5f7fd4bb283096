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

from increc_ray.profiles import from_app_args
from increc_ray.serve.deployments import EventIngest, ModelTrainer, UserHistory
from increc_ray.serve.recommender import Recommender


def app_builder(args: dict):
    """Serve application builder. ``args``: ``{"profile": NAME}`` (``deploy/profiles/NAME.yaml``)
    or ``{"config_file": PATH}``, either optionally with ``{"config": {...}}`` merged deeply on
    top; or ``{"config": {...}}`` alone (on the built-in defaults). See ``increc_ray.profiles``."""
    config = from_app_args(args).to_dict()
    history = UserHistory.bind(config)
    ingest = EventIngest.bind(config, history)
    trainer = ModelTrainer.bind(config)
    return Recommender.bind(config, ingest, history, trainer)
