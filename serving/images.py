"""Turning uploaded bytes into the served model's input, refusing what is not a safe image.

Pillow decodes lazily: `Image.open` reads only the header, so the pixel count is checked before a
decompression bomb can allocate anything, and the decode itself runs with Pillow's bomb warning as an error.
Files built to be slow rather than large are bounded too: the reads it takes to reach the pixels, and the
file's size against its pixel count.
"""
from __future__ import annotations

import ctypes
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageRejected(Exception):
    """A client error: `status` is the HTTP status it maps to (400 unreadable, 413 too large)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


LARGE_IMAGE_PIXELS = 4_000_000  # after decoding more than this, freed memory is handed back to the system


def _malloc_trim():
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


_TRIM = _malloc_trim()


def release_memory() -> None:
    """Give freed heap pages back to the OS: glibc keeps them after a large decode, and a burst of large
    images would otherwise leave the front gigabytes larger than its baseline."""
    if _TRIM is not None:
        _TRIM(0)


HEADER_READS = 65_536  # reads Pillow may make to find the pixels: legitimate headers need a few dozen
BYTES_PER_PIXEL = 8  # 16-bit RGBA, uncompressed: what a file may spend per pixel, plus the slack below
METADATA_BYTES = 2 * 1024 * 1024  # EXIF, ICC profiles, thumbnails


class _CountedReads(io.BytesIO):
    """The file, failing once Pillow has made `HEADER_READS` reads while opening it: a header built of millions
    of fill bytes or empty chunks, each of which Pillow reads in Python, is refused within milliseconds instead
    of holding a decoder for seconds."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0
        self.opening = True  # decoding, after the header, reads the pixels in as many pieces as it likes

    def read(self, size: int | None = -1) -> bytes:
        self.reads += self.opening
        if self.reads > HEADER_READS:
            raise ImageRejected("image refused: its header does not reach the pixels in a reasonable number of reads")
        return super().read(size)


def _open(data: bytes) -> Image.Image:
    """The image with only its header read, from a stream that counts Pillow's reads while it opens."""
    stream = _CountedReads(data)
    image = Image.open(stream)
    stream.opening = False
    return image


def decode_image(data: bytes, max_pixels: int, target_size: int | None = None) -> Image.Image:
    """`target_size`: the model's input side; a JPEG is then decoded at the smallest scale (1/2 to 1/8) still
    at least that large, which never allocates the full-resolution image."""
    if not data:
        raise ImageRejected("empty image")
    try:
        image = _open(data)
    except ImageRejected:
        raise
    except Image.DecompressionBombError:
        raise ImageRejected("image refused as a decompression bomb (too many pixels)", 413) from None
    except UnidentifiedImageError:
        raise ImageRejected("not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"unreadable image: {exc}") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageRejected(f"image of {width}x{height} pixels exceeds the limit of {max_pixels:,} pixels", 413)
    if len(data) > BYTES_PER_PIXEL * width * height + METADATA_BYTES:  # the rest is padding to be slow to parse
        raise ImageRejected(f"a file of {len(data):,} bytes is too large for an image of {width}x{height} pixels", 413)
    if target_size and image.format == "JPEG" and image.mode in ("RGB", "L", "CMYK", "YCbCr"):
        image.draft(image.mode, (target_size, target_size))
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
    """(channels, size, size) float32, normalised as the teacher was: any mode and size is converted.

    A large image is first reduced by box averaging to about twice the target, in its own mode, so that the
    conversions below (alpha compositing, RGB) run on a small image rather than copy a large one."""
    factor = min(image.size) // (2 * size)
    if factor > 1:
        try:
            image = image.reduce(factor)
        except ValueError:  # a mode reduce() does not support (palette, 1-bit): convert at full size instead
            pass
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
