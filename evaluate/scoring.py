"""Class scores for zero-shot classification: global (CLIP), global+descriptors, and GRAIN's region-aware mix.

grain = alpha * global + (1 - alpha) * region, where region[i, c] is the mean over class c's descriptors of
the best cosine similarity between that descriptor and any of image i's region embeddings.

Two choices on top of the paper's formula, both switchable:

* Scale (`standardize: split`). Global cosines (image vs a class prompt) and region cosines (a region vs a
  bare descriptor, maxed over regions, then averaged) spread over classes by different amounts, so a fixed
  alpha means different things for different models. Before mixing we centre each image's scores over
  classes (argmax-invariant) and divide by the spread over classes pooled over the whole split. Pooling,
  rather than a per-image z-score, keeps how confident an image is: with few classes a per-image z-score
  turns a near tie and a clear win into the same +-1. Only scores enter this, never labels.
  `standardize: none` is the plain paper formula.
  Either way alpha = 1 and alpha = 0 rank classes exactly like the pure global and pure region scores.
* Unmatched regions (`objectness_threshold`). A GRAIN model always emits Q regions, and queries that hold
  no object still produce embeddings that can win the max by chance. When the model reports objectness,
  regions below the threshold are left out of the max (an image with none above it keeps its single most
  object-like region). Models without an objectness head use every region.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from grainclip.model_api import RegionOutput


def valid_regions(regions: RegionOutput, threshold: float) -> torch.Tensor:
    """(B, Q) bool mask of regions that take part in the max over regions (on the embeddings' device)."""
    import torch

    objectness = regions.objectness
    if objectness is None:
        return torch.ones(regions.embeddings.shape[:2], dtype=torch.bool, device=regions.embeddings.device)
    mask = objectness >= threshold
    best = objectness.argmax(dim=1)
    mask[torch.arange(len(mask), device=mask.device), best] = True
    return mask


def region_descriptor_similarity(
    regions: RegionOutput, descriptor_embeddings: torch.Tensor, threshold: float
) -> torch.Tensor:
    """(B, M): for every image and descriptor, the best cosine over the image's valid regions."""
    import torch
    import torch.nn.functional as F

    embeddings = F.normalize(regions.embeddings.float(), dim=-1)
    sims = torch.einsum("bqd,md->bqm", embeddings, descriptor_embeddings.to(embeddings.device))
    mask = valid_regions(regions, threshold).to(sims.device)
    return sims.masked_fill(~mask[:, :, None], float("-inf")).amax(dim=1)


def region_scores(descriptor_similarity: torch.Tensor, descriptor_class: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, C): mean over each class's descriptors of the (B, M) best-region similarities."""
    import torch

    owner = descriptor_class.to(descriptor_similarity.device)
    counts = torch.bincount(owner, minlength=n_classes).clamp(min=1).to(descriptor_similarity.dtype)
    sums = torch.zeros(
        descriptor_similarity.shape[0], n_classes, dtype=descriptor_similarity.dtype, device=owner.device
    )
    return sums.index_add_(1, owner, descriptor_similarity) / counts


def standardize(scores: np.ndarray, how: str) -> np.ndarray:
    """Centre each row over classes and divide by the spread pooled over all rows (`split`), or leave as is."""
    scores = np.asarray(scores, dtype=np.float64)
    if how == "none":
        return scores
    if how != "split":
        raise ValueError(f"unknown standardization {how!r}; expected 'split' or 'none'")
    centred = scores - scores.mean(axis=1, keepdims=True)
    spread = float(np.sqrt(np.mean(centred**2))) if centred.size else 0.0
    return centred / spread if spread > 0 else centred


def grain_scores(global_scores: np.ndarray, region: np.ndarray, alpha: float, how: str) -> np.ndarray:
    """alpha * global + (1 - alpha) * region, each standardised over the split first unless how='none'."""
    return alpha * standardize(global_scores, how) + (1.0 - alpha) * standardize(region, how)
