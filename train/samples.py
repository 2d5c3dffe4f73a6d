"""Turn one annotations row into one training sample of fixed-shape arrays, or say why the row is skipped.

Rules (docs/design.md, "Training data and the pitfalls avoided", says which mistakes they rule out):
- Only rows with status ok / no_regions train; other statuses, undecodable or missing images and rows
  without any caption are skipped with a reason (counted by the caller, never raised).
- Boxes are normalised xyxy of the original (EXIF-rotated) image. Regions with empty text or non-finite
  boxes are dropped; boxes are clipped to the image, every augmentation moves them with the pixels
  (torchvision.transforms.v2), and boxes that become degenerate are dropped TOGETHER with their text.
- The highest-scoring `max_regions` regions are kept and padded, with a mask, to a fixed count.
- Randomness (caption choice, crop, flip) is a pure function of (seed, epoch, image_id): the same row gets
  the same sample on any worker, rank or restart, which makes resumed and distributed runs exact.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from grainclip.config.train import DataConfig
from grainclip.images import ImageDecodeError, decode_image, load_image_bytes
from grainclip.schema import Status

TRAINABLE_STATUSES = frozenset({Status.OK.value, Status.NO_REGIONS.value})
SkipReason = Literal["status", "image", "caption"]  # why a row produced no sample
SKIP_REASONS: tuple[SkipReason, ...] = get_args(SkipReason)
SKIP_KEYS = tuple(f"skipped_{reason}" for reason in SKIP_REASONS)

TOKEN_CACHE_SIZE = 100_000  # distinct texts kept tokenised per builder (a few MB)

Sample = dict[str, np.ndarray]


@dataclass(frozen=True)
class Skipped:
    """A row that produced no sample, and why: the loaders count it, training never fails on it."""

    reason: SkipReason

    @property
    def key(self) -> str:
        """The sample column (and metric) that counts this reason."""
        return f"skipped_{self.reason}"


class SkipTally:
    """Rows skipped since the last sample. Loaders carry nothing but sample columns (a DataLoader batch, a Ray
    Data block), so the counts ride on the next sample that is built."""

    def __init__(self) -> None:
        self.counts = dict.fromkeys(SKIP_KEYS, 0)

    @property
    def rows(self) -> int:
        return sum(self.counts.values())

    def add(self, skipped: Skipped) -> None:
        self.counts[skipped.key] += 1

    def stamp(self, sample: Sample) -> Sample:
        """Add the pending counts onto `sample` (onto counts it may carry already) and start again from zero."""
        for key, count in self.counts.items():
            sample[key] = np.int64(sample.get(key, 0) + count)
        self.counts = dict.fromkeys(SKIP_KEYS, 0)
        return sample


def text_id(text: str) -> int:
    """A stable 63-bit id of a string (same in every process), used to find identical texts in a batch."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def sample_seed(seed: int, epoch: int, image_id: str) -> int:
    return text_id(f"{seed}/{epoch}/{image_id}")


