"""Inference over one published weight version: top-k items for a user's history.

A weights dict (``IncrementalLearner.export_weights``) carries its own ``model_config`` and
``vocab``, so ``Scorer.from_weights`` rebuilds everything from the dict alone. It adopts the
tensors as they are (``increc_ray.serve.encoder``): no model is built per version.
"""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np
import torch

from increc_ray.config import ModelConfig
from increc_ray.learn.model import left_pad
from increc_ray.learn.vocab import ItemVocab
from increc_ray.serve.encoder import Encoder


class Scorer:
    """Inference over one published weight version (CPU, no grad)."""

    def __init__(self, encoder: Encoder, vocab: ItemVocab, version: int, metrics: dict | None = None) -> None:
        assert len(vocab) + 1 <= encoder.item_emb.shape[0], \
            f"vocab of {len(vocab)} items does not fit the item table's {encoder.item_emb.shape[0]} rows"
        self.encoder = encoder
        self.vocab = vocab
        self.version = version
        self.metrics = metrics or {}
        self.max_len = encoder.max_len
        # pad + known items, transposed once per version: a request's scores are one (B, C) @ (C, n + 1)
        self.table_t = encoder.item_emb[: len(vocab) + 1].t().contiguous()
        self.holes = torch.as_tensor(vocab.holes())  # rows of expired items: never recommended

    @classmethod
    def from_weights(cls, weights: dict) -> "Scorer":
        cfg = ModelConfig(**weights["model_config"])
        state = {k: torch.as_tensor(np.asarray(v)) for k, v in weights["state_dict"].items()}
        return cls(Encoder(state, cfg.n_heads), ItemVocab.from_list(weights["vocab"]), int(weights["version"]),
                   weights.get("metrics"))

    @classmethod
    def from_published(cls, weights: dict) -> "Scorer | None":
        """The scorer a published artifact asks for: None for the gate's fallback marker (it demoted
        the live version: popularity answers until a new version goes live)."""
        return None if weights.get("fallback") else cls.from_weights(weights)

    def recommend(self, history: Sequence[str], k: int, exclude: Collection[str] = ()) -> list[tuple[str, float]]:
        """Up to ``k`` (item_id, score), best first, for a history ordered oldest -> newest."""
        return self.recommend_batch([history], k, [exclude])[0]

    def hidden(self, histories: Sequence[Sequence[str]]) -> tuple[list[int], torch.Tensor | None]:
        """(rows of ``histories`` with a known item, their (B, C) hidden states); unknown ids skipped."""
        rows, seqs = [], []
        for i, h in enumerate(histories):
            idx = self.vocab.lookup(h)
            idx = idx[idx > 0][-self.max_len:]
            if len(idx):
                rows.append(i)
                seqs.append(idx)
        return rows, (self.encoder(left_pad(seqs)) if rows else None)

    @torch.inference_mode()
    def recommend_batch(self, histories: Sequence[Sequence[str]], k: int,
                        excludes: Sequence[Collection[str]] | None = None) -> list[list[tuple[str, float]]]:
        """``recommend`` for many histories in one forward pass."""
        excludes = excludes if excludes is not None else [()] * len(histories)
        assert len(excludes) == len(histories), f"{len(histories)} histories but {len(excludes)} excludes"
        results: list[list[tuple[str, float]]] = [[] for _ in histories]
        if k <= 0:
            return results
        rows, hidden = self.hidden(histories)
        if not rows:
            return results
        scores = hidden @ self.table_t  # (B, n + 1)
        scores[:, 0] = float("-inf")  # pad
        if len(self.holes):
            scores[:, self.holes] = float("-inf")
        for b, i in enumerate(rows):
            ex = self.vocab.lookup(excludes[i])
            scores[b, ex[ex > 0]] = float("-inf")
        kk = min(k, len(self.vocab))
        top, top_idx = scores.topk(kk, dim=1)  # (B, kk)
        ids = self.vocab.id_of
        for b, i in enumerate(rows):
            results[i] = [(ids(j), s) for s, j in zip(top[b].tolist(), top_idx[b].tolist()) if s != float("-inf")]
        return results
