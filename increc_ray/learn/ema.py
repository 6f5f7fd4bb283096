"""A moving average of the weights across updates (``trainer.ema_decay``): what gets published.

``ema = decay * ema + (1 - decay) * weights`` after each update. Item rows added since the
average last moved (new items, a grown table) join it as the model has them, so a new item is
published as learned, not averaged with a spare row's initial noise.
"""

from __future__ import annotations

import contextlib

import torch

ITEM_KEY = "item_emb.weight"


class WeightAverage:
    """The averaged state dict of one model, and how many item rows it has averaged."""

    def __init__(self, decay: float, state: dict[str, torch.Tensor] | None = None, n_items: int = 0) -> None:
        assert 0 <= decay < 1, f"decay must be in [0, 1), got {decay}"
        self.decay = decay
        self.state = state  # None until the first update
        self.n_items = n_items  # items the average has rows for (later ones join from the model)

    @property
    def active(self) -> bool:
        return self.state is not None

    def update(self, model: torch.nn.Module, n_items: int) -> None:
        """Fold the model's current weights in (a no-op when ``decay`` is 0)."""
        if self.decay <= 0:
            return
        live = model.state_dict()
        if self.state is None:
            self.state = {k: v.detach().clone() for k, v in live.items()}
        else:
            self._join_new_rows(model)
            with torch.no_grad():  # in place: no new copy of the weights per update
                for k, v in live.items():
                    if v.is_floating_point():
                        self.state[k].lerp_(v, 1 - self.decay)  # decay * ema + (1 - decay) * v
                    else:
                        self.state[k].copy_(v)
        self.n_items = n_items

    def reset_rows(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Item ``rows`` now hold new items (``values``): their average starts there."""
        if self.state is not None:
            with torch.no_grad():
                self.state[ITEM_KEY][rows] = values.to(self.state[ITEM_KEY].device)

    def _join_new_rows(self, model: torch.nn.Module) -> None:
        """``padded`` in place: the table's rows newer than the average copied in, not the whole
        table copied (a pass over every row, per update, at a large catalogue)."""
        mine, cur = self.state[ITEM_KEY], model.state_dict()[ITEM_KEY].detach()
        if mine.shape != cur.shape:  # the table grew
            self.state = self.padded(model)
            return
        lo = self.n_items + 1
        with torch.no_grad():
            mine[lo:].copy_(cur[lo:])

    def padded(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The average, with rows of items newer than it taken from ``model``."""
        out = dict(self.state)
        lo = self.n_items + 1  # rows [lo, ...) are newer than the average
        cur = model.state_dict()[ITEM_KEY].detach()
        if cur.shape[0] > lo:
            out[ITEM_KEY] = torch.cat([self.state[ITEM_KEY][:lo], cur[lo:]])
        return out

    def weights(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """What is published: the average when there is one, else the model's weights."""
        return self.padded(model) if self.state is not None else model.state_dict()

    @contextlib.contextmanager
    def loaded_into(self, model: torch.nn.Module):
        """Run with the published weights loaded into ``model``; then restore its own."""
        if self.state is None:
            yield
            return
        live = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(self.padded(model))
        try:
            yield
        finally:
            model.load_state_dict(live)
