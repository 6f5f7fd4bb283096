"""A small model and a trained-looking item table (clustered rows of varied norms, so inner-product
neighbours mean something), published as a whole version: what the approximate top-k tests
(``test_index``, ``test_quantized``) check against the exact scan."""

from __future__ import annotations

import numpy as np
import torch

from increc_ray.config import ModelConfig
from increc_ray.learn.model import SeqRecModel

CFG = ModelConfig(d_model=32, n_layers=1, n_heads=2, max_len=8, dropout=0.0)
N = 3000


def weights(version: int, table: torch.Tensor, model: SeqRecModel, ids: list) -> dict:
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    state["item_emb.weight"] = table.numpy().copy()  # a version's own copy, as published
    return {"version": version, "model_config": CFG.model_dump(), "vocab": ids, "state_dict": state}


def recall(got: list, want: list) -> float:
    return float(np.mean([len({i for i, _ in g} & {i for i, _ in w}) / max(1, len(w)) for g, w in zip(got, want)]))


def setting() -> tuple[SeqRecModel, torch.Tensor, list[str], list[list[str]]]:
    """(model, table of N + 200 rows, N item ids, 40 histories of 6 items)."""
    torch.manual_seed(0)
    model = SeqRecModel(CFG, capacity=N + 200).eval()
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(30, CFG.d_model, generator=g)
    table = centres[torch.randint(0, 30, (N + 200,), generator=g)] + 0.5 * torch.randn(N + 200, CFG.d_model, generator=g)
    table *= torch.rand(N + 200, 1, generator=g) + 0.5
    ids = [f"i{j}" for j in range(N)]
    histories = [[f"i{j}" for j in torch.randint(0, N, (6,), generator=g).tolist()] for _ in range(40)]
    return model, table, ids, histories
