"""Decoding the odd images of a real crawl: usable ones become RGB, broken ones a clear ImageDecodeError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from grainclip.images import ImageDecodeError, decode_image, load_image_bytes
from grainclip.testing.bad_images import bad_images

CORPUS = bad_images()


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_every_corpus_image_decodes_or_fails_clearly(name):
    data, expected = CORPUS[name]
    if expected == "ok":
        image = decode_image(data)
        assert image.mode == "RGB"
        assert image.size[0] >= 1 and image.size[1] >= 1
    else:
        with pytest.raises(ImageDecodeError) as info:
            decode_image(data)
        assert str(info.value)  # a reason, recorded as the row's error


def test_specific_conversions():
    assert decode_image(CORPUS["exif_rotated"][0]).size == (20, 40)  # EXIF orientation applied
    rgba = np.asarray(decode_image(CORPUS["rgba"][0]))
    assert rgba[0, 0].tolist() == [255, 255, 255] or rgba[0, 0].min() > 200  # alpha 0 -> white background
    gray16 = np.asarray(decode_image(CORPUS["gray_16bit_png"][0]))
    assert gray16.max() > 200, "16-bit values must be scaled into 8 bits, not clipped"


@pytest.mark.parametrize("name", ["rgba", "palette_transparency"])
def test_alpha_drop_reads_what_pil_convert_rgb_reads(name):
    data = CORPUS[name][0]
    with Image.open(io.BytesIO(data)) as image:
        expected = np.asarray(image.convert("RGB"))
    dropped, white = np.asarray(decode_image(data, alpha="drop")), np.asarray(decode_image(data))
    assert np.array_equal(dropped, expected)
    assert not np.array_equal(white, expected)  # the default composites the transparent pixels on white


def test_pixel_limit_is_configurable():
    with pytest.raises(ImageDecodeError, match="over the limit"):
        decode_image(CORPUS["bomb_header"][0])
    with pytest.raises(ImageDecodeError, match="over the limit of 100"):
        decode_image(CORPUS["rgb_png"][0], max_pixels=100)


def test_load_image_bytes_from_uri(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(CORPUS["rgb_png"][0])
    assert load_image_bytes(None, f"file://{path}") == CORPUS["rgb_png"][0]
    assert load_image_bytes(b"inline", str(path)) == b"inline"
    with pytest.raises(ImageDecodeError, match="not found"):
        load_image_bytes(None, str(tmp_path / "missing.png"))
    with pytest.raises(ImageDecodeError, match="neither"):
        load_image_bytes(None, None)
