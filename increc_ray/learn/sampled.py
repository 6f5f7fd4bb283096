"""Sampled softmax, the loss of ``trainer.loss: sampled``: a step's cost that does not grow with
the catalogue.

The full softmax scores every known item at every scored position: (N, n_items) logits, and a
gradient on every row of the item table. The sampled one scores each position's target and K
negatives drawn once per step, shared by the batch (one (N, C) x (C, K) product), so a step
reads K + N + inputs rows whatever the catalogue's size. Drawing item i with probability q_i
biases the softmax towards the items drawn often; subtracting log q_i from each logit (the logQ
correction, Bengio & Senecal 2008; Jean et al. 2015) removes that bias in expectation. A
negative that is the position's own target (an accidental hit) is masked out, as TensorFlow's
``sampled_softmax_loss(remove_accidental_hits=True)`` does.

Torch has no sampled softmax, so the loss is written out here (a few lines over
``F.cross_entropy``); the draw is ``torch.searchsorted`` on a cumulative distribution kept
until the item counts change, so that a draw costs O(K log n), not a pass over n items.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class Negatives:
    """The negatives' distribution over item rows: live items (never pad row 0, a hole or spare
    capacity) with probability proportional to (count + 1) ** power; built once per change of the
    counts (``IncrementalLearner._counts_changed``).

    When there are no more live items than ``k``, every live item is a negative, each once, with
    no correction: the loss is then the full softmax over the live items, exactly.
    """

    def __init__(self, counts: np.ndarray, holes: torch.Tensor | np.ndarray, power: float, k: int,
                 device: torch.device | str = "cpu") -> None:
        mass = (np.asarray(counts, dtype=np.float64) + 1.0) ** power  # (n_items + 1,)
        mass[0] = 0.0  # padding
        holes = torch.as_tensor(holes, dtype=torch.long).cpu().numpy()
        mass[holes] = 0.0
        self.live = torch.as_tensor(np.flatnonzero(mass), device=device)  # (n_live,)
        assert len(self.live), "no live item to draw negatives from"
        self.k = k
        self.exact = k >= len(self.live)
        q = mass / mass.sum()
        with np.errstate(divide="ignore"):  # pad and holes: log 0 = -inf, never drawn
            log_q = np.zeros_like(q) if self.exact else np.log(q)
        self.log_q = torch.as_tensor(log_q, dtype=torch.float32, device=device)  # (n_items + 1,)
        self._cdf = torch.as_tensor(np.cumsum(mass), device=device)  # float64: exact enough at 1M items
        self._last = int(self.live[-1])

    def draw(self) -> torch.Tensor:
        """(K,) item rows, drawn with replacement by the global CPU torch RNG (the learner's own
        stream inside ``_own_torch_rng``, on any device); every live row once when ``exact``."""
        if self.exact:
            return self.live
        u = torch.rand(self.k, dtype=torch.float64).to(self._cdf.device) * self._cdf[-1]
        # the first row whose cumulative mass exceeds u: rows of zero mass are never the first;
        # u rounded up to the total mass would point past the end: the last live row instead
        return torch.searchsorted(self._cdf, u, right=True).clamp_(max=self._last)


def sampled_softmax(hidden: torch.Tensor, target_emb: torch.Tensor, neg_emb: torch.Tensor,
                    target_log_q: torch.Tensor, neg_log_q: torch.Tensor, hits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (N,) of each position's target against the shared negatives.

    ``hidden`` (N, C) the scored positions; ``target_emb`` (N, C) their targets' rows; ``neg_emb``
    (K, C) the negatives' rows; ``target_log_q`` (N,) and ``neg_log_q`` (K,) log probabilities of
    drawing them; ``hits`` (N, K) where a negative is the position's own target (masked out).
    """
    pos = (hidden * target_emb).sum(-1) - target_log_q  # (N,)
    neg = (hidden @ neg_emb.T - neg_log_q).masked_fill(hits, float("-inf"))  # (N, K)
    logits = torch.cat([pos[:, None], neg], 1)  # (N, 1 + K) the target is column 0
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device), reduction="none")
