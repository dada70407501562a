import pytest
import torch

from compressor.generator import Generator


@pytest.mark.parametrize("size, channels", [(16, 1), (32, 3), (28, 3), (30, 1)])
def test_generator_shape_and_normalised_range(size, channels):
    mean, std = (0.5,) * channels, (0.25,) * channels
    gen = Generator(100, channels, size, mean, std, width=16)
    z = torch.randn(5, 100)
    x = gen(z)
    assert x.shape == (5, channels, size, size)
    pixels = gen.to_pixels(x)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert torch.allclose(pixels, gen.pixels(z), atol=1e-5)


def test_generator_is_trainable_end_to_end():
    gen = Generator(8, 3, 16, (0.0,) * 3, (1.0,) * 3, width=8)
    loss = gen(torch.randn(4, 8)).mean()
    loss.backward()
    assert all(p.grad is not None for p in gen.parameters())
