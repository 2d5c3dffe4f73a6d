"""Where the model's input frame lies in the original image, so predicted boxes can be compared with truth.

A model predicts boxes normalised to the tensor it was given, but annotation boxes are normalised to the
ORIGINAL image. CLIP's usual eval transform resizes the short side and centre-crops, which cuts the long
side of a non-square image. We replay the preprocess pipeline's geometric steps on the image size to find
that window. Recognised steps: torchvision Resize, CenterCrop, open_clip's ResizeKeepRatio and
CenterCropOrPad; colour/tensor steps are ignored. An unrecognised step with a size is reported once and
treated as leaving the frame unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np

log = logging.getLogger(__name__)

_IGNORED = {
    "ToTensor",
    "Normalize",
    "PILToTensor",
    "ConvertImageDtype",
    "Lambda",
    "_convert_to_rgb",
    "ToImage",
    "ToDtype",
}
_warned: set[str] = set()


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    """torchvision sizes are (h, w) or a single int."""
    if isinstance(size, int):
        return size, size
    size = tuple(size)
    return (size[0], size[0]) if len(size) == 1 else (size[0], size[1])


def _steps(preprocess: Callable) -> list[object]:
    return list(getattr(preprocess, "transforms", [preprocess]))


def input_window(preprocess: Callable, width: int, height: int) -> np.ndarray:
    """(4,) normalised xyxy of the original image that the model input covers (may exceed [0,1] if padded)."""
    w, h = float(width), float(height)  # size of the current frame
    x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)  # the current frame, in ORIGINAL pixels
    for step in _steps(preprocess):
        kind = type(step).__name__
        if kind == "Resize":
            size = step.size
            if isinstance(size, int) or (isinstance(size, Sequence) and len(size) == 1):
                short = size if isinstance(size, int) else size[0]
                scale = short / min(w, h)
                new_w, new_h = (short, h * scale) if w <= h else (w * scale, short)
            else:
                new_h, new_w = size
            w, h = float(new_w), float(new_h)
        elif kind == "ResizeKeepRatio":
            target_h, target_w = step.size
            ratio_h, ratio_w = h / target_h, w / target_w
            ratio = max(ratio_h, ratio_w) * step.longest + min(ratio_h, ratio_w) * (1.0 - step.longest)
            w, h = w / ratio, h / ratio
        elif kind in ("CenterCrop", "CenterCropOrPad"):
            crop_h, crop_w = _pair(step.size)
            sx, sy = (x1 - x0) / w, (y1 - y0) / h  # original pixels per current pixel
            left, top = (w - crop_w) / 2.0, (h - crop_h) / 2.0
            x0, y0 = x0 + left * sx, y0 + top * sy
            x1, y1 = x0 + crop_w * sx, y0 + crop_h * sy
            w, h = float(crop_w), float(crop_h)
        elif kind not in _IGNORED and hasattr(step, "size") and kind not in _warned:
            _warned.add(kind)
            log.warning("preprocess step %s is not understood; assuming it keeps the image frame for boxes", kind)
    return np.array([x0 / width, y0 / height, x1 / width, y1 / height], dtype=np.float32)


def to_original_frame(boxes: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Boxes normalised to the model input -> normalised to the original image, clipped to [0, 1]."""
    boxes = np.asarray(boxes, dtype=np.float32)
    size = np.array([window[2] - window[0], window[3] - window[1]] * 2, dtype=np.float32)
    offset = np.array([window[0], window[1]] * 2, dtype=np.float32)
    return np.clip(offset + boxes * size, 0.0, 1.0)
