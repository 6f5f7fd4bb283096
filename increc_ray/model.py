"""The sequential recommender: item vocabulary, causal transformer, and inference scorer.

ID convention (used everywhere in increc_ray): items are numbered from 1; 0 is padding.
Row ``i`` of the item embedding is item ``i``; rows ``n_items+1 ..`` are spare capacity
that new items take over without reallocating (``grow`` doubles it when it runs out).

Sequences are left-padded, so the last column is always the newest item, and positions
count from the first real item in the window (0, 1, 2, ...). A training prefix of length
``t`` therefore looks exactly like an inference history of length ``t``; padding changes
nothing (it is masked out of attention), so any amount of it gives the same hidden states.

The model knows nothing about training (see ``increc_ray.learner``). A weights dict
carries its own ``model_config`` and ``vocab``, so ``Scorer.from_weights`` rebuilds
everything from the dict alone.
"""

from __future__ import annotations

import dataclasses
from typing import Collection, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2Model

from increc_ray.config import ModelConfig

INIT_STD = 0.02  # GPT-2's initializer range, also used for new item rows


class ItemVocab:
    """External string item id <-> 1-based index (0 is padding, never an item)."""

    def __init__(self) -> None:
        self._ids: list[str] = []  # _ids[i - 1] is the id of index i
        self._index: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def add(self, ids: Iterable[str]) -> np.ndarray:
        """Indices of ``ids``, adding unknown ids (in order of first appearance)."""
        out = []
        for item_id in ids:
            idx = self._index.get(item_id)
            if idx is None:
                self._ids.append(item_id)
                idx = self._index[item_id] = len(self._ids)
            out.append(idx)
        return np.asarray(out, dtype=np.int64)

    def lookup(self, ids: Iterable[str]) -> np.ndarray:
        """Indices of ``ids``; 0 (padding) for unknown ids."""
        return np.asarray([self._index.get(i, 0) for i in ids], dtype=np.int64)

    def id_of(self, idx: int) -> str:
        assert 1 <= idx <= len(self._ids), f"item index must be in [1, {len(self._ids)}], got {idx}"
        return self._ids[idx - 1]

    def to_list(self) -> list[str]:
        return list(self._ids)

    @classmethod
    def from_list(cls, ids: Iterable[str]) -> "ItemVocab":
        vocab = cls()
        ids = list(ids)
        vocab.add(ids)
        assert len(vocab) == len(ids), "vocab list has duplicate ids"
        return vocab


