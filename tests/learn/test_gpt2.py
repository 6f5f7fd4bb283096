import pytest
import torch

from increc_ray.config import ModelConfig
from increc_ray.learn.model import SeqRecModel, left_pad


def _model(d_model=32, n_layers=2, n_heads=2, max_len=10, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    model = SeqRecModel(ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads, max_len=max_len,
                                    dropout=dropout), capacity=60)
    with torch.no_grad():  # trained-looking weights: biases and norms away from their init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _batch(max_len, lengths=(1, 3, 10, 15, 7), seed=1):
    g = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(1, 60, (n,), generator=g).tolist()[-max_len:] for n in lengths]
    x = left_pad(seqs)
    # a slice's targets are its last n positions: ragged suffixes, never padding
    sel = torch.zeros_like(x, dtype=torch.bool)
    for b, (s, n) in enumerate(zip(seqs, (1, 2, 4, 10, 3))):
        sel[b, x.shape[1] - min(n, len(s)):] = True
    return x, sel


@pytest.mark.parametrize("n_layers,n_heads", [(1, 2), (2, 4), (3, 1)])
def test_hidden_at_selected_positions_matches_the_full_forward(n_layers, n_heads):
    model = _model(n_layers=n_layers, n_heads=n_heads, dropout=0.2).eval()
    x, sel = _batch(10)
    with torch.no_grad():
        want = model(x)
        torch.testing.assert_close(model.hidden_at(x, sel), want[sel], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.hidden_at(x), want[:, -1], rtol=1e-4, atol=1e-5)


def test_hidden_at_gives_the_gradients_of_the_full_forward():
    model = _model().train()  # dropout 0: training mode, yet deterministic
    x, sel = _batch(10)
    targets = torch.randint(1, 60, (int(sel.sum()),), generator=torch.Generator().manual_seed(2))

    def grads(hidden):
        model.zero_grad()
        torch.nn.functional.cross_entropy(hidden @ model.item_emb.weight.T, targets).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want, got = grads(model(x)[sel]), grads(model.hidden_at(x, sel))
    assert set(got) == set(want)  # every weight the model trains gets a gradient (the unused wte none)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-3, atol=1e-6, msg=name)


def test_hidden_at_applies_dropout_only_in_training_mode():
    model = _model(dropout=0.3)
    x, sel = _batch(10)
    model.train()
    a, b = model.hidden_at(x, sel), model.hidden_at(x, sel)
    assert not torch.allclose(a, b)  # a fresh dropout mask each call
    model.eval()
    torch.testing.assert_close(model.hidden_at(x, sel), model.hidden_at(x, sel))
