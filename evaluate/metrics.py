"""Metrics on score matrices, in NumPy: classification top-k and per-class recall, retrieval recall@K, grounding.

Ties count against the model everywhere: an item is within the top k only if fewer than k competitors score
at least as high as it does. A model that gives every class the same score therefore gets top-1 = 0, not
credit for an arbitrary tie-break (argmax picks index 0, which would reward the class that happens to be
listed first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N,) bool: the true class is among the top k (k larger than the number of classes means all classes)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (N, C) and labels (N,), got {scores.shape} and {labels.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    true_scores = scores[np.arange(len(labels)), labels]
    competitors_at_least = (scores >= true_scores[:, None]).sum(axis=1) - 1  # minus the true class itself
    return competitors_at_least < k


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    hits = topk_hits(scores, labels, k)
    return float(hits.mean()) if hits.size else float("nan")


def mean_per_class_recall(scores: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 recall averaged over the classes that have images (a class with none has no recall to average)."""
    hits = topk_hits(scores, labels, 1)
    labels = np.asarray(labels)
    present = np.unique(labels)
    if not present.size:
        return float("nan")
    return float(np.mean([hits[labels == c].mean() for c in present]))


def classification_metrics(scores: np.ndarray, labels: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """{'top1', 'top5', 'mean_per_class_recall', 'n_images'} for a split's (N, C) scores."""
    metrics: dict[str, float] = {f"top{k}": topk_accuracy(scores, labels, k) for k in ks}
    metrics["mean_per_class_recall"] = mean_per_class_recall(scores, labels)
    metrics["n_images"] = int(len(labels))
    return metrics


def retrieval_metrics(
    image_embeddings: np.ndarray,
    text_embeddings: np.ndarray,
    image_text: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """Image->text and text->image recall@K with normalised embeddings.

    `image_text[i]` is the index of image i's caption among the DISTINCT caption texts, so images sharing a
    caption string are all correct answers for it (and it for each of them) rather than false negatives.
    Similarities are computed in row chunks so memory is (chunk x texts), not (images x texts).
    """
    images = np.asarray(image_embeddings, dtype=np.float32)
    texts = np.asarray(text_embeddings, dtype=np.float32)
    image_text = np.asarray(image_text, dtype=np.int64)
    i2t_ranks = np.empty(len(images), dtype=np.int64)
    for start in range(0, len(images), chunk):
        sims = images[start : start + chunk] @ texts.T
        own = sims[np.arange(len(sims)), image_text[start : start + chunk]]
        i2t_ranks[start : start + chunk] = (sims >= own[:, None]).sum(axis=1) - 1
    t2i_ranks = np.empty(len(texts), dtype=np.int64)
    for start in range(0, len(texts), chunk):
        sims = texts[start : start + chunk] @ images.T  # (t, N)
        positive = image_text[None, :] == np.arange(start, start + len(sims))[:, None]
        best_positive = np.where(positive, sims, -np.inf).max(axis=1)
        t2i_ranks[start : start + chunk] = (np.where(positive, -np.inf, sims) >= best_positive[:, None]).sum(axis=1)
    metrics: dict[str, float] = {}
    for k in ks:
        metrics[f"image_to_text_R@{k}"] = float((i2t_ranks < k).mean())
    for k in ks:
        metrics[f"text_to_image_R@{k}"] = float((t2i_ranks < k).mean())
    metrics["n_images"] = int(len(images))
    metrics["n_texts"] = int(len(texts))
    return metrics


def grounding_metrics(ious: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Recall@IoU>=threshold and mean IoU over grounded descriptions (one IoU per image x description)."""
    ious = np.asarray(ious, dtype=np.float64)
    return {
        f"recall@iou{threshold:g}": float((ious >= threshold).mean()) if ious.size else float("nan"),
        "mean_iou": float(ious.mean()) if ious.size else float("nan"),
        "n_descriptions": int(ious.size),
    }
