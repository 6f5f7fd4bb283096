"""One typed configuration for ingest, cleaning, model, trainer, bootstrap, gate, serving and evaluation.

Loaded once (from YAML or a dict, usually a profile under ``deploy/profiles/``: see
``increc_ray.profiles``), checked when built: unknown keys and bad values fail with a message
naming the key and the value. The same frozen object reaches every stage, so no stage reads
``os.environ`` on its own. The models are pydantic v2, strict: ``"1"`` is no integer, ``true``
is no number. ``replace(cfg, key=value)`` is the re-validating copy (``model_copy(update=...)``
would not check the new values).

>>> cfg = Config.from_dict({"model": {"d_model": 32}})
>>> cfg.model.d_model
32
>>> Config.from_dict({"model": {"d_modle": 32}})
Traceback (most recent call last):
...
increc_ray.errors.ConfigError: unknown key 'model.d_modle' (allowed: arch, d_model, dropout, initial_item_capacity, max_len, n_heads, n_layers)
>>> replace(cfg.trainer, lr=-1.0)
Traceback (most recent call last):
...
increc_ray.errors.ConfigError: trainer.lr: -1.0 must be > 0
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any, ClassVar, Literal, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from increc_ray.config_errors import SectionError, describe
from increc_ray.errors import ConfigError

# Keys renamed by issue 10 (old -> new); an old key fails naming its new name.
RENAMED = {
    "ingest.poll_interval_s": "ingest.landing_poll_interval_s",
    "trainer.poll_interval_s": "trainer.clean_store_poll_interval_s",
    "trainer.history_len": "trainer.kept_items_per_user",
    "serving.history_len": "serving.recent_items_per_user",
}


class _Section(BaseModel):
    """A frozen, strict config section; building one with a bad key or value raises ConfigError."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)
    section: ClassVar[str] = ""  # the key this section has in ``Config`` (for messages)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise describe(e, type(self), type(self).section, RENAMED) from None


S = TypeVar("S", bound=_Section)


def replace(obj: S, **changes: Any) -> S:
    """A copy of the config section ``obj`` with ``changes``, validated like a new one."""
    try:
        return type(obj)(**{**dict(obj), **changes})
    except SectionError as e:
        raise ConfigError(str(e)) from None


class LabelRule(_Section):
    """How one event type becomes a training label.

    An event is a positive with this ``weight`` when ``weight > 0`` and, if
    ``min_value`` is set, its ``value`` is at least ``min_value`` (e.g. a rating
    below the threshold is seen, but not a positive).
    """

    weight: float = Field(1.0, ge=0)
    min_value: float | None = None


def _default_event_types() -> dict[str, LabelRule]:
    return {
        "view": LabelRule(weight=0.5),
        "click": LabelRule(weight=1.0),
        "add_to_cart": LabelRule(weight=2.0),
        "purchase": LabelRule(weight=3.0),
        "like": LabelRule(weight=1.0),
        "rating": LabelRule(weight=1.0, min_value=3.5),
    }


class IngestConfig(_Section):
    """Where events land and how they are picked up."""

    section: ClassVar[str] = "ingest"
    landing_uri: str = ""  # local path or pyarrow filesystem URI; "" = <data_dir>/landing
    landing_poll_interval_s: float = Field(1.0, gt=0)  # how often the landing zone is scanned for new files
    max_events_per_request: int = Field(10_000, gt=0)
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0)
    max_files_per_batch: int = Field(64, gt=0)  # files cleaned together in one Ray Data job
    # A pass whose pending files total at most this many bytes is cleaned in the ingest replica's
    # own process, by the function the Ray Data job maps: a job's fixed cost is most of a small
    # pass (bench/clean_pass.py). Bulk files (a dropped dataset, a backlog) still go to Ray Data.
    # 0 = always Ray Data.
    inline_clean_max_bytes: int = Field(1 << 20, ge=0)
    # Disk and de-duplication memory bounded in event time (increc_ray/ingest/retention.py): a new
    # event older than the newest accepted one by more than this is quarantined (reason
    # "retention"), and clean parts wholly older than that, behind the trainer's checkpoint, are
    # deleted with their landing files, their counts folded into the ledger. None = keep everything.
    retention_s: float | None = Field(None, gt=0)
    prune_interval_s: float = Field(300.0, gt=0)  # how often the cleaning thread looks for parts to prune


