"""One typed configuration for ingest, cleaning, model, trainer and serving.

Loaded once (from YAML or a dict), checked when built: unknown keys and bad
values fail with a message naming the key and the value. The same frozen
object reaches every stage, so no stage reads ``os.environ`` on its own.

>>> cfg = Config.from_dict({"model": {"d_model": 32}})
>>> cfg.model.d_model
32
>>> Config.from_dict({"model": {"d_modle": 32}})
Traceback (most recent call last):
...
increc_ray.errors.ConfigError: unknown key 'model.d_modle' (allowed: arch, d_model, dropout, initial_item_capacity, max_len, n_heads, n_layers)
"""

from __future__ import annotations

import collections.abc
import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Mapping

from increc_ray.errors import ConfigError


@dataclass(frozen=True)
class LabelRule:
    """How one event type becomes a training label.

    An event is a positive with this ``weight`` when ``weight > 0`` and, if
    ``min_value`` is set, its ``value`` is at least ``min_value`` (e.g. a rating
    below the threshold is seen, but not a positive).
    """

    weight: float = 1.0
    min_value: float | None = None

    def __post_init__(self) -> None:
        _check(self.weight >= 0, "weight", self.weight, "must be >= 0")


def _default_event_types() -> dict[str, LabelRule]:
    return {
        "view": LabelRule(weight=0.5),
        "click": LabelRule(weight=1.0),
        "add_to_cart": LabelRule(weight=2.0),
        "purchase": LabelRule(weight=3.0),
        "like": LabelRule(weight=1.0),
        "rating": LabelRule(weight=1.0, min_value=3.5),
    }


@dataclass(frozen=True)
class IngestConfig:
    """Where events land and how they are picked up."""

    landing_uri: str = ""  # local path or pyarrow filesystem URI; "" = <data_dir>/landing
    poll_interval_s: float = 1.0  # how often the landing zone is scanned for new files
    max_events_per_request: int = 10_000
    max_body_bytes: int = 16 * 1024 * 1024
    max_files_per_batch: int = 64  # files cleaned together in one Ray Data job

    def __post_init__(self) -> None:
        _check(self.poll_interval_s > 0, "ingest.poll_interval_s", self.poll_interval_s, "must be > 0")
        _check(self.max_events_per_request > 0, "ingest.max_events_per_request", self.max_events_per_request, "must be > 0")
        _check(self.max_body_bytes > 0, "ingest.max_body_bytes", self.max_body_bytes, "must be > 0")
        _check(self.max_files_per_batch > 0, "ingest.max_files_per_batch", self.max_files_per_batch, "must be > 0")


