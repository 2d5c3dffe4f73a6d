"""Downscale oversized images before a model's own preprocessing sees them.

Detector and VLM processors resize every image to a few hundred pixels anyway, but some do it expensively
at full size (OWLv2 pads a 12-megapixel photo to a 16-megapixel square and anti-alias filters it: minutes on a
CPU). Shrinking first, keeping the aspect ratio, gives the model the same input for a fraction of the work;
normalised boxes are fractions of the frame, so they hold for the original image.
"""

from __future__ import annotations

from PIL import Image


def fit_within(image: Image.Image, max_side: int) -> Image.Image:
    """`image` if its longer side is at most `max_side`, else an aspect-preserving downscaled copy."""
    longest = max(image.size)
    if longest <= max_side:
        return image
    scale = max_side / longest
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
