"""Decoding and preprocessing of uploaded images: any mode and size in, the model's normalised input out."""
import io

import numpy as np
import pytest
from PIL import Image

from serving.images import ImageRejected, decode_image, to_model_input


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "CMYK", "I;16", "1", "LA"])
@pytest.mark.parametrize("channels", [1, 3])
def test_any_mode_becomes_the_models_input(mode, channels):
    rng = np.random.default_rng(0)
    base = Image.fromarray(rng.integers(0, 255, (40, 30, 3), dtype=np.uint8))
    image = base.convert(mode) if mode != "I;16" else Image.fromarray((rng.integers(0, 65535, (40, 30))).astype(np.uint16))
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    decoded = decode_image(encode(image, fmt), max_pixels=10_000)
    x = to_model_input(decoded, 16, channels, [0.5] * channels, [0.25] * channels)
    assert x.shape == (channels, 16, 16) and x.dtype == np.float32
    assert np.isfinite(x).all()
    assert x.min() >= (0 - 0.5) / 0.25 - 1e-6 and x.max() <= (1 - 0.5) / 0.25 + 1e-6


def test_normalisation_matches_the_training_convention():
    gray = Image.fromarray(np.full((16, 16), 51, dtype=np.uint8))  # 51 / 255 = 0.2
    x = to_model_input(decode_image(encode(gray), 1000), 16, 1, [0.1], [0.5])
    assert np.allclose(x, (0.2 - 0.1) / 0.5, atol=1e-6)


def test_transparent_pixels_read_as_white():
    clear = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    x = to_model_input(decode_image(encode(clear), 1000), 8, 3, [0, 0, 0], [1, 1, 1])
    assert np.allclose(x, 1.0)


@pytest.mark.parametrize("payload, message", [
    (b"", "empty"),
    (b"this is not an image at all", "not an image"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "image"),
])
def test_unreadable_bytes_are_client_errors(payload, message):
    with pytest.raises(ImageRejected, match=message) as info:
        decode_image(payload, 1000)
    assert info.value.status == 400


def test_truncated_image_is_a_client_error():
    data = encode(Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    with pytest.raises(ImageRejected, match="truncated|corrupt|unreadable") as info:
        decode_image(data[: len(data) // 2], 100_000)
    assert info.value.status == 400


def test_decompression_bomb_is_refused_before_decoding():
    # 20000 x 20000 black PNG compresses to a few hundred kB but would need 400 MB to decode.
    bomb = encode(Image.new("1", (20000, 20000)))
    assert len(bomb) < 2_000_000
    with pytest.raises(ImageRejected, match="exceeds the limit|decompression bomb") as info:
        decode_image(bomb, max_pixels=40_000_000)
    assert info.value.status == 413


def test_pixel_limit_is_the_operators_not_pillows():
    big = encode(Image.new("L", (3000, 2000)))
    with pytest.raises(ImageRejected, match="3000x2000 pixels exceeds the limit") as info:
        decode_image(big, max_pixels=5_000_000)
    assert info.value.status == 413
    assert decode_image(big, max_pixels=6_000_000).size == (3000, 2000)


def _smooth(width: int, height: int) -> Image.Image:
    """A smooth colour gradient: downscaling it any sensible way gives nearly the same small image."""
    x, y = np.meshgrid(np.linspace(0, 1, width), np.linspace(0, 1, height))
    rgb = np.stack([x, y, (x + y) / 2], axis=-1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


@pytest.mark.parametrize("fmt, mode", [("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "RGB")])
def test_large_images_are_reduced_while_decoding_and_give_the_same_input(fmt, mode):
    """A 4000 x 3000 JPEG decodes at 1/8 scale (draft), never at full size; any large image is box-reduced
    before conversion. The model input stays what a full-size decode and resize would give."""
    big = _smooth(4000, 3000).convert(mode)
    blob = encode(big, fmt)
    decoded = decode_image(blob, 40_000_000, target_size=32)
    if fmt == "JPEG":
        assert decoded.size == (500, 375)
    reduced = to_model_input(decoded, 32, 3, [0.5] * 3, [0.25] * 3)
    full = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR,
                                                                          reducing_gap=3.0), np.float32) / 255
    full = (full.transpose(2, 0, 1) - 0.5) / 0.25
    assert np.abs(reduced - full).mean() < 0.02 and np.abs(reduced - full).max() < 0.2
