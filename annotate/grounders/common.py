"""What every grounder does after its detector: threshold, per-description NMS, top-k, and frame conversions.

Detectors report boxes in different frames; each conversion to the ORIGINAL image's normalised xyxy frame
lives here as one small, unit-tested function, so the backends differ only in how they call their model.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from grainclip import boxes as box_ops
from grainclip.annotate.types import Region
from grainclip.config.annotate import GrounderConfig


def select_regions(
    texts: Sequence[str], boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, config: GrounderConfig
) -> list[Region]:
    """Keep the boxes a GRAIN annotation should hold, best first.

    `boxes` (N, 4) normalised xyxy of the original image, `scores` (N,), `labels` (N,) index into `texts`.
    Boxes are clipped to the image, degenerate ones and blank texts dropped, then score > box_threshold,
    NMS within each description, and the top `max_regions` overall.
    """
    boxes = box_ops.clip01(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    named = np.array([bool(text.strip()) for text in texts], dtype=bool)
    keep = box_ops.is_valid(boxes) & np.isfinite(scores) & (scores > config.box_threshold) & named[labels]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = box_ops.batched_nms(boxes, scores, labels, config.nms_iou)[: config.max_regions]
    return [Region(text=texts[labels[i]], box=tuple(float(v) for v in boxes[i]), score=float(scores[i])) for i in order]


def cxcywh_to_original(pred_boxes: np.ndarray) -> np.ndarray:
    """DETR-family output (Grounding DINO, groundingdino-py): cxcywh normalised to the unpadded input image.

    The input image is a resize of the original without cropping, so the same fractions hold for the
    original: only the box format changes. (Batch padding is masked and does not shift the frame.)
    """
    return box_ops.clip01(box_ops.cxcywh_to_xyxy(pred_boxes))


def padded_square_to_original(pred_boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """OWLv2 output: cxcywh normalised to a SQUARE made by padding the original at the bottom/right.

    The square's side is max(width, height) in original pixels, so a fraction f of the square is
    f * side / width of the original horizontally (and / height vertically).
    """
    side = float(max(width, height))
    scale = np.array([side / width, side / height, side / width, side / height], dtype=np.float32)
    return box_ops.clip01(box_ops.cxcywh_to_xyxy(pred_boxes) * scale)