class SeqRecModel(nn.Module):
    """SASRec-style causal encoder over item ids, with the item embedding tied as output layer."""

    def __init__(self, cfg: ModelConfig, capacity: int | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.capacity = capacity or cfg.initial_item_capacity
        assert self.capacity >= 2, f"capacity must be >= 2 (pad + one item), got {self.capacity}"
        gcfg = GPT2Config(
            vocab_size=1,  # unused: we feed inputs_embeds from our own (growable) item table
            n_positions=cfg.max_len, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
            bos_token_id=None, eos_token_id=None, use_cache=False,
        )
        gcfg._attn_implementation = "sdpa"
        self.transformer = GPT2Model(gcfg)
        self.item_emb = nn.Embedding(self.capacity, cfg.d_model)
        nn.init.normal_(self.item_emb.weight, std=INIT_STD)

    def forward(self, seqs: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, T, C) for left-padded item-id sequences (B, T)."""
        B, T = seqs.shape
        assert T <= self.cfg.max_len, f"sequence length {T} exceeds model.max_len={self.cfg.max_len}"
        mask = (seqs > 0).long()  # (B, T)
        pos = (mask.cumsum(1) - 1).clamp(min=0)  # (B, T) 0 at the first real item
        x = self.item_emb(seqs)  # (B, T, C)
        out = self.transformer(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=False)
        return out.last_hidden_state  # (B, T, C)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores (..., capacity) of every embedding row; the caller masks pad and spare rows."""
        return hidden @ self.item_emb.weight.T

    @torch.no_grad()
    def grow(self, new_capacity: int) -> None:
        """Reallocate the item table to ``new_capacity`` rows, keeping the existing rows."""
        assert new_capacity >= self.capacity, f"cannot shrink capacity {self.capacity} -> {new_capacity}"
        if new_capacity == self.capacity:
            return
        old = self.item_emb.weight
        emb = nn.Embedding(new_capacity, self.cfg.d_model, device=old.device, dtype=old.dtype)
        nn.init.normal_(emb.weight, std=INIT_STD)
        emb.weight[: self.capacity] = old
        self.item_emb = emb
        self.capacity = new_capacity


def masked_scores(model: SeqRecModel, hidden: torch.Tensor, n_items: int) -> torch.Tensor:
    """Scores (..., n_items + 1) over pad + known items; pad (column 0) is -inf."""
    logits = hidden @ model.item_emb.weight[: n_items + 1].T  # (..., n_items + 1)
    logits[..., 0] = float("-inf")
    return logits


def left_pad(seqs: Sequence[Sequence[int]], length: int | None = None) -> torch.Tensor:
    """(B, T) LongTensor of index sequences, left-padded with 0 to ``length`` (default: longest)."""
    T = length or max((len(s) for s in seqs), default=1)
    out = torch.zeros(len(seqs), max(T, 1), dtype=torch.long)
    for b, s in enumerate(seqs):
        if len(s):
            out[b, T - len(s):] = torch.as_tensor(s[-T:] if len(s) > T else s, dtype=torch.long)
    return out


class Scorer:
    """Inference over one published weight version (CPU, no grad)."""

    def __init__(self, model: SeqRecModel, vocab: ItemVocab, version: int, metrics: dict | None = None) -> None:
        assert len(vocab) + 1 <= model.capacity, f"vocab of {len(vocab)} items does not fit capacity {model.capacity}"
        self.model = model.eval()
        self.vocab = vocab
        self.version = version
        self.metrics = metrics or {}

    @classmethod
    def from_weights(cls, weights: dict) -> "Scorer":
        cfg = ModelConfig(**weights["model_config"])
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in weights["state_dict"].items()}
        model = SeqRecModel(cfg, capacity=state["item_emb.weight"].shape[0])
        model.load_state_dict(state)
        return cls(model, ItemVocab.from_list(weights["vocab"]), int(weights["version"]), weights.get("metrics"))

    def recommend(self, history: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """Up to ``k`` (item_id, score), best first, for a history ordered oldest -> newest."""
        return self.recommend_batch([history], k, [exclude])[0]

    @torch.inference_mode()
    def recommend_batch(self, histories: Sequence[Sequence[str]], k: int,
                        excludes: Sequence[Collection[str]] | None = None) -> list[list[tuple[str, float]]]:
        """``recommend`` for many histories in one forward pass."""
        excludes = excludes if excludes is not None else [()] * len(histories)
        assert len(excludes) == len(histories), f"{len(histories)} histories but {len(excludes)} excludes"
        max_len, n = self.model.cfg.max_len, len(self.vocab)
        results: list[list[tuple[str, float]]] = [[] for _ in histories]
        rows, seqs = [], []
        for i, h in enumerate(histories):
            idx = self.vocab.lookup(h)
            idx = idx[idx > 0][-max_len:]  # unknown ids are skipped
            if len(idx) and k > 0:
                rows.append(i)
                seqs.append(idx)
        if not rows:
            return results
        hidden = self.model(left_pad(seqs))[:, -1]  # (B, C) the newest position
        scores = masked_scores(self.model, hidden, n)  # (B, n + 1)
        for b, i in enumerate(rows):
            ex = self.vocab.lookup(excludes[i])
            scores[b, ex[ex > 0]] = float("-inf")
        kk = min(k, n)
        top, top_idx = scores.topk(kk, dim=1)  # (B, kk)
        for b, i in enumerate(rows):
            results[i] = [(self.vocab.id_of(int(j)), float(s))
                          for s, j in zip(top[b].tolist(), top_idx[b].tolist()) if s != float("-inf")]
        return results


def config_dict(cfg: ModelConfig) -> dict:
    """Plain dict of ``cfg`` fields (what a weights dict carries as ``model_config``)."""
    return dataclasses.asdict(cfg)
