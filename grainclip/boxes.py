"""Box utilities for annotation time, in NumPy so annotation nodes need no torch/torchvision.

Convention everywhere in grainclip: boxes are float arrays of shape (..., 4). `xyxy` is (x1, y1, x2, y2);
`cxcywh` is (centre x, centre y, width, height). Normalised boxes are fractions of the ORIGINAL image's
width and height, in [0, 1]. The trainer's differentiable versions (GIoU loss, conversions on tensors) come
from `torchvision.ops` directly.
"""

from __future__ import annotations

import numpy as np


def xyxy_to_cxcywh(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32)
    x1, y1, x2, y2 = np.moveaxis(boxes, -1, 0)
    return np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], axis=-1)


def cxcywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32)
    cx, cy, w, h = np.moveaxis(boxes, -1, 0)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def normalize(boxes_px: np.ndarray, width: int, height: int) -> np.ndarray:
    """Pixel xyxy in a (width, height) frame -> normalised xyxy clipped to [0, 1]."""
    scale = np.array([width, height, width, height], dtype=np.float32)
    return clip01(np.asarray(boxes_px, dtype=np.float32) / scale)


def denormalize(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    scale = np.array([width, height, width, height], dtype=np.float32)
    return np.asarray(boxes, dtype=np.float32) * scale


def clip01(boxes: np.ndarray) -> np.ndarray:
    return np.clip(np.asarray(boxes, dtype=np.float32), 0.0, 1.0)


def area(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32)
    return np.clip(boxes[..., 2] - boxes[..., 0], 0, None) * np.clip(boxes[..., 3] - boxes[..., 1], 0, None)


def is_valid(boxes: np.ndarray, min_size: float = 1e-4) -> np.ndarray:
    """Finite boxes with positive width and height (degenerate boxes carry no location to learn)."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    safe = np.where(finite[:, None], boxes, 0.0)
    return finite & (safe[:, 2] - safe[:, 0] > min_size) & (safe[:, 3] - safe[:, 1] > min_size)


def _inter_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]
    return inter, area(a)[:, None] + area(b)[None, :] - inter


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: (N, 4) x (M, 4) -> (N, M)."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    inter, union = _inter_union(a, b)
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0).astype(np.float32)


def generalized_box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise GIoU (Rezatofighi et al. 2019) of xyxy boxes: (N, 4) x (M, 4) -> (N, M), in [-1, 1]."""
    a = np.asarray(a, dtype=np.float32).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float32).reshape(-1, 4)
    inter, union = _inter_union(a, b)
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    wh = np.clip(np.maximum(a[:, None, 2:], b[None, :, 2:]) - np.minimum(a[:, None, :2], b[None, :, :2]), 0, None)
    hull = wh[..., 0] * wh[..., 1]
    return (iou - np.where(hull > 0, (hull - union) / np.maximum(hull, 1e-12), 0.0)).astype(np.float32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, highest score first."""
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
    keep: list[int] = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        order = rest[box_iou(boxes[best], boxes[rest])[0] <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou_threshold: float) -> np.ndarray:
    """NMS within each group (e.g. per description) independently; kept indices sorted by score."""
    groups = np.asarray(groups)
    kept = [
        np.flatnonzero(groups == g)[nms(boxes[groups == g], scores[groups == g], iou_threshold)]
        for g in np.unique(groups)
    ]
    if not kept:
        return np.zeros(0, dtype=np.int64)
    keep = np.concatenate(kept)
    return keep[np.argsort(-np.asarray(scores)[keep], kind="stable")]
