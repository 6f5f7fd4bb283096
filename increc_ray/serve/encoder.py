"""The serving forward pass: a published weight set's encoder as plain tensors (Ray-free core).

``SeqRecModel`` runs GPT-2 through ``transformers``, whose module wrappers cost more Python than
the arithmetic at serving sizes (two layers of width 128 over 25 items: the profile of a live
replica spent most of its forward pass in them, ``bench/hot_path.py``). A recommend call needs
only the hidden state at the newest position, so ``Encoder`` runs the same arithmetic with
functional torch ops on the published tensors, and the last layer computes its attention and
MLP for that one position. Adopting a version is taking views of its state dict: no module is
built, no table initialised. ``tests/serve/test_encoder.py`` checks it against the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LN_EPS = 1e-5  # GPT2Config.layer_norm_epsilon


class Encoder:
    """Hidden state at the newest position for left-padded item sequences (inference only)."""

    def __init__(self, state: dict[str, torch.Tensor], n_heads: int) -> None:
        t = "transformer."
        self.item_emb = state["item_emb.weight"]  # (capacity, C)
        self.wpe = state[t + "wpe.weight"]  # (max_len, C)
        self.max_len, self.d_model = self.wpe.shape
        assert self.d_model % n_heads == 0, f"d_model {self.d_model} not divisible by n_heads {n_heads}"
        self.n_heads = n_heads
        n_layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith(t + "h."))
        # per layer: ln_1 (w, b), c_attn (w, b), c_proj (w, b), ln_2 (w, b), c_fc (w, b), mlp c_proj (w, b);
        # GPT-2's Conv1D stores weights (in, out), so x @ w + b
        names = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
                 "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"]
        self.layers = [[state[f"{t}h.{i}.{n}"] for n in names] for i in range(n_layers)]
        self.ln_f = (state[t + "ln_f.weight"], state[t + "ln_f.bias"])

    @torch.inference_mode()
    def __call__(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, C) hidden states at the last column of ``seqs`` (B, T), left-padded with 0; every
        row must end in a real item."""
        B, T = seqs.shape
        assert T <= self.max_len, f"sequence length {T} exceeds max_len {self.max_len}"
        C, H = self.d_model, self.n_heads
        real = seqs > 0  # (B, T)
        pos = (real.long().cumsum(1) - 1).clamp(min=0)  # (B, T) 0 at the first real item
        x = F.embedding(seqs, self.item_emb) + F.embedding(pos, self.wpe)  # (B, T, C)
        # causal, real keys only; a padding query may see itself so that no row is all -inf
        # (its output is never attended to, so it changes nothing)
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        allowed = (causal & real[:, None, :]) | torch.eye(T, dtype=torch.bool)  # (B, T, T)
        mask = allowed[:, None]  # (B, 1, T, T)
        last = len(self.layers) - 1
        for i, (l1w, l1b, aw, ab, pw, pb, l2w, l2b, fw, fb, mw, mb) in enumerate(self.layers):
            h = F.layer_norm(x, (C,), l1w, l1b, LN_EPS)
            q, k, v = torch.addmm(ab, h.reshape(-1, C), aw).view(B, T, 3, H, C // H).unbind(2)  # (B, T, H, D)
            if i == last:  # only the newest position is read past this layer
                q, x, mask = q[:, -1:], x[:, -1:], mask[:, :, -1:]
            a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               attn_mask=mask)  # (B, H, T', D)
            t = x.shape[1]
            x = x + torch.addmm(pb, a.transpose(1, 2).reshape(-1, C), pw).view(B, t, C)
            h = F.layer_norm(x, (C,), l2w, l2b, LN_EPS)
            m = F.gelu(torch.addmm(fb, h.reshape(-1, C), fw), approximate="tanh")  # GPT-2's gelu_new
            x = x + torch.addmm(mb, m, mw).view(B, t, C)
        return F.layer_norm(x[:, -1], (C,), *self.ln_f, LN_EPS)  # (B, C)
