"""Inference over one published weight version: top-k items for a user's history.

A weights dict (``IncrementalLearner.export_weights``) carries its own ``model_config`` and
``vocab``, so ``Scorer.from_weights`` rebuilds everything from the dict alone.
"""

from __future__ import annotations

from typing import Collection, Sequence

import numpy as np
import torch

from increc_ray.config import ModelConfig
from increc_ray.learn.model import SeqRecModel, left_pad, masked_scores
from increc_ray.learn.vocab import ItemVocab


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

    @classmethod
    def from_published(cls, weights: dict) -> "Scorer | None":
        """The scorer a published artifact asks for: None for the gate's fallback marker (it demoted
        the live version: popularity answers until a new version goes live)."""
        return None if weights.get("fallback") else cls.from_weights(weights)

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
