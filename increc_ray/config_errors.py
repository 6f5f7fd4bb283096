"""One clear line from a pydantic ``ValidationError`` of a config (``increc_ray.config``).

The first error becomes ``<key>: <value> <why>``, the key dotted from the top of the config
(``trainer.lr: -1 must be > 0``), or ``unknown key '<key>' (allowed: ...)``. A section built
inside another (pydantic calls a nested section's ``__init__``) raises ``SectionError`` with its key
relative to itself (``SectionError``); the outer section prefixes its own path.
"""

from __future__ import annotations

import typing
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from increc_ray.errors import ConfigError

_BOUNDS = {"greater_than": ("gt", ">"), "greater_than_equal": ("ge", ">="),
           "less_than": ("lt", "<"), "less_than_equal": ("le", "<=")}
_EXPECTED = {"int": "an integer", "float": "a number", "string": "a string", "bool": "a boolean",
             "dict": "a mapping", "model": "a mapping"}


class SectionError(ConfigError):
    """A config section failed validation: ``key`` (dotted, relative to ``prefix``; None: the field being validated) has ``value``,
    which ``why``; or, with ``allowed``, ``key`` is unknown."""

    def __init__(self, key: str | None, value: Any = None, why: str = "", allowed: list[str] | None = None,
                 prefix: str = "", renamed: Mapping[str, str] | None = None) -> None:
        self.key, self.value, self.why, self.allowed = key, value, why, allowed
        super().__init__(self.render(prefix, renamed or {}))

    def render(self, prefix: str, renamed: Mapping[str, str]) -> str:
        key = ".".join(p for p in (prefix, self.key) if p)
        if self.allowed is not None:
            hint = f"; renamed to {renamed[key]!r}" if key in renamed else ""
            return f"unknown key {key!r} (allowed: {', '.join(self.allowed)}{hint})"
        if self.why.startswith("expected "):
            return f"{key or 'config'}: {self.why}, got {self.value!r}"
        return f"{key or 'config'}: {self.value!r} {self.why}"


def describe(err: ValidationError, root: type[BaseModel], prefix: str = "",
             renamed: Mapping[str, str] | None = None) -> SectionError:
    """The first error of ``err`` (raised validating ``root``, whose keys sit below ``prefix``)."""
    e = err.errors(include_url=False)[0]
    loc, typ, value, ctx = e["loc"], e["type"], e.get("input"), e.get("ctx") or {}
    key = ".".join(str(p) for p in loc) or None

    def bad(k, v=None, why="", allowed=None) -> SectionError:
        return SectionError(k, v, why, allowed, prefix=prefix, renamed=renamed)

    if typ == "extra_forbidden":
        parent = _type_at(root, loc[:-1])
        is_model = isinstance(parent, type) and issubclass(parent, BaseModel)
        return bad(key, allowed=sorted(parent.model_fields) if is_model else [])
    if typ == "value_error" and isinstance(ctx.get("error"), SectionError):
        inner = ctx["error"]
        return bad(".".join(p for p in (key, inner.key) if p) or None, inner.value, inner.why, inner.allowed)
    if typ in _BOUNDS:
        name, op = _BOUNDS[typ]
        return bad(key, value, f"must be {op} {ctx[name]:g}")
    if typ == "literal_error":
        options = typing.get_args(_type_at(root, loc))
        return bad(key, value, f"must be one of: {', '.join(map(str, options))}")
    if typ.endswith("_type") and typ[:-5] in _EXPECTED:
        return bad(key, value, f"expected {_EXPECTED[typ[:-5]]}")
    if typ == "string_too_short":
        return bad(key, value, "must not be empty")
    return bad(key, value, e["msg"][0].lower() + e["msg"][1:])


def _type_at(root: type, loc: tuple) -> Any:
    """The annotation at ``loc`` below ``root`` (mapping keys step into the value type)."""
    tp: Any = root
    for part in loc:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = tp.model_fields[part].annotation
        else:
            tp = typing.get_args(tp)[-1]
    return tp
