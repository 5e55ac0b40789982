import math

import pytest
import torch
from diffusers.models.embeddings import get_timestep_embedding

from sciddiff.nn.embeddings import GaussianFourierProjection, SinusoidalEmbedding, sinusoidal_embedding


@pytest.mark.parametrize("dim", [64, 33])
def test_sinusoidal_matches_diffusers_ddpm_convention(dim):
    t = torch.tensor([0, 1, 17, 500, 999])
    ours = sinusoidal_embedding(t, dim)
    ref = get_timestep_embedding(t, dim)  # defaults: shift 1, [sin, cos] = Ho et al.'s DDPM
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert ours.shape == (5, dim)


def test_sinusoidal_image_unet_convention_and_values():
    t = torch.tensor([3.5, 250.0])
    ours = sinusoidal_embedding(t, 32, downscale_freq_shift=0, flip_sin_to_cos=True)
    torch.testing.assert_close(ours, get_timestep_embedding(t, 32, flip_sin_to_cos=True, downscale_freq_shift=0),
                               rtol=0, atol=1e-6)
    # Hand-computed: first frequency is 1, last is 1/max_period in the DDPM convention.
    e = sinusoidal_embedding(torch.tensor([2.0]), 8)[0]
    assert e[0].item() == pytest.approx(math.sin(2.0), abs=1e-6)
    assert e[3].item() == pytest.approx(math.sin(2.0 / 10000.0), abs=1e-7)
    assert e[4].item() == pytest.approx(math.cos(2.0), abs=1e-6)
    torch.testing.assert_close(SinusoidalEmbedding(8)(torch.tensor([2.0]))[0], e)


def test_sinusoidal_rejects_bad_input():
    with pytest.raises(ValueError):
        sinusoidal_embedding(torch.zeros(2, 2), 8)
    with pytest.raises(ValueError):
        sinusoidal_embedding(torch.zeros(2), 2)  # half - shift = 0


def test_gaussian_fourier_projection():
    g = torch.Generator().manual_seed(1)
    emb = GaussianFourierProjection(16, scale=16.0, generator=g)
    assert list(dict(emb.named_parameters())) == []  # never trained
    assert "W" in emb.state_dict()
    x = torch.tensor([0.0, 0.3, -1.2])
    out = emb(x)
    assert out.shape == (3, 16)
    w = emb.W
    phase = 2 * math.pi * x.double()[:, None] * w.double()  # float64 reference; float32 phases of ~100 rad err ~1e-5
    torch.testing.assert_close(out[:, :8].double(), torch.sin(phase), rtol=0, atol=1e-4)
    torch.testing.assert_close(out[:, 8:].double(), torch.cos(phase), rtol=0, atol=1e-4)
    assert 8.0 < w.std().item() < 30.0  # W ~ N(0, 16^2)
    # A state dict reproduces W exactly, whatever the new module drew.
    other = GaussianFourierProjection(16)
    other.load_state_dict(emb.state_dict())
    torch.testing.assert_close(other(x), out, rtol=0, atol=0)
    with pytest.raises(ValueError):
        GaussianFourierProjection(7)
