"""Decode the images a real crawl contains into RGB PIL images, or say exactly why not.

Every stage decodes through `decode_image` so the rules are the same everywhere: EXIF rotation applied,
CMYK / 16-bit / palette / alpha converted to RGB, first frame of animations, and a pixel limit checked from
the header BEFORE the pixels are decoded (decompression bombs).

Transparency is the one rule with two answers that tools disagree on, so it is an option (`AlphaMode`, the
`image_alpha` key of the train and evaluate configs): `white` composites transparent pixels on white (what
a viewer shows; the default), `drop` discards the alpha channel as PIL's `convert("RGB")` does, which is what
open_clip's loaders and CLIP_benchmark see (the colour hidden under transparent pixels shows). Results are
only comparable with another tool's when both read the same pixels.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from grainclip import storage

DEFAULT_MAX_PIXELS = 64_000_000  # ~8000x8000; far above any training resolution

AlphaMode = Literal["white", "drop"]  # transparency: composite on white, or drop the channel as PIL does


class ImageDecodeError(ValueError):
    """The bytes are not a usable image; the message says why (recorded as status decode_failed)."""


def decode_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS, alpha: AlphaMode = "white") -> Image.Image:
    if not data:
        raise ImageDecodeError("empty image bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageDecodeError(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}"
                )
            if width < 1 or height < 1:
                raise ImageDecodeError(f"image has no pixels ({width}x{height})")
            image.seek(0)
            image.load()
    except ImageDecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # PIL's own message quotes PIL's limit, not ours; its header already says far more pixels than ours.
        raise ImageDecodeError(
            f"image is over the limit of {max_pixels} pixels (its header declares a decompression bomb)"
        ) from None
    except UnidentifiedImageError:
        # PIL's message names the BytesIO object's memory address, which says nothing about the image.
        raise ImageDecodeError(
            f"not a readable image: no image format recognises its {len(data)} bytes (starting {data[:8]!r})"
        ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageDecodeError(f"corrupt or truncated image: {exc}") from None
    return to_rgb(ImageOps.exif_transpose(image), alpha)


def to_rgb(image: Image.Image, alpha: AlphaMode = "white") -> Image.Image:
    """Any PIL mode -> RGB; 16-bit scaled to 8-bit; transparency composited on white or dropped (`alpha`)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        return Image.fromarray(np.clip(array / peak * 255.0, 0, 255).astype(np.uint8)).convert("RGB")
    if alpha == "drop":
        return image.convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def encode_image(image: Image.Image, format: str = "PNG", quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **({"quality": quality} if format.upper() == "JPEG" else {}))
    return buffer.getvalue()


def load_image_bytes(image: bytes | None, image_uri: str | None) -> bytes:
    """The encoded bytes of a row: inline bytes win; otherwise read a local path, file:// or s3:// URI."""
    if image:
        return image
    if not image_uri:
        raise ImageDecodeError("row has neither image bytes nor image_uri")
    if image_uri.startswith("s3://"):
        try:
            return storage.read_bytes(image_uri)
        except FileNotFoundError:
            raise ImageDecodeError(f"image object not found: {image_uri}") from None
    path = Path(image_uri.removeprefix("file://"))
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError(f"image file not found: {image_uri}") from None
    except PermissionError:
        raise ImageDecodeError(f"image file not readable (permission denied): {image_uri}") from None
    except IsADirectoryError:
        raise ImageDecodeError(f"image_uri is a directory: {image_uri}") from None


def load_image(
    image: bytes | None, image_uri: str | None, max_pixels: int = DEFAULT_MAX_PIXELS, alpha: AlphaMode = "white"
) -> Image.Image:
    """A row's image (inline bytes, else its local file) decoded by `decode_image`'s rules; ImageDecodeError if not."""
    return decode_image(load_image_bytes(image, image_uri), max_pixels=max_pixels, alpha=alpha)
