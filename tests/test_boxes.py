"""NumPy box ops used at annotation time, checked against hand computations and torchvision."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.ops as tvops

from grainclip import boxes


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.uniform(0, 0.6, size=(n, 2))
    wh = rng.uniform(0.05, 0.4, size=(n, 2))
    return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


def test_conversions_round_trip():
    b = np.array([[0.1, 0.2, 0.5, 0.6]], dtype=np.float32)
    c = boxes.xyxy_to_cxcywh(b)
    assert c.tolist()[0] == pytest.approx([0.3, 0.4, 0.4, 0.4])
    assert boxes.cxcywh_to_xyxy(c) == pytest.approx(b)


def test_normalize_is_relative_to_the_original_frame_and_clipped():
    px = np.array([[32, 24, 64, 48], [-5, 0, 70, 10]], dtype=np.float32)
    n = boxes.normalize(px, width=64, height=48)
    assert n[0].tolist() == pytest.approx([0.5, 0.5, 1.0, 1.0])
    assert n[1].tolist() == pytest.approx([0.0, 0.0, 1.0, 10 / 48])
    assert boxes.denormalize(n[:1], 64, 48) == pytest.approx(px[:1])


def test_iou_and_giou_match_hand_values_and_torchvision():
    a = np.array([[0, 0, 2, 2]], dtype=np.float32)
    b = np.array([[1, 1, 3, 3], [4, 4, 5, 5]], dtype=np.float32)
    assert boxes.box_iou(a, b)[0].tolist() == pytest.approx([1 / 7, 0.0])
    # hull of a and b[1] is 25, union 5 -> giou = 0 - 20/25
    assert boxes.generalized_box_iou(a, b)[0, 1] == pytest.approx(-0.8)
    rng = np.random.default_rng(0)
    x, y = random_boxes(rng, 7), random_boxes(rng, 5)
    assert boxes.box_iou(x, y) == pytest.approx(tvops.box_iou(torch.tensor(x), torch.tensor(y)).numpy(), abs=1e-6)
    assert boxes.generalized_box_iou(x, y) == pytest.approx(
        tvops.generalized_box_iou(torch.tensor(x), torch.tensor(y)).numpy(), abs=1e-6
    )


def test_nms_matches_torchvision_and_batched_is_per_group():
    rng = np.random.default_rng(1)
    b = random_boxes(rng, 30)
    s = rng.uniform(size=30).astype(np.float32)
    ours = boxes.nms(b, s, 0.3)
    ref = tvops.nms(torch.tensor(b), torch.tensor(s), 0.3).numpy()
    assert ours.tolist() == ref.tolist()
    groups = rng.integers(0, 3, size=30)
    ours_b = boxes.batched_nms(b, s, groups, 0.3)
    ref_b = tvops.batched_nms(torch.tensor(b), torch.tensor(s), torch.tensor(groups), 0.3).numpy()
    assert ours_b.tolist() == ref_b.tolist()
    assert boxes.batched_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0), 0.5).tolist() == []


def test_is_valid_drops_degenerate_and_non_finite_boxes():
    b = np.array([[0.1, 0.1, 0.2, 0.2], [0.3, 0.3, 0.3, 0.5], [np.nan, 0, 1, 1], [0.5, 0.5, 0.4, 0.6]])
    assert boxes.is_valid(b).tolist() == [True, False, False, False]
