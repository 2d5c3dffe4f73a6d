"""The contract between models and their consumers (evaluator, trainer hooks), free of any training code.

A zero-shot model embeds images and texts into one space. A GRAIN model additionally returns region
embeddings with boxes. The evaluator programs against these protocols only, so plain open_clip models and
GRAIN checkpoints go through the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch
    from PIL import Image


@dataclass
class RegionOutput:
    """Per-image region predictions of a GRAIN model.

    embeddings: (B, Q, D) region embeddings (L2-normalised when requested).
    boxes: (B, Q, 4) normalised xyxy boxes in [0, 1] of the model's input frame.
    objectness: (B, Q) probability that a query holds a real region, or None if the model has no such head.
    image: (B, D) the global image embedding from the same forward pass (normalised like `embeddings`), or
        None; a model that returns it spares the evaluator a second pass through the backbone.
    """

    embeddings: torch.Tensor
    boxes: torch.Tensor
    objectness: torch.Tensor | None = None
    image: torch.Tensor | None = None


@runtime_checkable
class ZeroShotModel(Protocol):
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor: ...


@runtime_checkable
class RegionModel(ZeroShotModel, Protocol):
    def encode_regions(self, images: torch.Tensor, normalize: bool = False) -> RegionOutput: ...


def input_side(size: int | Sequence[int]) -> int:
    """The side of a model's square image input, from an open_clip preprocess config's `size` (int or (h, w))."""
    return int(size if isinstance(size, int) else size[0])


@dataclass
class LoadedModel:
    """What a loader hands to the evaluator: the model, its eval image transform and its tokenizer.

    `image_size` (the input side, None if unknown) sizes the evaluator's default loader workers.
    """

    model: ZeroShotModel
    preprocess: Callable[[Image.Image], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]
    kind: Literal["grain", "clip"]
    name: str
    image_size: int | None = None