@dataclass(frozen=True)
class CleaningConfig:
    """Validation and labelling rules applied to every event."""

    event_types: Mapping[str, LabelRule] = field(default_factory=_default_event_types)
    min_timestamp: str = "1990-01-01T00:00:00Z"  # older events are rejected
    max_future_skew_s: float = 86_400.0  # events this far past "now" are rejected
    max_id_length: int = 256
    default_event_type: str = "click"  # used when an event carries no event_type (e.g. a bare user,item,timestamp file)

    def __post_init__(self) -> None:
        _check(len(self.event_types) > 0, "cleaning.event_types", dict(self.event_types), "must not be empty")
        _check(self.max_future_skew_s >= 0, "cleaning.max_future_skew_s", self.max_future_skew_s, "must be >= 0")
        _check(self.max_id_length > 0, "cleaning.max_id_length", self.max_id_length, "must be > 0")
        _check(self.default_event_type in self.event_types, "cleaning.default_event_type", self.default_event_type,
               f"must be one of cleaning.event_types ({', '.join(sorted(self.event_types))})")
        from datetime import datetime

        try:
            datetime.fromisoformat(self.min_timestamp.replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"cleaning.min_timestamp: {self.min_timestamp!r} is not an ISO-8601 timestamp") from None


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the transformer sequential recommender (built from config, never downloaded)."""

    arch: str = "gpt2"  # causal, SASRec-style encoder from `transformers`
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 2
    max_len: int = 50  # longest item sequence the encoder sees
    dropout: float = 0.1
    initial_item_capacity: int = 1024  # embedding rows allocated up front; grows by doubling

    def __post_init__(self) -> None:
        _check(self.arch in ("gpt2",), "model.arch", self.arch, "must be one of: gpt2")
        _check(self.d_model > 0, "model.d_model", self.d_model, "must be > 0")
        _check(self.n_heads > 0 and self.d_model % self.n_heads == 0, "model.n_heads", self.n_heads,
               f"must be > 0 and divide d_model={self.d_model}")
        _check(self.n_layers > 0, "model.n_layers", self.n_layers, "must be > 0")
        _check(self.max_len >= 2, "model.max_len", self.max_len, "must be >= 2")
        _check(0 <= self.dropout < 1, "model.dropout", self.dropout, "must be in [0, 1)")
        _check(self.initial_item_capacity >= 2, "model.initial_item_capacity", self.initial_item_capacity, "must be >= 2")


@dataclass(frozen=True)
class TrainerConfig:
    """How the incremental trainer turns new events into weight updates."""

    optimizer: str = "adamw"  # adamw | adam | sgd | momentum
    lr: float = 1e-3
    weight_decay: float = 0.01
    momentum: float = 0.9  # for sgd/momentum
    lr_schedule: str = "adaptive"  # constant | adaptive (shrinks when the update loss rises)
    # Update defaults chosen on the prequential replays (README "Incremental vs retraining"): small
    # batches, one pass, a quarter as many replayed users as new ones, each scored on its newest few
    # positions only (the full softmax over every item is most of an update's cost).
    batch_size: int = 16  # sequences per optimizer step
    steps_per_update: int = 1  # passes over the new data per update
    replay_ratio: float = 0.25  # replayed sequences per new sequence (against forgetting)
    replay_users: int = 10_000  # reservoir of users kept for replay
    replay_positions: int = 5  # loss on only the newest N positions of a replayed sequence; 0 = all
    # items kept per user once learned (at least model.max_len + 1): what replay and train_epoch
    # see, and what checkpoints hold. New events are never cut off before an update learns them,
    # however many arrive at once; a long burst is learned in max_len-long slices.
    history_len: int = 200
    item_lr_mult: float = 1.0  # lr multiplier of the item table (new and rising items adapt faster)
    # a rarely seen item's row takes longer steps, so that a new item can be recommended after a
    # few events: its step is stretched by 1 + (rare_item_lr_mult - 1) * c / (c + count), where
    # c = rare_item_count and count = the item's positive events so far; 1 = off
    rare_item_lr_mult: float = 1.0
    rare_item_count: float = 20.0
    # publish (and score with) an exponential moving average of the weights after each update:
    # ema = ema_decay * ema + (1 - ema_decay) * weights; 0 = publish the latest weights
    ema_decay: float = 0.0
    min_new_events: int = 1  # wait for at least this many cleaned events before an update
    max_new_events: int = 20_000  # cap per update; the rest waits for the next one
    grad_clip: float = 1.0
    publish_every: int = 1  # publish a weight version every N updates
    checkpoint_every: int = 10  # checkpoint every N updates
    poll_interval_s: float = 0.5
    use_gpu: str = "auto"  # auto | true | false
    seed: int = 0

    def __post_init__(self) -> None:
        _check(self.optimizer in ("adamw", "adam", "sgd", "momentum"), "trainer.optimizer", self.optimizer,
               "must be one of: adamw, adam, sgd, momentum")
        _check(self.lr > 0, "trainer.lr", self.lr, "must be > 0")
        _check(self.weight_decay >= 0, "trainer.weight_decay", self.weight_decay, "must be >= 0")
        _check(0 <= self.momentum < 1, "trainer.momentum", self.momentum, "must be in [0, 1)")
        _check(self.lr_schedule in ("constant", "adaptive"), "trainer.lr_schedule", self.lr_schedule,
               "must be one of: constant, adaptive")
        _check(self.batch_size > 0, "trainer.batch_size", self.batch_size, "must be > 0")
        _check(self.steps_per_update > 0, "trainer.steps_per_update", self.steps_per_update, "must be > 0")
        _check(self.replay_ratio >= 0, "trainer.replay_ratio", self.replay_ratio, "must be >= 0")
        _check(self.replay_users >= 0, "trainer.replay_users", self.replay_users, "must be >= 0")
        _check(self.replay_positions >= 0, "trainer.replay_positions", self.replay_positions, "must be >= 0")
        _check(0 <= self.ema_decay < 1, "trainer.ema_decay", self.ema_decay, "must be in [0, 1)")
        _check(self.rare_item_lr_mult >= 1, "trainer.rare_item_lr_mult", self.rare_item_lr_mult, "must be >= 1")
        _check(self.rare_item_count > 0, "trainer.rare_item_count", self.rare_item_count, "must be > 0")
        _check(self.item_lr_mult > 0, "trainer.item_lr_mult", self.item_lr_mult, "must be > 0")
        _check(self.history_len > 0, "trainer.history_len", self.history_len, "must be > 0")
        _check(self.min_new_events > 0, "trainer.min_new_events", self.min_new_events, "must be > 0")
        _check(self.max_new_events >= self.min_new_events, "trainer.max_new_events", self.max_new_events,
               "must be >= trainer.min_new_events")
        _check(self.grad_clip > 0, "trainer.grad_clip", self.grad_clip, "must be > 0")
        _check(self.publish_every > 0, "trainer.publish_every", self.publish_every, "must be > 0")
        _check(self.checkpoint_every > 0, "trainer.checkpoint_every", self.checkpoint_every, "must be > 0")
        _check(self.poll_interval_s > 0, "trainer.poll_interval_s", self.poll_interval_s, "must be > 0")
        _check(self.use_gpu in ("auto", "true", "false"), "trainer.use_gpu", self.use_gpu,
               "must be one of: auto, true, false")


@dataclass(frozen=True)
class GateConfig:
    """Champion/challenger gate between the trainer and serving (``increc_ray.learn.gate``)."""

    enabled: bool = True  # false: every update goes live (publish_every), unchecked
    min_events: int = 500  # fresh events a candidate is scored on before it is judged
    max_drop: float = 0.05  # a candidate may score at most this fraction below the live version
    z: float = 2.0  # ... or below popularity, by more than z standard errors of the paired difference
    max_eval_per_slice: int = 256  # events scored per slice of the clean stream (spread evenly)
    k: int = 10  # NDCG@k

    def __post_init__(self) -> None:
        _check(isinstance(self.enabled, bool), "gate.enabled", self.enabled, "must be true or false")
        _check(self.min_events > 0, "gate.min_events", self.min_events, "must be > 0")
        _check(0 <= self.max_drop < 1, "gate.max_drop", self.max_drop, "must be in [0, 1)")
        _check(self.z >= 0, "gate.z", self.z, "must be >= 0")
        _check(self.max_eval_per_slice > 0, "gate.max_eval_per_slice", self.max_eval_per_slice, "must be > 0")
        _check(self.k > 0, "gate.k", self.k, "must be > 0")


@dataclass(frozen=True)
class ServingConfig:
    """Recommend endpoint behaviour."""

    default_k: int = 10
    max_k: int = 200
    history_len: int = 200  # recent items kept per user for read-your-writes
    popularity_half_life_s: float = 3600.0  # decay of the popularity fallback, in event time
    weight_poll_timeout_s: float = 5.0  # long-poll for a newer weight version

    def __post_init__(self) -> None:
        _check(self.default_k > 0, "serving.default_k", self.default_k, "must be > 0")
        _check(self.max_k >= self.default_k, "serving.max_k", self.max_k, "must be >= serving.default_k")
        _check(self.history_len > 0, "serving.history_len", self.history_len, "must be > 0")
        _check(self.popularity_half_life_s > 0, "serving.popularity_half_life_s", self.popularity_half_life_s, "must be > 0")
        _check(self.weight_poll_timeout_s > 0, "serving.weight_poll_timeout_s", self.weight_poll_timeout_s, "must be > 0")


@dataclass(frozen=True)
class Config:
    """The whole increc_ray configuration."""

    data_dir: str = "/tmp/increc_ray"  # landing/, clean/, quarantine/, checkpoints/ live here
    ingest: IngestConfig = field(default_factory=IngestConfig)
    cleaning: CleaningConfig = field(default_factory=CleaningConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)

    def __post_init__(self) -> None:
        _check(bool(self.data_dir), "data_dir", self.data_dir, "must not be empty")

    # Derived locations: one place decides the layout of data_dir.
    @property
    def landing_uri(self) -> str:
        return self.ingest.landing_uri or os.path.join(self.data_dir, "landing")

    @property
    def clean_dir(self) -> str:
        return os.path.join(self.data_dir, "clean")

    @property
    def quarantine_dir(self) -> str:
        return os.path.join(self.data_dir, "quarantine")

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.data_dir, "checkpoints")

    @property
    def version_file(self) -> str:
        """The last weight version number handed out (``increc_ray.learn.versions``)."""
        return os.path.join(self.data_dir, "versions", "last")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Config":
        return _build(cls, data or {}, prefix="")

    @classmethod
    def from_yaml(cls, path: str) -> "Config":
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)


def _check(ok: bool, key: str, value: Any, why: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {value!r} {why}")


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: _to_plain(v) for k, v in obj.items()}
    return obj


def _build(cls: type, data: Any, prefix: str) -> Any:
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            raise ConfigError(f"unknown key {path!r} (allowed: {', '.join(sorted(fields))})")
        kwargs[key] = _coerce(hints[key], value, path)
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - fields are checked above
        raise ConfigError(f"{prefix or 'config'}: {e}") from None


def _coerce(tp: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=path + ".")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, path)
    if origin in (collections.abc.Mapping, dict):
        key_t, val_t = typing.get_args(tp) or (str, Any)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{path}: expected a mapping, got {value!r}")
        return {str(k): _coerce(val_t, v, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, bool):  # YAML turns `true` into a bool; accept it for flag-like strings
            return "true" if value else "false"
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return str(value)
    return value