class CleaningConfig(_Section):
    """Validation and labelling rules applied to every event."""

    section: ClassVar[str] = "cleaning"
    event_types: dict[str, LabelRule] = Field(default_factory=_default_event_types)
    min_timestamp: str = "1990-01-01T00:00:00Z"  # older events are rejected
    max_future_skew_s: float = Field(86_400.0, ge=0)  # events this far past "now" are rejected
    max_id_length: int = Field(256, gt=0)
    default_event_type: str = "click"  # used when an event carries no event_type (e.g. a bare user,item,timestamp file)
    # Abuse that looks valid (increc_ray/ingest/rate.py), judged on clean, new events in event time.
    # A user's event is refused (reason "rate") when that user already has this many accepted
    # events within 60 s of it; None = off. Measured peak of one user within 60 s: 30 events in
    # ml-100k, 392 in ml-latest-small (a bulk of ratings stamped with the same second).
    rate_limit_per_minute: int | None = Field(1000, gt=0)
    rate_users_tracked: int = Field(1_000_000, gt=0)  # users whose last minute is kept (least recently seen dropped)
    # A new id past these counts is refused (reason "cardinality"); known ids always pass; None = no
    # limit. Generous bounds on memory: with trainer.loss full the trainer scores every known item
    # at every position (1M items x 16 sequences x 50 positions = 3.2 GB of float32 logits a step;
    # sampled: its negatives only), and user histories keep serving.recent_items_per_user items.
    max_users: int | None = Field(10_000_000, gt=0)
    max_items: int | None = Field(1_000_000, gt=0)

    @field_validator("min_timestamp")
    @classmethod
    def _iso(cls, v: str) -> str:
        try:
            datetime.fromisoformat(v.replace("Z", "+00:00"))
        except ValueError:
            raise SectionError(None, v, "is not an ISO-8601 timestamp") from None
        return v

    @model_validator(mode="after")
    def _default_is_known(self) -> "CleaningConfig":
        if not self.event_types:
            raise SectionError("event_types", {}, "must not be empty")
        if self.default_event_type not in self.event_types:
            raise SectionError("default_event_type", self.default_event_type,
                      f"must be one of cleaning.event_types ({', '.join(sorted(self.event_types))})")
        return self


class ModelConfig(_Section):
    """Shape of the transformer sequential recommender (built from config, never downloaded)."""

    section: ClassVar[str] = "model"
    arch: Literal["gpt2"] = "gpt2"  # causal, SASRec-style encoder from `transformers`
    d_model: int = Field(64, gt=0)
    n_layers: int = Field(2, gt=0)
    n_heads: int = Field(2, gt=0)
    max_len: int = Field(50, ge=2)  # longest item sequence the encoder sees
    dropout: float = Field(0.1, ge=0, lt=1)
    initial_item_capacity: int = Field(1024, ge=2)  # embedding rows allocated up front; grows by doubling

    @model_validator(mode="after")
    def _heads_divide(self) -> "ModelConfig":
        if self.d_model % self.n_heads:
            raise SectionError("n_heads", self.n_heads, f"must divide d_model={self.d_model}")
        return self


