"""Inference over one published weight version: top-k items for a user's history.

A weights dict (``IncrementalLearner.export_weights``) carries its own ``model_config`` and
``vocab``, so ``Scorer.from_weights`` rebuilds everything from the dict alone. It adopts the
tensors as they are (``increc_ray.serve.encoder``): no model is built per version. Top-k is an
exact scan of the item table, or, given an ``increc_ray.serve.index.ItemIndex`` (``serving.index:
hnsw``) and a catalogue past its ``min_items``, an exact ranking of the few rows an HNSW graph and
the version's fresh rows name, or, given an ``increc_ray.serve.quantized.Int8Index`` (``serving.index:
int8``), an exact ranking of the best rows of a scan of the table quantized to int8.
"""

from __future__ import annotations

import copy
from typing import Collection, Sequence

import torch

from increc_ray.config import ModelConfig
from increc_ray.learn.model import left_pad
from increc_ray.learn.vocab import ItemVocab
from increc_ray.learn import published
from increc_ray.learn.frozen import FrozenRows
from increc_ray.serve.encoder import Encoder, hidden_over
from increc_ray.serve.index import ItemIndex, View
from increc_ray.serve.quantized import Int8Index, Int8Rows


class Scorer:
    """Inference over one published weight version (CPU, no grad). ``items``, when the version
    published its item table as an overlay (``learn.published``), is that table: ``encoder``'s
    item table is its base, and the rows moved since the base are scored after it."""

    def __init__(self, encoder: Encoder, vocab: ItemVocab, version: int, metrics: dict | None = None,
                 index: ItemIndex | Int8Index | None = None, items: FrozenRows | None = None,
                 table_key: object = None) -> None:
        assert len(vocab) + 1 <= encoder.item_emb.shape[0], \
            f"vocab of {len(vocab)} items does not fit the item table's {encoder.item_emb.shape[0]} rows"
        self.vocab = vocab
        self.vocab_chain: published.VocabChain | None = None  # how ``vocab`` was made from overlays
        self.version = version
        self.metrics = metrics or {}
        self.max_len = encoder.max_len
        self.holes = torch.as_tensor(vocab.holes())  # rows of expired items: never recommended
        rows = len(vocab) + 1  # pad + known items (holes included)
        self.items: FrozenRows | None = None  # an overlay with moved rows
        self.first_pass: Int8Rows | None = None  # serving.index int8: the quantized table's rows
        if isinstance(index, Int8Index):
            if rows > index.settings.min_items:
                self.first_pass = index.rows_of(table_key if table_key is not None else ("version", version),
                                                encoder.item_emb, rows)
                self.candidates = index.settings.candidates
            index = None
        if items is not None and len(items.rows):
            if index is not None and rows > index.settings.min_items:  # the graph follows a whole table
                encoder = copy.copy(encoder)
                encoder.item_emb = items.dense()
            else:
                self.items = items
        self.encoder = encoder
        self.view: View | None = None
        if index is not None and rows > index.settings.min_items:
            self.view = index.follow(encoder.item_emb, rows)  # None until its first graph is built
        if self.view is None:
            # a request's scores are one (B, C) @ (C, n + 1). A published table is column-major
            # (``published.published_array``), so this is a view that BLAS reads as it is (its row
            # stride is the table's capacity); only a row-major one (a rollback read from disk) is copied
            table_t = encoder.item_emb[:rows].t()
            self.table_t = table_t if table_t.stride(1) == 1 else table_t.contiguous()
            if self.items is not None:  # the moved rows' scores replace the base's, (C, R) as published
                moved = self.items.rows < rows  # all of them, unless a spare row was written
                whole = bool(moved.all())
                self.moved = self.items.rows if whole else self.items.rows[moved]
                values_t = (self.items.values if whole else self.items.values[moved]).t()
                self.moved_t = values_t if values_t.stride(1) == 1 else values_t.contiguous()
        else:
            self.table = encoder.item_emb[:rows]
            self.dead = torch.zeros(rows, dtype=torch.bool)  # pad and holes: never an answer
            self.dead[0] = True
            self.dead[self.holes] = True

    @classmethod
    def from_weights(cls, weights: dict, index: ItemIndex | Int8Index | None = None,
                     previous: "Scorer | None" = None) -> "Scorer":
        """The scorer of a published weights dict, whole or an overlay (its base an array:
        ``serve.registry.resolve``); ``index`` follows it when given (its tensors must not change
        afterwards: the index may keep the item table as its base). ``previous``, the scorer it
        replaces, lends its vocabulary's index when the new list only extends it."""
        cfg = ModelConfig(**weights["model_config"])
        items = published.item_table(weights)
        state = {**published.small_state(weights), published.ITEM_KEY: items.base}
        vocab, chain = published.item_vocab(weights, *((previous.vocab, previous.vocab_chain) if previous else ()))
        overlay = published.is_overlay(weights)
        scorer = cls(Encoder(state, cfg.n_heads), vocab, int(weights["version"]), weights.get("metrics"), index,
                     items if overlay else None, ("base", weights[published.ITEM_ROWS]["base_id"]) if overlay else None)
        scorer.vocab_chain = chain
        return scorer

    @classmethod
    def from_published(cls, weights: dict, index: ItemIndex | Int8Index | None = None,
                       previous: "Scorer | None" = None) -> "Scorer | None":
        """The scorer a published artifact asks for: None for the gate's fallback marker (it demoted
        the live version: popularity answers until a new version goes live)."""
        return None if weights.get("fallback") else cls.from_weights(weights, index, previous)

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
        if not rows:
            return rows, None
        if self.items is not None:
            return rows, hidden_over(self.encoder.state, self.encoder.n_heads, self.items, left_pad(seqs))
        return rows, self.encoder(left_pad(seqs))

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
        if self.view is not None:
            return self._approximate(rows, hidden, k, excludes, results)
        n = self.table_t.shape[1]  # pad + items
        if self.first_pass is None:
            scores = hidden @ self.table_t  # (B, n + 1)
        else:  # approximate; rows newer than the quantized table are moved rows, scored below
            scores = self.first_pass.scores(hidden)
            if scores.shape[1] < n:
                scores = torch.cat([scores, scores.new_full((len(rows), n - scores.shape[1]), float("-inf"))], dim=1)
        if self.items is not None:
            scores[:, self.moved] = hidden @ self.moved_t
        scores[:, 0] = float("-inf")  # pad
        if len(self.holes):
            scores[:, self.holes] = float("-inf")
        for b, i in enumerate(rows):
            ex = self.vocab.lookup(excludes[i])
            scores[b, ex[ex > 0]] = float("-inf")
        kk = min(k, len(self.vocab))
        if self.first_pass is not None:  # the first pass's best candidates, ranked by their exact scores
            best, cand = scores.topk(min(max(self.candidates, kk), n), dim=1)  # (B, K)
            vectors = self.items.gather(cand) if self.items is not None else self.encoder.item_emb[cand]  # (B, K, C)
            exact = torch.einsum("bkc,bc->bk", vectors, hidden)
            exact[best == float("-inf")] = float("-inf")  # pad, holes, seen items stay out
            top, at = exact.topk(kk, dim=1)
            top_idx = cand.gather(1, at)
        else:
            top, top_idx = scores.topk(kk, dim=1)  # (B, kk)
        ids = self.vocab.id_of
        for b, i in enumerate(rows):
            results[i] = [(ids(j), s) for s, j in zip(top[b].tolist(), top_idx[b].tolist()) if s != float("-inf")]
        return results

    def _approximate(self, rows: list[int], hidden: torch.Tensor, k: int, excludes: Sequence[Collection[str]],
                     results: list) -> list[list[tuple[str, float]]]:
        """``recommend_batch``'s top-k over the graph's hits and the fresh rows (``self.view``),
        each scored exactly with this version's weights."""
        view = self.view
        ex = [self.vocab.lookup(excludes[i]) for i in rows]
        ex = [torch.as_tensor(e[e > 0]) for e in ex]
        # enough hits that excluded (seen) items cannot crowd out the k answers
        hits = view.hits(hidden, extra=max(len(e) for e in ex) + max(0, k - view.candidates))  # (B, H)
        found = hits.clamp(min=0)
        hit_scores = torch.einsum("bhc,bc->bh", self.table[found], hidden)  # (B, H)
        cand = torch.cat([hits, view.fresh.expand(len(rows), -1)], dim=1)  # (B, H + F)
        scores = torch.cat([hit_scores, hidden @ view.fresh_t], dim=1)
        scores[(cand < 0) | self.dead[cand.clamp(min=0)]] = float("-inf")
        for b, e in enumerate(ex):
            if len(e):
                scores[b, torch.isin(cand[b], e)] = float("-inf")
        top, at = scores.topk(min(k, scores.shape[1]), dim=1)
        top_rows = cand.gather(1, at)
        ids = self.vocab.id_of
        for b, i in enumerate(rows):
            results[i] = [(ids(j), s) for s, j in zip(top[b].tolist(), top_rows[b].tolist()) if s != float("-inf")]
        return results
