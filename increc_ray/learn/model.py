"""The sequential recommender: a causal transformer over item ids, its item table tied as output.

ID convention (used everywhere in increc_ray): items are numbered from 1; 0 is padding.
Row ``i`` of the item embedding is item ``i``; rows ``n_items+1 ..`` are spare capacity
that new items take over without reallocating (``grow`` doubles it when it runs out).

Sequences are left-padded, so the last column is always the newest item, and positions
count from the first real item in the window (0, 1, 2, ...). A training prefix of length
``t`` therefore looks exactly like an inference history of length ``t``; padding changes
nothing (it is masked out of attention), so any amount of it gives the same hidden states.

The model knows nothing about training (see ``increc_ray.learn.learner``) or serving (see
``increc_ray.serve.scorer``); ids become indices in ``increc_ray.learn.vocab``.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
import torch.nn as nn
from transformers import GPT2Config, GPT2Model

from increc_ray.config import ModelConfig
from increc_ray.learn import gpt2

INIT_STD = 0.02  # GPT-2's initializer range, also used for new item rows


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

    def hidden_at(self, seqs: torch.Tensor, select: torch.Tensor | None = None,
                  item_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (N, C) at the ``select``ed (B, T) positions only, as ``forward(seqs)[select]``
        (default: the last column, (B, C)), at a fraction of its cost (``learn.gpt2``); dropout
        when in training mode, gradients as through ``forward``. ``item_rows`` (R, C), when given,
        stands in for the item table, ``seqs`` indexing it (0 still padding): a step that touches
        a few rows of a large table takes its gradient on those rows alone."""
        params = dict(self.named_parameters())
        if item_rows is not None:
            params["item_emb.weight"] = item_rows
        w = gpt2.Weights(params, self.cfg.n_heads)
        return gpt2.hidden_at(w, seqs, select, self.cfg.dropout, self.training)

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


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """Whether every value is finite: one sum per tensor (a NaN or inf anywhere makes its sum
    non-finite), cheaper than an elementwise check on every weight after every update."""
    sums = [t.detach().sum().to(torch.float64) for t in tensors]
    return bool(torch.isfinite(torch.stack(sums)).all()) if sums else True


def masked_scores(model: SeqRecModel, hidden: torch.Tensor, n_items: int,
                  holes: torch.Tensor | None = None) -> torch.Tensor:
    """Scores (..., n_items + 1) over pad + known items; pad (column 0) and ``holes`` (indices
    of expired items, ``ItemVocab.holes``) are -inf."""
    logits = hidden @ model.item_emb.weight[: n_items + 1].T  # (..., n_items + 1)
    logits[..., 0] = float("-inf")
    if holes is not None and len(holes):
        logits[..., holes] = float("-inf")
    return logits


def left_pad(seqs: Sequence[Sequence[int]], length: int | None = None) -> torch.Tensor:
    """(B, T) LongTensor of index sequences, left-padded with 0 to ``length`` (default: longest)."""
    T = length or max((len(s) for s in seqs), default=1)
    out = torch.zeros(len(seqs), max(T, 1), dtype=torch.long)
    for b, s in enumerate(seqs):
        if len(s):
            out[b, T - len(s):] = torch.as_tensor(s[-T:] if len(s) > T else s, dtype=torch.long)
    return out