class TrainerConfig(_Section):
    """How the incremental trainer turns new events into weight updates."""

    section: ClassVar[str] = "trainer"
    optimizer: Literal["adamw", "adam", "sgd", "momentum"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # for sgd/momentum
    lr_schedule: Literal["constant", "adaptive"] = "adaptive"  # adaptive: shrinks when the update loss rises
    # Update defaults chosen on the prequential replays (README "Incremental vs retraining"): small
    # batches, one pass, a quarter as many replayed users as new ones, each scored on its newest few
    # positions only (the full softmax over every item is most of an update's cost).
    batch_size: int = Field(16, gt=0)  # sequences per optimizer step
    steps_per_update: int = Field(1, gt=0)  # passes over the new data per update
    replay_ratio: float = Field(0.25, ge=0)  # replayed sequences per new sequence (against forgetting)
    replay_users: int = Field(10_000, ge=0)  # reservoir of users kept for replay
    replay_positions: int = Field(5, ge=0)  # loss on only the newest N positions of a replayed sequence; 0 = all
    # items kept per user once learned (at least model.max_len + 1): what replay and train_epoch
    # see, and what checkpoints hold. New events are never cut off before an update learns them,
    # however many arrive at once; a long burst is learned in max_len-long slices.
    kept_items_per_user: int = Field(200, gt=0)
    item_lr_mult: float = Field(1.0, gt=0)  # lr multiplier of the item table (new and rising items adapt faster)
    # a rarely seen item's row takes longer steps, so that a new item can be recommended after a
    # few events: its step is stretched by 1 + (rare_item_lr_mult - 1) * c / (c + count), where
    # c = rare_item_count and count = the item's positive events so far; 1 = off
    rare_item_lr_mult: float = Field(1.0, ge=1)
    rare_item_count: float = Field(20.0, gt=0)
    # Which rows the stretch applies to: "all" rows the step moves (every row with the full
    # softmax, the drawn negatives too with the sampled one), or only the rows "named" by the
    # step's events (its inputs and targets): a rare item drawn as a negative then steps as usual.
    rare_item_rows: Literal["all", "named"] = "all"
    # publish (and score with) an exponential moving average of the weights after each update:
    # ema = ema_decay * ema + (1 - ema_decay) * weights; 0 = publish the latest weights
    ema_decay: float = Field(0.0, ge=0, lt=1)
    # an update runs once this many cleaned events are waiting (the stream replay's step, too)
    min_new_events: int = Field(1, gt=0)
    max_new_events: int = Field(20_000, gt=0)  # cap per update; the rest waits for the next one
    # Deployed only: update with fewer than min_new_events once the oldest unlearned event has
    # waited this long (a slow stream still reaches the model within it); null: wait for the count.
    max_update_delay_s: float | None = Field(None, gt=0)
    grad_clip: float = Field(1.0, gt=0)
    # Loss of a step. full: softmax over every known item (exact; its cost grows with the
    # catalogue: a step at 1M items took ~44 s). sampled: softmax over the target and `negatives`
    # items drawn per step, shared by the batch, with probability ~ (count + 1) ** negative_power
    # (0: uniform; 0.75: word2vec's smoothed popularity), each logit less the log of its item's
    # probability (logQ correction), a negative equal to the row's target masked out; fewer live
    # items than `negatives`: all of them, no correction (the full softmax). sampled also steps
    # only the item rows a step touches (inputs, targets, negatives: a lazy optimizer step, weight
    # decay included), so neither the loss nor the optimizer touches every row.
    loss: Literal["full", "sampled"] = "full"
    negatives: int = Field(1024, gt=0)
    negative_power: float = Field(0.75, ge=0, le=1)
    # sampled: the step's own targets are negatives too (mixed negative sampling; each a negative
    # for the other rows, its logit less the same log probability): on ml-latest-small with 1024
    # drawn negatives, NDCG@10 0.0173 -> 0.0216 (full softmax 0.0240; README "A large catalogue")
    in_batch_negatives: bool = False
    publish_every: int = Field(1, gt=0)  # publish a weight version every N updates
    # Deployed only: while catching up (at least min_new_events more wait after an update), publish
    # (and take the online metric) at most every catch_up_publish_s: the versions in between would
    # be overtaken before they were live. At 1M items publishing and the online metric took 35% of
    # the deployed trainer's time (bench/results/serve_load_1m_int8.json). 0: every update.
    catch_up_publish_s: float = Field(2.0, ge=0)
    checkpoint_every: int = Field(10, gt=0)  # checkpoint every N updates
    # ... and no sooner than the last checkpoint's duration x (1 / share - 1) after it: at most this
    # share of the trainer's time goes to checkpoints. A checkpoint writes the whole state (item
    # table and AdamW moments: 1.5 GiB at 1M items); in the deployed 1M-item run, every 10 updates
    # took 60% of the trainer's time (README "A large catalogue"). At 10k items it changes nothing.
    checkpoint_max_share: float = Field(0.1, gt=0, le=1)
    keep_versions: int = Field(5, ge=1)  # newest promoted weight sets kept on disk for POST /admin/rollback
    clean_store_poll_interval_s: float = Field(0.5, gt=0)  # wait between looks for new clean events
    # Bounded state: users and items with no positive event for this long (event time) leave the
    # learner (sequences, replay, vocabulary; an item's row and optimizer moments go to the next
    # new item); null keeps them forever. Checked every tenth of the shorter one.
    user_ttl_s: float | None = Field(90 * 86400.0, gt=0)
    item_ttl_s: float | None = Field(90 * 86400.0, gt=0)
    # CPU priority of the trainer's process below serving's (Linux nice, 0-19): on a machine it
    # shares with the replicas, a request waiting for a core gets it before the next update step;
    # the trainer learns from what serving leaves (bench/serve_load.py measures both sides)
    nice: int = Field(0, ge=0, le=19)
    use_gpu: Literal["auto", "true", "false"] = "auto"
    seed: int = 0

    @field_validator("use_gpu", mode="before")
    @classmethod
    def _yaml_bool(cls, v: Any) -> Any:
        return ("true" if v else "false") if isinstance(v, bool) else v  # YAML reads `false` as a bool

    @model_validator(mode="after")
    def _max_ge_min(self) -> "TrainerConfig":
        if self.max_new_events < self.min_new_events:
            raise SectionError("max_new_events", self.max_new_events, "must be >= trainer.min_new_events")
        return self


class BootstrapConfig(_Section):
    """Training a model from scratch on everything seen so far, to convergence: a deployment
    setting (a cold-started trainer bootstraps on the events already there), and the from-scratch
    training of the benchmarks (offline training, the replay's warm-up and full retraining).

    At most ``epochs`` passes over each user's newest ``kept_items_per_user`` items; where a
    validation split exists (offline: each user's second-to-last item) it is scored every
    ``eval_every`` epochs, training stops after ``patience`` scores without a better NDCG@10 and
    the best weights are kept. ``max_minutes`` caps the wall clock. The replay has no validation
    split, so its warm-up and retrains run exactly ``epochs`` epochs. The other trainer settings
    (seed, grad_clip, momentum, replay_users, the loss and its negatives) are the trainer's;
    item_lr_mult, rare-item steps and the weight average are off: a from-scratch pass sees every
    item many times.
    """

    section: ClassVar[str] = "bootstrap"
    epochs: int = Field(10, gt=0)
    patience: int = Field(5, gt=0)  # validation scores without a better NDCG@10 before stopping
    eval_every: int = Field(2, gt=0)  # epochs between validation scores
    max_minutes: float = Field(25.0, gt=0)
    optimizer: Literal["adamw", "adam", "sgd", "momentum"] = "adamw"
    lr: float = Field(2e-3, gt=0)  # constant: the adaptive schedule acts on updates, not epochs
    weight_decay: float = Field(0.01, ge=0)
    batch_size: int = Field(32, gt=0)
    kept_items_per_user: int = Field(1_000_000, gt=0)  # 1000000: every user's whole history
    # When the deployed trainer runs a full pass (``increc_ray.learn.bootstrap``):
    min_events: int = Field(2000, ge=0)  # no full pass on fewer unread events (0: never a full pass on a backlog)
    backlog_ratio: float = Field(1.0, ge=0)  # unread events >= this x the events learned: a full pass (0: never)
    consolidate_every_events: int = Field(0, ge=0)  # a full pass after every N events learned (0: never)
    holdout_fraction: float = Field(0.1, gt=0, lt=1)  # newest share of the events held out for early stopping
    holdout_max_events: int = Field(5000, gt=0)  # at most this many of them scored per validation


ARTICLE_VARIANTS: dict[str, dict[str, Any]] = {
    # the seed article's update rules, as overrides of the trainer section
    "ogd": {"optimizer": "sgd", "batch_size": 1, "lr": 0.05, "lr_schedule": "constant"},
    "minibatch_sgd": {"optimizer": "sgd", "lr": 0.5, "lr_schedule": "constant"},
    "momentum": {"optimizer": "momentum", "lr": 0.05, "lr_schedule": "constant"},
    "adamw": {"optimizer": "adamw", "lr_schedule": "constant"},
    "adaptive_lr": {"optimizer": "adamw", "lr_schedule": "adaptive"},
}


class EvaluationConfig(_Section):
    """The benchmarks' protocol (``increc evaluate``); the deployment ignores this section.

    The replay steps by ``trainer.min_new_events`` events, as the live trainer updates.
    """

    section: ClassVar[str] = "evaluation"
    k: int = Field(10, gt=0)  # HR@k, NDCG@k
    warmup_fraction: float = Field(0.5, gt=0, lt=1)  # share of the time span used for the replay's warm-up
    windows: int = Field(20, gt=0)  # the replayed part is cut into this many windows of equal event counts
    eval_per_window: int = Field(0, ge=0)  # evaluate at most this many events per window (seeded); 0 = all
    seed: int = 0  # of that sample
    retrain_every: int = Field(4, gt=0)  # windows between full retrains (each a bootstrap on all events so far)
    last_window_steps: int = Field(5, gt=0)  # last_window: passes over the newest window, no replay
    last_window_batch: int = Field(16, gt=0)  # its batch (smaller than the trainer's: it fits harder)
    popularity_half_life_windows: float = Field(1.0, gt=0)  # recent popularity's decay
    # incremental[<name>]: the trainer with these overrides (not min_new_events: the step is shared)
    variants: dict[str, dict[str, Any]] = Field(default_factory=lambda: {k: dict(v) for k, v in ARTICLE_VARIANTS.items()})


class GateConfig(_Section):
    """Champion/challenger gate between the trainer and serving (``increc_ray.learn.gate``)."""

    section: ClassVar[str] = "gate"
    enabled: bool = True  # false: every update goes live (trainer.publish_every), unchecked
    # strict: a version goes live only after it is judged (its freshness waits min_events).
    # optimistic: while the last judgment passed, every update goes live at once and is judged
    # afterwards; a rejection rolls serving back to the last judged version and the gate stays
    # strict until a candidate passes again (a bad update is live for one judgment at most).
    mode: Literal["strict", "optimistic"] = "strict"
    min_events: int = Field(500, gt=0)  # fresh events a candidate is scored on before it is judged
    max_drop: float = Field(0.05, ge=0, lt=1)  # a candidate may score at most this fraction below the live version
    z: float = Field(2.0, ge=0)  # ... or below popularity, by more than z standard errors of the paired difference
    max_eval_per_slice: int = Field(256, gt=0)  # events scored per slice of the clean stream (spread evenly)
    k: int = Field(10, gt=0)  # NDCG@k


class ServingConfig(_Section):
    """Recommend endpoint behaviour."""

    section: ClassVar[str] = "serving"
    default_k: int = Field(10, gt=0)
    max_k: int = Field(200, gt=0)
    recent_items_per_user: int = Field(200, gt=0)  # kept per user for read-your-writes and seen-item exclusion
    popularity_half_life_s: float = Field(3600.0, ge=0)  # decay of the popularity fallback, in event time; 0: all-time counts
    # Bounded state: users and items with no event for this long (event time) leave the history,
    # the popularity counts and the seen-item sets; null keeps them forever.
    user_ttl_s: float | None = Field(90 * 86400.0, gt=0)
    item_ttl_s: float | None = Field(90 * 86400.0, gt=0)
    weight_poll_timeout_s: float = Field(5.0, gt=0)  # long-poll for a newer weight version
    # A recommend call waits this long for the user-history replica; past it (the replica is
    # down or restarting) the answer is the popular list cached every fallback_refresh_s, marked degraded.
    history_timeout_s: float = Field(2.0, gt=0)
    fallback_refresh_s: float = Field(10.0, gt=0)
    # Each replica answers from its own copy of the user history, kept by a long-poll; a write
    # answers once every live replica has it (increc_ray.serve.sync). A replica that cannot
    # reach the history replica stops holding writes up after history_lease_s, and stops trusting
    # its copy after 2/3 of it. false: every recommend call asks the history replica.
    local_history: bool = True
    history_lease_s: float = Field(3.0, gt=0)
    # Concurrent recommend calls scored in one forward pass: at most this many, waiting at most
    # batch_wait_s for company (max_batch_size 1: each call alone). 0: no wait, a batch is the
    # calls that queued while the last one ran (as fast at saturation as 2 ms, and faster below
    # it: README "Waiting for company").
    max_batch_size: int = Field(16, ge=1)
    batch_wait_s: float = Field(0.0, ge=0)
    # A new replica waits at most this long for the live weights and its history copy before it
    # takes requests (autoscaling adds replicas under load: they must not answer popularity).
    ready_timeout_s: float = Field(30.0, ge=0)
    # Top-k: "exact" scans the item table per request; "hnsw" ranks exactly only what an HNSW
    # graph finds nearest (index_candidates) plus the rows changed since the graph was built,
    # from index_min_items items on (increc_ray.serve.index: meant for trainer.loss sampled);
    # "int8" ranks exactly the index_candidates best rows of a scan of the table quantized to
    # int8, from index_min_items items on (increc_ray.serve.quantized; model.d_model a multiple
    # of 16; the registry quantizes each base once for every replica).
    index: Literal["exact", "hnsw", "int8"] = "exact"
    index_min_items: int = Field(50_000, ge=0)
    index_candidates: int = Field(100, gt=0)
    index_ef: int = Field(64, gt=0)
    index_connectivity: int = Field(16, ge=2)
    index_refresh_fraction: float = Field(0.02, gt=0, le=1)  # changed rows past this share: refresh the graph
    index_tolerance: float = Field(0.0, ge=0)  # a row counts as changed once it moved this share of its length
    index_threads: int = Field(1, ge=1)  # threads a build or refresh may use, beside serving

    @model_validator(mode="after")
    def _max_ge_default(self) -> "ServingConfig":
        if self.max_k < self.default_k:
            raise SectionError("max_k", self.max_k, "must be >= serving.default_k")
        return self


class AuthConfig(_Section):
    """Who may write (``increc_ray.serve.api``): a bearer token guards ``POST /events``,
    ``GET /status`` and every ``/admin`` route, and ``/recommend`` if ``protect_recommend``.

    The token is read when a replica starts: from the environment variable ``token_env``, else
    the file ``token_file`` (whitespace stripped). With ``required`` and no token the app refuses
    to start; the token never appears in the config, ``/status`` or the logs.
    """

    section: ClassVar[str] = "auth"
    required: bool = True  # false: no token configured means open routes (a loud warning at start)
    token_env: str = Field("INCREC_TOKEN", min_length=1)  # environment variable holding the token
    token_file: str = ""  # else a file holding it (e.g. a mounted secret); "" = none
    protect_recommend: bool = False  # true: GET /recommend needs the token too


class Config(_Section):
    """The whole increc_ray configuration."""

    data_dir: str = Field("/tmp/increc_ray", min_length=1)  # landing/, clean/, quarantine/, checkpoints/ live here
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    cleaning: CleaningConfig = Field(default_factory=CleaningConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    bootstrap: BootstrapConfig = Field(default_factory=BootstrapConfig)
    gate: GateConfig = Field(default_factory=GateConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _retention_keeps_what_serving_keeps(self) -> "Config":
        # A restarted UserHistory rebuilds from the clean store: it must still hold what the ttls keep.
        keep = self.ingest.retention_s
        for key in ("user_ttl_s", "item_ttl_s"):
            ttl = getattr(self.serving, key)
            if keep is not None and (ttl is None or ttl > keep):
                raise SectionError("ingest.retention_s", keep,
                                   f"must be at least serving.{key} ({ttl}): a restarted history rebuilds from the clean store")
        return self

    @model_validator(mode="after")
    def _int8_kernel_takes_the_width(self) -> "Config":
        # torch's CPU int8 matmul (serve.quantized) reads the width in blocks of 16: at any other
        # width it answered garbage scores (24, 40, 56) or crashed the process (8), measured
        if self.serving.index == "int8" and self.model.d_model % 16:
            raise SectionError("serving.index", "int8", f"needs model.d_model a multiple of 16 (got {self.model.d_model})")
        return self

    @model_validator(mode="after")
    def _variants_are_trainer_overrides(self) -> "Config":
        for name, over in self.evaluation.variants.items():
            if "min_new_events" in over:
                raise SectionError(f"evaluation.variants.{name}.min_new_events", over["min_new_events"],
                          "cannot vary: the replay's step is trainer.min_new_events")
            try:
                replace(self.trainer, **over)
            except ConfigError as e:
                raise SectionError(f"evaluation.variants.{name}", dict(over), f"is no valid trainer override ({e})") from None
        return self

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
    def ledger_dir(self) -> str:
        """Receipts of requests and passes that wrote no Parquet file (``increc_ray.ingest.ledger``)."""
        return os.path.join(self.data_dir, "ledger")

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.data_dir, "checkpoints")

    @property
    def published_dir(self) -> str:
        """The newest promoted weight sets, one folder each (``increc_ray.learn.versions``)."""
        return os.path.join(self.data_dir, "published")

    @property
    def version_file(self) -> str:
        """The last weight version number handed out (``increc_ray.learn.versions``)."""
        return os.path.join(self.data_dir, "versions", "last")

    @property
    def bootstrap_trainer(self) -> TrainerConfig:
        """The trainer settings of from-scratch training (see ``BootstrapConfig``)."""
        b, t = self.bootstrap, self.trainer
        return TrainerConfig(optimizer=b.optimizer, lr=b.lr, weight_decay=b.weight_decay, lr_schedule="constant",
                             batch_size=b.batch_size, kept_items_per_user=b.kept_items_per_user, seed=t.seed,
                             grad_clip=t.grad_clip, momentum=t.momentum, replay_users=t.replay_users,
                             use_gpu=t.use_gpu, loss=t.loss, negatives=t.negatives,
                             negative_power=t.negative_power, in_batch_negatives=t.in_batch_negatives)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> "Config":
        if isinstance(data, Config):
            return data
        if data is not None and not isinstance(data, Mapping):
            raise ConfigError(f"config: expected a mapping, got {data!r}")
        try:
            return cls.model_validate(dict(data or {}))
        except ValidationError as e:
            raise ConfigError(str(describe(e, cls, "", RENAMED))) from None

    @classmethod
    def from_yaml(cls, path: str) -> "Config":
        import yaml

        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()
