"""GPT-2's forward pass as functional torch ops, computing the last layer only where it is read.

``SeqRecModel`` holds its weights in ``transformers``' GPT-2 (its config, init and state-dict
names), whose forward pass computes every layer at every position and wraps each op in a
module. The recommender reads few positions: serving reads the newest one, and an incremental
update scores each user's few new events (a slice's last ``n`` positions, ``learn.learner``).
Every layer but the last must still run at every position (the selected positions attend to
them), but the last layer's attention queries, projection and MLP run only at the selected
positions. That is the same arithmetic, so the same hidden states and gradients, at a fraction
of the last layer's cost. ``tests/learn/test_gpt2.py`` checks it against the model, forward
and backward.

Dropout sits where GPT-2 puts it (embeddings, attention probabilities, both residual branches),
so training through this path is training the same model.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

LN_EPS = 1e-5  # GPT2Config.layer_norm_epsilon
_T = "transformer."
# per layer, in unpacking order; GPT-2's Conv1D stores weights (in, out), so x @ w + b
_LAYER = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
          "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
          "mlp.c_proj.weight", "mlp.c_proj.bias"]


class Weights:
    """Views of a ``SeqRecModel``'s tensors by role (from its state dict or named parameters;
    parameters keep their autograd graph)."""

    def __init__(self, state: Mapping[str, torch.Tensor], n_heads: int) -> None:
        self.state = state  # by name, as given
        self.item_emb = state["item_emb.weight"]  # (capacity, C)
        self.wpe = state[_T + "wpe.weight"]  # (max_len, C)
        self.max_len, self.d_model = self.wpe.shape
        assert self.d_model % n_heads == 0, f"d_model {self.d_model} not divisible by n_heads {n_heads}"
        self.n_heads = n_heads
        n_layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith(_T + "h."))
        self.layers = [[state[f"{_T}h.{i}.{n}"] for n in _LAYER] for i in range(n_layers)]
        self.ln_f = (state[_T + "ln_f.weight"], state[_T + "ln_f.bias"])


def hidden_at(w: Weights, seqs: torch.Tensor, select: torch.Tensor | None = None, dropout: float = 0.0,
              training: bool = False) -> torch.Tensor:
    """Hidden states (N, C) at the ``select``ed positions of left-padded ``seqs`` (B, T), in
    row-major order (as ``hidden[select]``); ``select`` (B, T) bool defaults to the last column.
    Selected positions must hold real items. ``dropout`` applies only when ``training``."""
    B, T = seqs.shape
    assert T <= w.max_len, f"sequence length {T} exceeds max_len {w.max_len}"
    assert select is None or select.shape == (B, T), f"select must be {(B, T)}, got {tuple(select.shape)}"
    p = dropout if training else 0.0
    C, H = w.d_model, w.n_heads
    real = seqs > 0  # (B, T)
    pos = (real.long().cumsum(1) - 1).clamp(min=0)  # (B, T) 0 at the first real item
    x = F.dropout(F.embedding(seqs, w.item_emb) + F.embedding(pos, w.wpe), p, training)  # (B, T, C)
    # causal, real keys only; a padding query may see itself so that no row is all -inf (its
    # output is never attended to, so it changes nothing)
    allowed = (torch.ones(T, T, dtype=torch.bool, device=seqs.device).tril() & real[:, None, :]) \
        | torch.eye(T, dtype=torch.bool, device=seqs.device)
    if select is not None:
        rows, cols = select.nonzero(as_tuple=True)  # (N,) the positions read past the last layer
    last = len(w.layers) - 1
    for i, (l1w, l1b, aw, ab, pw, pb, l2w, l2b, fw, fb, mw, mb) in enumerate(w.layers):
        h = F.layer_norm(x, (C,), l1w, l1b, LN_EPS)
        q, k, v = torch.addmm(ab, h.reshape(-1, C), aw).view(B, T, 3, H, C // H).unbind(2)  # (B, T, H, D)
        if i == last and select is None:  # the newest position of every row (serving)
            q, x, mask = q[:, -1:], x[:, -1:], allowed[:, None, -1:]  # (B, 1, H, D), (B, 1, C), (B, 1, 1, T)
        elif i == last:  # one query per selected position, against its own row's keys
            q, k, v = q[rows, cols][:, None], k[rows], v[rows]  # (N, 1, H, D), (N, T, H, D)
            x, mask = x[rows, cols][:, None], allowed[rows, cols][:, None, None]  # (N, 1, C), (N, 1, 1, T)
        else:
            mask = allowed[:, None]  # (B, 1, T, T)
        n, t = x.shape[:2]
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           attn_mask=mask, dropout_p=p)  # (n, H, t, D)
        x = x + F.dropout(torch.addmm(pb, a.transpose(1, 2).reshape(-1, C), pw).view(n, t, C), p, training)
        h = F.layer_norm(x, (C,), l2w, l2b, LN_EPS)
        m = F.gelu(torch.addmm(fb, h.reshape(-1, C), fw), approximate="tanh")  # GPT-2's gelu_new
        x = x + F.dropout(torch.addmm(mb, m, mw).view(n, t, C), p, training)
    return F.layer_norm(x[:, 0], (C,), *w.ln_f, LN_EPS)  # (N, C)
