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

from increc_ray.learn.gpt2 import Weights, hidden_at


class Encoder(Weights):
    """Hidden state at the newest position for left-padded item sequences (inference only)."""

    @torch.inference_mode()
    def __call__(self, seqs: torch.Tensor) -> torch.Tensor:
        """(B, C) hidden states at the last column of ``seqs`` (B, T), left-padded with 0; every
        row must end in a real item."""
        return hidden_at(self, seqs)