class SampleBuilder:
    """Callable: (row dict, epoch) -> Sample, or Skipped with the reason."""

    def __init__(
        self,
        config: DataConfig,
        image_size: int,
        tokenizer: Callable[[list[str]], torch.Tensor],
        with_regions: bool,
        seed: int,
        interpolation: str = "bicubic",
    ) -> None:
        self.config = config
        self.image_size = image_size
        self.tokenizer = tokenizer
        self.with_regions = with_regions
        self.seed = seed
        mode = InterpolationMode(interpolation)
        size = (image_size, image_size)
        steps: list[v2.Transform] = [
            v2.RandomResizedCrop(size, scale=config.crop_scale, interpolation=mode, antialias=True)
            if config.random_resized_crop
            else v2.Resize(size, interpolation=mode, antialias=True)
        ]
        if config.hflip:
            steps.append(v2.RandomHorizontalFlip())
        steps += [v2.PILToTensor(), v2.SanitizeBoundingBoxes(min_size=config.min_box_pixels)]
        self.transform = v2.Compose(steps)
        self.random = config.random_resized_crop or config.hflip
        # Descriptions repeat across images ("red crest"); tokenising (ftfy + BPE) costs more than decoding.
        self.token_cache: dict[str, np.ndarray] = {}

    def tokens(self, text: str) -> np.ndarray:
        cached = self.token_cache.get(text)
        if cached is None:
            if len(self.token_cache) >= TOKEN_CACHE_SIZE:
                self.token_cache.clear()
            cached = self.token_cache[text] = self.tokenizer([text])[0].numpy()
        return cached

    def __call__(self, row: dict[str, Any], epoch: int) -> Sample | Skipped:
        if row.get("status") not in TRAINABLE_STATUSES:
            return Skipped("status")
        try:
            image = decode_image(
                load_image_bytes(row.get("image"), row.get("image_uri")), alpha=self.config.image_alpha
            )
        except ImageDecodeError:
            return Skipped("image")
        rng_seed = sample_seed(self.seed, epoch, str(row["image_id"]))
        caption = self.pick_caption(row, np.random.default_rng(rng_seed))
        if caption is None:
            return Skipped("caption")
        texts, boxes, dropped, truncated = self.clean_regions(row.get("regions") or [], image.width, image.height)
        inputs = {
            "image": image,
            "boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(image.height, image.width)),
            "labels": torch.arange(len(texts)),
        }
        if self.random:
            with torch.random.fork_rng(devices=[]):  # torchvision draws from torch's global RNG: keep it untouched
                torch.default_generator.manual_seed(rng_seed)  # CPU only: torch.manual_seed also seeds CUDA (slow)
                out = self.transform(inputs)
        else:
            out = self.transform(inputs)
        kept = [texts[i] for i in out["labels"].tolist()]
        dropped += len(texts) - len(kept)
        tokens = np.stack([self.tokens(text) for text in ([caption, *kept] if self.with_regions else [caption])])
        sample: Sample = {
            "image": out["image"].numpy(),
            "caption_tokens": tokens[0],
            "caption_ids": np.int64(text_id(caption)),
            "regions_dropped": np.int64(dropped),
            "regions_truncated": np.int64(truncated),
        }
        if self.with_regions:
            sample.update(self.pad_regions(tokens[1:], out["boxes"], kept))
        return sample

    def pick_caption(self, row: dict[str, Any], rng: np.random.Generator) -> str | None:
        """Alt-text or LLM caption with probability llm_caption_prob; the other one if the pick is empty."""
        alt, llm = (row.get("caption") or "").strip(), (row.get("llm_caption") or "").strip()
        first, second = (llm, alt) if rng.random() < self.config.llm_caption_prob else (alt, llm)
        return first or second or None

    def clean_regions(self, regions: list[dict], width: int, height: int) -> tuple[list[str], torch.Tensor, int, int]:
        """Valid regions as (texts, pixel xyxy boxes (N, 4)), best score first; plus dropped/truncated counts."""
        valid = []
        for region in regions:
            text = (region.get("text") or "").strip()
            box = region.get("box")
            score = region.get("score")
            score = 1.0 if score is None or not math.isfinite(score) else float(score)
            if not text or box is None or len(box) != 4 or not all(v is not None and math.isfinite(v) for v in box):
                continue
            if score < self.config.min_region_score:
                continue
            box = np.clip(np.asarray(box, dtype=np.float32), 0.0, 1.0)
            if box[2] <= box[0] or box[3] <= box[1]:  # degenerate, or entirely outside the image
                continue
            valid.append((score, text, box))
        valid.sort(key=lambda item: -item[0])  # stable: ties keep annotation order
        kept = valid[: self.config.max_regions]
        scale = np.array([width, height, width, height], dtype=np.float32)
        boxes = torch.from_numpy(np.stack([box for _, _, box in kept]) * scale) if kept else torch.zeros(0, 4)
        return [text for _, text, _ in kept], boxes, len(regions) - len(valid), len(valid) - len(kept)

    def pad_regions(self, tokens: np.ndarray, boxes: torch.Tensor, texts: list[str]) -> Sample:
        slots, count = self.config.max_regions, len(texts)
        padded_boxes = np.zeros((slots, 4), dtype=np.float32)
        padded_boxes[:count] = boxes.numpy() / self.image_size
        padded_tokens = np.zeros((slots, tokens.shape[1]), dtype=np.int64)
        padded_tokens[:count] = tokens
        ids = np.zeros(slots, dtype=np.int64)
        ids[:count] = [text_id(text) for text in texts]
        return {
            "boxes": padded_boxes,
            "box_mask": np.arange(slots) < count,
            "description_tokens": padded_tokens,
            "description_ids": ids,
        }
