"""Turning uploaded bytes into the served model's input, refusing what is not a safe image.

Pillow decodes lazily: `Image.open` reads only the header, so the pixel count is checked before a
decompression bomb can allocate anything, and the decode itself runs with Pillow's bomb warning as an error.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageRejected(Exception):
    """A client error: `status` is the HTTP status it maps to (400 unreadable, 413 too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageRejected("empty image")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ImageRejected("image refused as a decompression bomb (too many pixels)", 413) from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"unreadable image: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(f"image of {width}x{height} pixels exceeds the limit of {max_pixels:,} pixels", 413)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("image refused as a decompression bomb", 413) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageRejected(f"truncated or corrupt image: {exc}") from None
    return image


def to_model_input(image: Image.Image, size: int, channels: int, mean: list[float], std: list[float]) -> np.ndarray:
    """(channels, size, size) float32, normalised as the teacher was: any mode and size is converted."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))  # transparent pixels read as white
        image = Image.alpha_composite(background, image.convert("RGBA"))
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        arr = np.asarray(image, dtype=np.float32)
        scale = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        image = Image.fromarray(np.clip(arr / scale * 255.0, 0, 255).astype(np.uint8))
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    arr = np.asarray(image, dtype=np.float32) / 255.0
    arr = arr[None] if channels == 1 else arr.transpose(2, 0, 1)
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return np.ascontiguousarray((arr - m) / s, dtype=np.float32)
