"""The serving forward pass: a published weight set's encoder as plain tensors (Ray-free core).

``SeqRecModel`` runs GPT-2 through ``transformers``, whose module wrappers cost more Python than
the arithmetic at serving sizes (two layers of width 128 over 25 items: the profile of a live
replica spent most of its forward pass in them, ``bench/hot_path.py``). A recommend call needs
only the hidden state at the newest position, so ``Encoder`` runs ``learn.gpt2``'s functional
forward pass on the published tensors, the last layer at that one position. Adopting a version
is taking views of its state dict: no module is built, no table initialised.
``tests/serve/test_encoder.py`` checks it against the model.
"""

from __future__ import annotations

import torch

from increc_ray.learn.frozen import FrozenRows
from increc_ray.learn.gpt2 import Weights, hidden_at


class Encoder(Weights):
    """Hidden state at the newest position for left-padded item sequences (inference only)."""

    @torch.inference_mode()
    def __call__(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, C) hidden states at the last column of ``seqs`` (B, T), left-padded with 0; every
        row must end in a real item."""
        return hidden_at(self, seqs)


@torch.inference_mode()
def hidden_over(state: dict[str, torch.Tensor], n_heads: int, items: FrozenRows, seqs: torch.Tensor) -> torch.Tensor:
    """``Encoder`` over an item table given as a ``frozen.FrozenRows`` (a base and the rows moved
    since): the rows ``seqs`` reads are gathered into a small table of their own, so the base is
    never made whole. ``state`` holds every other weight."""
    rows, local = torch.unique(torch.cat([torch.zeros(1, dtype=torch.long), seqs.flatten()]), return_inverse=True)
    encoder = Encoder({**state, "item_emb.weight": items.gather(rows)}, n_heads)  # rows[0] = 0: pad
    return encoder(local[1:].view_as(seqs))
