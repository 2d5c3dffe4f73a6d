"""Evaluator metrics against hand-computed cases: ties, k larger than the class count, one class, retrieval
with shared captions, grounding."""

from __future__ import annotations

import math

import numpy as np
import pytest

from grainclip.evaluate.metrics import (
    classification_metrics,
    grounding_metrics,
    mean_per_class_recall,
    retrieval_metrics,
    topk_accuracy,
    topk_hits,
)

# 4 images, 3 classes. Hand ranks of the true class: image0 1st, image1 2nd, image2 3rd, image3 tied for 1st.
SCORES = np.array(
    [
        [0.9, 0.1, 0.0],  # label 0: rank 1
        [0.5, 0.4, 0.1],  # label 1: rank 2
        [0.3, 0.2, 0.1],  # label 2: rank 3
        [0.7, 0.7, 0.2],  # label 1: tied with class 0 for first
    ]
)
LABELS = np.array([0, 1, 2, 1])


def test_topk_hand_computed():
    assert topk_hits(SCORES, LABELS, 1).tolist() == [True, False, False, False]
    assert topk_hits(SCORES, LABELS, 2).tolist() == [True, True, False, True]
    assert topk_accuracy(SCORES, LABELS, 1) == pytest.approx(1 / 4)
    assert topk_accuracy(SCORES, LABELS, 2) == pytest.approx(3 / 4)
    assert topk_accuracy(SCORES, LABELS, 3) == pytest.approx(1.0)


def test_ties_count_against_the_model():
    # A constant model must not be credited by a tie-break in favour of the first class.
    constant = np.zeros((3, 3))
    assert topk_accuracy(constant, np.array([0, 1, 2]), 1) == 0.0
    assert topk_accuracy(constant, np.array([0, 1, 2]), 2) == 0.0
    assert topk_accuracy(constant, np.array([0, 1, 2]), 3) == 1.0


def test_k_larger_than_number_of_classes_means_all_classes():
    assert topk_accuracy(SCORES, LABELS, 5) == 1.0
    assert classification_metrics(SCORES, LABELS)["top5"] == 1.0


def test_one_class_is_always_right():
    scores = np.array([[0.1], [-3.0], [7.0]])
    metrics = classification_metrics(scores, np.zeros(3, dtype=int))
    assert metrics["top1"] == metrics["top5"] == metrics["mean_per_class_recall"] == 1.0
    assert metrics["n_images"] == 3


def test_mean_per_class_recall_weights_classes_equally():
    # class 0: 1 image, right; class 1: 2 images, both wrong (image1 rank 2, image3 tie); class 2: wrong.
    assert mean_per_class_recall(SCORES, LABELS) == pytest.approx((1.0 + 0.0 + 0.0) / 3)
    # Unbalanced: class 0 has three right images, class 1 one wrong -> accuracy 3/4, per-class recall 1/2.
    scores = np.array([[1.0, 0.0]] * 4)
    labels = np.array([0, 0, 0, 1])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(0.75)
    assert mean_per_class_recall(scores, labels) == pytest.approx(0.5)


def test_classes_without_images_are_not_averaged():
    scores = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert mean_per_class_recall(scores, np.array([0, 1])) == 1.0  # class 2 has no image: not a zero


def test_bad_shapes_rejected():
    with pytest.raises(ValueError, match="scores must be"):
        topk_hits(np.zeros(3), np.zeros(3, dtype=int), 1)
    with pytest.raises(ValueError, match="k must be"):
        topk_hits(SCORES, LABELS, 0)


def _unit(*rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_retrieval_hand_computed():
    images = _unit([1, 0], [0, 1], [1, 1])
    texts = _unit([1, 0.1], [0.1, 1], [-1, 0])
    # image->text: img0 ranks its own t0 first, img1 its own t1 first, img2 its own t2 last (3rd of 3).
    # text->image: t0 -> img0 first; t1 -> img1 first; t2 scores img2 -0.71 but img1 0.0 -> img2 is 2nd.
    metrics = retrieval_metrics(images, texts, np.array([0, 1, 2]), ks=(1, 2, 3))
    assert metrics["image_to_text_R@1"] == pytest.approx(2 / 3)
    assert metrics["image_to_text_R@2"] == pytest.approx(2 / 3)
    assert metrics["image_to_text_R@3"] == pytest.approx(1.0)
    assert metrics["text_to_image_R@1"] == pytest.approx(2 / 3)
    assert metrics["text_to_image_R@2"] == pytest.approx(1.0)
    assert metrics["n_images"] == 3 and metrics["n_texts"] == 3


def test_retrieval_shared_caption_is_correct_for_every_image_with_it():
    # Two images share caption 0; for text 0 either image is a hit, and each image's own text is text 0.
    images = _unit([1, 0], [0.9, 0.1], [0, 1])
    texts = _unit([0.95, 0.05], [0, 1])
    metrics = retrieval_metrics(images, texts, np.array([0, 0, 1]), ks=(1,))
    assert metrics["image_to_text_R@1"] == 1.0
    assert metrics["text_to_image_R@1"] == 1.0


def test_retrieval_is_the_same_in_chunks():
    rng = np.random.default_rng(0)
    images, texts = rng.normal(size=(50, 8)), rng.normal(size=(20, 8))
    image_text = rng.integers(0, 20, size=50)
    image_text[:20] = np.arange(20)  # every text has an image
    assert retrieval_metrics(images, texts, image_text, chunk=7) == retrieval_metrics(
        images, texts, image_text, chunk=1000
    )


def test_grounding_metrics():
    metrics = grounding_metrics(np.array([0.5, 0.49, 1.0, 0.0]))
    assert metrics["recall@iou0.5"] == pytest.approx(0.5)
    assert metrics["mean_iou"] == pytest.approx(1.99 / 4)
    assert metrics["n_descriptions"] == 4
    empty = grounding_metrics(np.array([]))
    assert math.isnan(empty["mean_iou"]) and empty["n_descriptions"] == 0
