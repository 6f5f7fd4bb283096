import pytest
import torch

from increc_ray.config import ModelConfig
from increc_ray.learn.model import SeqRecModel, left_pad
from increc_ray.serve.encoder import Encoder


@pytest.mark.parametrize("d_model,n_layers,n_heads,max_len", [(32, 1, 2, 10), (64, 2, 4, 25), (16, 3, 1, 8)])
def test_encoder_matches_the_model_at_the_newest_position(d_model, n_layers, n_heads, max_len):
    torch.manual_seed(0)
    model = SeqRecModel(ModelConfig(d_model=d_model, n_layers=n_layers, n_heads=n_heads, max_len=max_len,
                                    dropout=0.2), capacity=60).eval()
    with torch.no_grad():  # trained-looking weights: biases and norms away from their init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    g = torch.Generator().manual_seed(1)
    # ragged histories, one a single item, one longer than max_len (cut to the newest)
    seqs = [torch.randint(1, 60, (n,), generator=g).tolist() for n in (1, 3, max_len, max_len + 5, 7)]
    batch = left_pad([s[-max_len:] for s in seqs])
    with torch.no_grad():
        want = model(batch)[:, -1]  # (B, C)
    got = Encoder(model.state_dict(), n_heads)(batch)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    # padding changes nothing: each history alone gives its row of the batch
    for b, s in enumerate(seqs):
        alone = Encoder(model.state_dict(), n_heads)(left_pad([s[-max_len:]]))
        torch.testing.assert_close(alone[0], got[b], rtol=1e-4, atol=1e-5)


def test_encoder_refuses_a_sequence_longer_than_its_positions():
    model = SeqRecModel(ModelConfig(d_model=16, n_layers=1, n_heads=2, max_len=4), capacity=10)
    with pytest.raises(AssertionError, match="max_len"):
        Encoder(model.state_dict(), 2)(torch.ones(1, 5, dtype=torch.long))
