"""A published version's item table: whole, or a shared base plus the rows moved since (Ray-free).

A published artifact (``IncrementalLearner.export_weights``) carries every weight in its
``state_dict``. The item table is nearly all of it (at 1M items, 512 MiB of a version's 513), and
with ``trainer.loss: sampled`` an update moves only the rows its steps touch (a few thousand).
So such a learner publishes the table as an *overlay*, under ``ITEM_ROWS`` instead of in the
state dict: a *base* (the whole table at some earlier update, with an id) and the rows that moved
since it, with their values. The base is the learner's ``frozen.RowLog`` base copy: the same one
for every version until a rebase (an eighth of the table moved, a grown table, a full pass), so
the trainer copies, ships and the registry stores it once per base, and each version in between
costs its moved rows. Replicas and the gate read the table as a ``frozen.FrozenRows``
(``item_table``), and a replica scores the base as it is and the moved rows after it
(``serve.scorer``). The full softmax moves every row every step, so its versions stay whole.

``dense`` turns an overlay artifact back into the whole form, for what writes versions to disk
(the rollback archive, checkpoints) and so reads them back the same way as ever.
"""

from __future__ import annotations

import uuid
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from increc_ray.learn.frozen import FrozenRows
from increc_ray.learn.vocab import ItemVocab

ITEM_KEY = "item_emb.weight"
ITEM_ROWS = "item_rows"  # an overlay's {"base_id", "base", "rows", "values"[, "vocab_base", "vocab_tail"]}


def published_array(key: str, tensor: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy of one weight for the published artifact. The item table is copied
    column-major: a replica scans it transposed, ``(B, C) @ (C, n)``, at three times the speed of
    a row-major gemv at batch 1 (``bench/scoring_scale.py``), and the object store hands every
    replica a zero-copy view of this one, where it used to make a transposed copy of its own per
    version (0.4 s at 1M items). Same values and shape; only the memory order differs."""
    if key == ITEM_KEY:
        return tensor.detach().cpu().t().contiguous().numpy().T  # F-contiguous (rows, C)
    return tensor.detach().cpu().numpy().copy()


class BaseCopies:
    """The learner's side: the published (column-major) copy of its current base, made once per
    base and named by an id that no other base, in this or any other process, shares; with it the
    vocabulary at the base's first version, so that later versions whose vocabulary only appends
    to it carry the appended ids (``vocab_tail``), not the whole list (1M ids: 0.2 s to pickle)."""

    KEEP = 2  # bases remembered: a gate's snapshot (a promoted candidate, the live version gone
    # back to) may hold the base before the learner's current one

    def __init__(self) -> None:
        self._known: list[tuple[torch.Tensor, str, np.ndarray, list]] = []  # (base, id, published copy, vocab)

    def overlay(self, items: FrozenRows, vocab: list[str | None]) -> tuple[dict, list[str | None] | None]:
        """(``items`` as an overlay: its base, published once per base, and its moved rows; the
        artifact's whole ``vocab``, or None when the overlay carries its tail instead)."""
        known = next((k for k in self._known if k[0] is items.base), None)
        if known is None:
            known = (items.base, uuid.uuid4().hex, published_array(ITEM_KEY, items.base), vocab)
        self._known = [known, *[k for k in self._known if k is not known][: self.KEEP - 1]]  # most recent first
        _, base_id, base, base_vocab = known
        out = {"base_id": base_id, "base": base, "rows": items.rows.numpy().astype(np.int64, copy=False),
               "values": published_array(ITEM_KEY, items.values)}
        n = len(base_vocab)
        if len(vocab) < n or vocab[:n] != base_vocab:  # an expiry or a refilled hole since: whole
            return out, vocab
        return {**out, "vocab_base": base_vocab, "vocab_tail": vocab[n:]}, None


def is_overlay(weights: dict) -> bool:
    return ITEM_ROWS in weights


def store_tensor(array) -> torch.Tensor:
    """A tensor over ``array`` without a copy: the object store's arrays are read-only, and nothing
    writes to a published version (torch warns about read-only arrays once per process)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.as_tensor(np.asarray(array))


def item_table(weights: dict) -> FrozenRows:
    """A published artifact's item table, as tensors over its arrays (no copy): the overlay's base
    with its moved rows, or the whole table. The base must be an array (``serve.registry.resolve``
    fetches one that travelled as a reference)."""
    items = weights.get(ITEM_ROWS)
    if items is None:
        return FrozenRows(store_tensor(weights["state_dict"][ITEM_KEY]))
    return FrozenRows(store_tensor(items["base"]), store_tensor(items["rows"]), store_tensor(items["values"]))


def small_state(weights: dict) -> dict[str, torch.Tensor]:
    """Every weight but the item table, as tensors over the artifact's arrays."""
    return {k: store_tensor(v) for k, v in weights["state_dict"].items() if k != ITEM_KEY}


def dense(weights: dict) -> dict:
    """``weights`` with its item table whole in the state dict (an artifact that is already whole,
    or a fallback marker, as it is)."""
    if not is_overlay(weights):
        return weights
    table = item_table(weights)
    whole = table.base.clone() if len(table.rows) else table.base
    if len(table.rows):
        whole[table.rows] = table.values
    out = {k: v for k, v in weights.items() if k != ITEM_ROWS}
    out["vocab"] = vocab_list(weights)
    out["state_dict"] = {**weights["state_dict"], ITEM_KEY: published_array(ITEM_KEY, whole)}
    return out


def without_base(weights: dict) -> dict:
    """An overlay artifact with its base (table and vocabulary) left out: the registry holds it
    already (``base_id``)."""
    items = {**weights[ITEM_ROWS], "base": None}
    if "vocab_base" in items:
        items["vocab_base"] = None
    return {**weights, ITEM_ROWS: items}


def vocab_list(weights: dict) -> list[str | None]:
    """A published artifact's whole vocabulary list (an overlay's base vocabulary must be a list:
    ``serve.registry.resolve``)."""
    if weights.get("vocab") is not None:
        return weights["vocab"]
    items = weights[ITEM_ROWS]
    return list(items["vocab_base"]) + list(items["vocab_tail"])


@dataclass(frozen=True)
class VocabChain:
    """How a replica's vocabulary was made from overlays: their base and the tail it appended."""
    base_id: str
    n_tail: int


def extends(weights: dict, chain: VocabChain | None) -> bool:
    """Whether ``weights``' vocabulary appends to the one ``chain`` made (same base, a longer
    tail: the trainer appends to a base's vocabulary until it publishes a whole list)."""
    items = weights.get(ITEM_ROWS) or {}
    return chain is not None and items.get("vocab_tail") is not None and items["base_id"] == chain.base_id \
        and len(items["vocab_tail"]) >= chain.n_tail


def item_vocab(weights: dict, previous: ItemVocab | None = None,
               chain: VocabChain | None = None) -> tuple[ItemVocab, VocabChain | None]:
    """(``weights``' vocabulary, how it was made). ``previous`` (made by ``chain``) lends what the
    new one extends: an overlay's tail beyond the previous one's costs a copy of the index, the
    base's list is never read; a whole list reuses the index when it extends ``previous``'s."""
    items = weights.get(ITEM_ROWS) or {}
    tail = items.get("vocab_tail")
    if tail is None:
        return ItemVocab.from_list(weights["vocab"], base=previous), None
    made = VocabChain(items["base_id"], len(tail))
    if previous is not None and extends(weights, chain):
        return previous.extended(tail[chain.n_tail:]), made
    return ItemVocab.from_list([*items["vocab_base"], *tail], base=previous), made
