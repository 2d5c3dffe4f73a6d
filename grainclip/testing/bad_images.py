"""The odd images a real web crawl contains, made from seeds so no binary blobs are committed.

Each entry maps a name to (bytes, expectation): "ok" when `grainclip.images.decode_image` must turn it into a
usable RGB image, "error" when it must be refused with an `ImageDecodeError` (recorded as decode_failed).
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

from grainclip.images import encode_image


def _gradient(width: int, height: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 // max(width - 1, 1), yy * 255 // max(height - 1, 1), (xx + yy) % 256], axis=-1)
    return (base + rng.integers(0, 20, size=base.shape)).clip(0, 255).astype(np.uint8)


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims width x height pixels (a decompression-bomb header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + b"\x00\x00\x00")  # one row of one pixel; the rest is missing
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG stored sideways with EXIF orientation 6 (display rotated 90° clockwise -> 20x40)."""
    image = Image.fromarray(_gradient(40, 20, seed=3))
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _animated_gif() -> bytes:
    frames = [Image.fromarray(_gradient(16, 16, seed=s)).convert("P") for s in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return buffer.getvalue()


def bad_images() -> dict[str, tuple[bytes, str]]:
    rgb = Image.fromarray(_gradient(32, 24))
    jpeg = encode_image(rgb, "JPEG")
    rgba = np.dstack([_gradient(32, 24), np.linspace(0, 255, 32 * 24).reshape(24, 32).astype(np.uint8)])
    gray16 = Image.fromarray(_gradient(32, 24)[..., 0].astype(np.uint16) * 257)  # mode I;16
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.info["transparency"] = 0
    return {
        "rgb_png": (encode_image(rgb, "PNG"), "ok"),
        "grayscale": (encode_image(rgb.convert("L"), "PNG"), "ok"),
        "rgba": (encode_image(Image.fromarray(rgba), "PNG"), "ok"),
        "cmyk_jpeg": (encode_image(rgb.convert("CMYK"), "JPEG"), "ok"),
        "gray_16bit_png": (encode_image(gray16, "PNG"), "ok"),
        "palette_transparency": (encode_image(palette, "PNG"), "ok"),
        "exif_rotated": (_exif_rotated_jpeg(), "ok"),
        "one_pixel": (encode_image(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"), "ok"),
        "animated_gif": (_animated_gif(), "ok"),
        "truncated_jpeg": (jpeg[: len(jpeg) // 2], "error"),
        "zero_bytes": (b"", "error"),
        "not_an_image": (b"this is plain text, not an image", "error"),
        "bomb_header": (png_with_claimed_size(30000, 30000), "error"),
    }
