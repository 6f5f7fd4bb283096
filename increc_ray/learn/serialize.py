"""Checkpoints and weight artifacts as safetensors plus JSON: nothing is ever unpickled.

A state (nested dicts and lists of tensors, numpy arrays and plain values, as
``checkpoint.learner_state`` and ``IncrementalLearner.export_weights`` build them) is split into

* ``<name>.safetensors``: every tensor and array, under a generated key (safetensors: a flat,
  typed, memory-mapped format that holds data only, so loading runs no code);
* ``<name>.json``: the rest of the tree, with ``{"__tensor__": key}`` / ``{"__ndarray__": key}``
  where a tensor or array was, and ``{"__dict__": [[key, value], ...]}`` for dicts whose keys
  are not all strings (an optimizer's state is keyed by parameter index).

>>> import tempfile, torch, numpy as np
>>> d = tempfile.mkdtemp()
>>> save_tree({"w": torch.ones(2), 3: [np.arange(3), "x", None, 1.5]}, d, "s")
>>> back = load_tree(d, "s")
>>> back["w"].tolist(), back[3][0].tolist(), back[3][1:]
([1.0, 1.0], [0, 1, 2], ['x', None, 1.5])
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch

from increc_ray.errors import ConfigError

FORMAT = "increc-safetensors-1"


def _flatten(obj: Any, tensors: dict[str, torch.Tensor], storages: set[int] | None = None) -> Any:
    """``obj`` with each tensor and array replaced by a key into ``tensors``. A tensor is written
    as it is, not copied (``save_tree`` writes before it returns), unless it shares memory with one
    already taken (safetensors refuses those): at 1M items a checkpoint's item table and AdamW
    moments are 1.5 GiB, a copy of which cost more than the write."""
    storages = set() if storages is None else storages
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        t = obj.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in storages or t.numel() * t.element_size() != t.untyped_storage().nbytes():
            t = t.clone()  # a view, or memory another tensor holds: its own copy
        storages.add(t.untyped_storage().data_ptr())
        tensors[key] = t
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = f"t{len(tensors)}"
        tensors[key] = torch.from_numpy(np.array(obj, order="C", copy=True))  # one copy, row-major
        return {"__ndarray__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            if any(k.startswith("__") and k.endswith("__") for k in obj):
                return {"__dict__": [[k, _flatten(v, tensors, storages)] for k, v in obj.items()]}
            return {k: _flatten(v, tensors, storages) for k, v in obj.items()}
        for k in obj:
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                raise TypeError(f"cannot store a dict key of type {type(k).__name__}")
        return {"__dict__": [[k, _flatten(v, tensors, storages)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, tensors, storages) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store a value of type {type(obj).__name__} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor], device: str) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj and len(obj) == 1:
            return tensors[obj["__tensor__"]].to(device)
        if "__ndarray__" in obj and len(obj) == 1:
            return tensors[obj["__ndarray__"]].numpy()
        if "__dict__" in obj and len(obj) == 1:
            return {k: _unflatten(v, tensors, device) for k, v in obj["__dict__"]}
        return {k: _unflatten(v, tensors, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unflatten(v, tensors, device) for v in obj]
    return obj


def save_tree(obj: Any, directory: str, name: str) -> None:
    """Write ``obj`` as ``<name>.safetensors`` and ``<name>.json`` under ``directory``; the JSON is
    written last, so a reader that finds it finds the tensors too."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(obj, tensors)
    save_file(tensors, os.path.join(directory, f"{name}.safetensors"))
    tmp = os.path.join(directory, f".{name}.json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"format": FORMAT, "tree": tree}, f)
    os.replace(tmp, os.path.join(directory, f"{name}.json"))


def exists(directory: str, name: str) -> bool:
    return os.path.exists(os.path.join(directory, f"{name}.json"))


def load_tree(directory: str, name: str, device: str = "cpu") -> Any:
    """The tree ``save_tree`` wrote; a file of another format raises ``ConfigError`` naming it."""
    from safetensors.torch import load_file

    path = os.path.join(directory, f"{name}.json")
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ConfigError(f"{path}: not an increc checkpoint of format {FORMAT!r}")
    tensors = load_file(os.path.join(directory, f"{name}.safetensors"))
    return _unflatten(doc["tree"], tensors, device)
