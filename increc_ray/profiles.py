"""Named configurations: ``deploy/profiles/<name>.yaml``, each a complete ``Config``, or one
that names another (``extends: <name>``) and changes a few keys of it.

A profile is what the deployment runs (``serve_config.yaml``: ``args: {profile: ml-100k}``) and
all a benchmark reads (``increc evaluate ... --profile ml-100k``), so a measured figure names
the setting that produced it. Overrides are merged deeply on top (``merge``): a key given in
the overrides replaces the profile's, a mapping is merged key by key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import yaml

from increc_ray.config import Config
from increc_ray.errors import ConfigError

DEFAULT_PROFILE = "ml-100k-fresh"  # what serve_config.yaml deploys; the benchmarks' fallback


def profile_dir() -> Path:
    """``deploy/profiles`` of the repository that holds this package."""
    import increc_ray

    return Path(increc_ray.__file__).resolve().parents[1] / "deploy" / "profiles"


def profile_names() -> list[str]:
    d = profile_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def profile_path(name: str) -> Path:
    """The file of profile ``name``; a ConfigError listing the known ones if there is none."""
    path = profile_dir() / f"{name}.yaml"
    if "/" in name or not path.is_file():
        raise ConfigError(f"unknown profile {name!r} (known: {', '.join(profile_names()) or 'none'}; "
                          f"looked in {profile_dir()})")
    return path


def read_yaml(path: str | Path) -> dict:
    """A YAML file's top-level mapping."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict:
    """``base`` with ``over`` merged in deeply.

    >>> merge({"model": {"d_model": 64, "max_len": 50}}, {"model": {"d_model": 128}})
    {'model': {'d_model': 128, 'max_len': 50}}
    """
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def load(profile: str | None = None, config_file: str | None = None,
         overrides: Mapping[str, Any] | None = None) -> Config:
    """The Config of a profile or a YAML file (at most one; neither: the defaults), with
    ``overrides`` merged on top. Errors name the file they come from."""
    if profile is not None and config_file is not None:
        raise ConfigError("give a profile or a config file, not both")
    source = profile_path(profile) if profile is not None else config_file
    base = read_yaml(source) if source is not None else {}
    seen = [str(source)]
    while "extends" in base:  # a profile built on another: its keys merged over the other's
        parent = base.pop("extends")
        if parent in seen:
            raise ConfigError(f"{source}: profiles extend each other in a circle: {' -> '.join(seen)} -> {parent}")
        seen.append(parent)
        base = merge(read_yaml(profile_path(parent)), base)
    try:
        return Config.from_dict(merge(base, overrides or {}))
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}" if source is not None else str(e)) from None


def from_app_args(args: Mapping[str, Any] | None) -> Config:
    """The Config of Serve application args: ``{"profile": NAME}`` or ``{"config_file": PATH}``,
    optionally with ``{"config": {...}}`` overrides on top; or ``{"config": {...}}`` alone."""
    args = dict(args or {})
    profile, config_file, over = args.pop("profile", None), args.pop("config_file", None), args.pop("config", None)
    if args:
        raise ConfigError(f"unknown application args: {', '.join(sorted(args))} "
                          "(use 'profile' or 'config_file', and/or 'config')")
    if over is not None and not isinstance(over, Mapping):
        raise ConfigError(f"config: expected a mapping, got {over!r}")
    return load(profile, config_file, over)
