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


def test_generator_grows_by_upsampling_stages_not_by_a_larger_projection():
    """At 224 px the seed is 7x7 with five 2x stages; the old design's linear layer alone had 40 M parameters."""
    from compressor.model_stats import count_macs, count_params

    small, large = (Generator(100, 3, s, (0.5,) * 3, (0.25,) * 3, width=64) for s in (32, 224))
    assert (small.stages, small.init_size) == (2, 8) and (large.stages, large.init_size) == (5, 7)
    assert large(torch.randn(2, 100)).shape == (2, 3, 224, 224)
    assert count_params(large) < 2_000_000 and count_params(large.project) < 1_000_000
    assert count_macs(large, (100,)) < 500_000_000  # per image, well under a ResNet-34 teacher's 3.6 G
    odd = Generator(16, 1, 28, (0.5,), (0.25,), width=8)  # sizes that are not powers of two are resized
    assert odd(torch.randn(3, 16)).shape == (3, 1, 28, 28)
