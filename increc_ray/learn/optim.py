"""Optimizers and step rules of the update: AdamW and friends, the adaptive lr, rare-row steps.

The article's update rules (online gradient descent, mini-batch SGD, momentum, AdamW, a dynamic
learning rate) are all ``trainer`` settings of the one update loop in ``learner.py``.
"""

from __future__ import annotations

import numpy as np
import torch

from increc_ray.config import TrainerConfig

# Adaptive lr schedule: an update whose loss exceeds the running average by LR_RISE_RATIO
# halves the lr (down to LR_FLOOR x base); otherwise it recovers by LR_RECOVER per update.
LR_RISE_RATIO = 1.25
LR_DECAY = 0.5
LR_RECOVER = 1.05
LR_FLOOR = 0.05
LOSS_EMA = 0.7  # weight of the old running average of the update loss (a window of ~3 updates)


def make_optimizer(model: torch.nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer:
    """The optimizer of ``trainer.optimizer`` over ``model`` (which has an ``item_emb`` table)."""
    # nanoGPT-style: decay matrices and embeddings, not biases and LayerNorm gains; the item table
    # is a group of its own so that it can move faster than the encoder (``item_lr_mult``)
    item = model.item_emb.weight
    decay = [p for p in model.parameters() if p.dim() >= 2 and p is not item]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": [item], "weight_decay": cfg.weight_decay, "lr_mult": cfg.item_lr_mult},
              {"params": decay, "weight_decay": cfg.weight_decay, "lr_mult": 1.0},
              {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0}]
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
    # fused Adam kernels: one pass over all parameters per step (about 5x faster than the default
    # per-tensor loop on CPU, where the optimizer step was a tenth of an update's time)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, fused=True)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, fused=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups)
    assert cfg.optimizer == "momentum", f"unknown optimizer {cfg.optimizer!r}"
    return torch.optim.SGD(groups, momentum=cfg.momentum)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """``lr`` for every param group, times the group's ``lr_mult``."""
    for group in opt.param_groups:
        group["lr"] = lr * group["lr_mult"]


def swap_param(opt: torch.optim.Optimizer, old: torch.Tensor, new: torch.Tensor) -> None:
    """Point ``opt`` at ``new`` (a grown copy of ``old``), zero-padding its per-row state."""
    for group in opt.param_groups:
        group["params"] = [new if p is old else p for p in group["params"]]
    state = opt.state.pop(old, None)
    if state is None:
        return
    for k, v in state.items():
        if torch.is_tensor(v) and v.shape == old.shape:
            pad = torch.zeros((new.shape[0] - old.shape[0], *old.shape[1:]), dtype=v.dtype, device=v.device)
            state[k] = torch.cat([v, pad])
    opt.state[new] = state


def step_rows(opt: torch.optim.Optimizer, table: torch.Tensor, rows: torch.Tensor, sub: torch.Tensor) -> None:
    """One ``opt.step()`` in which ``table`` (a parameter of ``opt``) moves only at ``rows``: ``sub``
    is a leaf holding ``table[rows]`` whose ``.grad`` is their gradient, and the other parameters
    step on their own grads (the table's own ``.grad`` must be None).

    The table's optimizer state (moments of every row, its step count) is gathered at ``rows``,
    stepped by ``opt``'s own kernel on ``sub`` and scattered back, so the rows follow exactly that
    optimizer's rule (AdamW's decoupled weight decay included) and every other row, its moments
    and decay stand still: a lazy step, as ``torch.optim.SparseAdam``'s (which has no weight decay
    and another state layout). The state keeps the dense layout, so a checkpoint or a resume with
    ``trainer.loss: full`` reads it as it is.
    """
    assert table.grad is None, "the table's gradient must come in sub.grad, not table.grad"
    assert sub.shape == (len(rows), *table.shape[1:]), f"sub must be {(len(rows), *table.shape[1:])}, got {tuple(sub.shape)}"
    group = next(g for g in opt.param_groups if any(p is table for p in g["params"]))
    table_state = opt.state.pop(table, {})
    opt.state[sub] = {k: v[rows] if _per_row(v, table) else v for k, v in table_state.items()}
    group["params"] = [sub if p is table else p for p in group["params"]]
    try:
        opt.step()
    finally:
        group["params"] = [table if p is sub else p for p in group["params"]]
        sub_state = opt.state.pop(sub, {})
        with torch.no_grad():
            table[rows] = sub.detach()
            for k, v in sub_state.items():
                if torch.is_tensor(v) and v.shape == sub.shape:  # per-row state (new on a first step)
                    if not _per_row(table_state.get(k), table):
                        table_state[k] = torch.zeros_like(table)
                    table_state[k][rows] = v
                else:  # shared: the step count
                    table_state[k] = v
        opt.state[table] = table_state


def _per_row(v, table: torch.Tensor) -> bool:
    return torch.is_tensor(v) and v.shape == table.shape


def adapt_lr_scale(scale: float, loss_ema: float | None, loss: float, schedule: str) -> tuple[float, float]:
    """The next (lr scale, running loss average) after an update with ``loss``.

    >>> adapt_lr_scale(1.0, 1.0, 2.0, "adaptive")[0]  # the loss jumped: halve the lr
    0.5
    >>> adapt_lr_scale(0.5, 1.0, 1.0, "constant")[0]
    0.5
    """
    if schedule == "adaptive" and loss_ema is not None:
        if loss > LR_RISE_RATIO * loss_ema:
            scale = max(LR_FLOOR, scale * LR_DECAY)
        else:
            scale = min(1.0, scale * LR_RECOVER)
    loss_ema = loss if loss_ema is None else LOSS_EMA * loss_ema + (1 - LOSS_EMA) * loss
    return scale, loss_ema


def rare_row_stretch(item_counts: np.ndarray, mult: float, count: float) -> tuple[np.ndarray, np.ndarray]:
    """(rows, stretch): item rows whose step is stretched by ``1 + (mult - 1) * count / (count + n)``,
    n being the item's positive events so far (``item_counts[i]`` for row i; row 0 is pad).

    >>> rows, s = rare_row_stretch(np.array([0, 1, 1000]), mult=1.5, count=1.0)
    >>> rows.tolist(), s.tolist()
    ([1], [1.25])
    """
    if mult <= 1:
        return np.zeros(0, dtype=np.int64), np.ones(0)
    stretch = 1 + (mult - 1) * count / (count + item_counts[1:])
    rows = np.flatnonzero(stretch > 1.01)  # the others step as usual
    return rows + 1, stretch[rows]
