"""What the training step consumes: a typed micro-batch, kept apart from the loaders' telemetry and cursors.

The loaders (data.py's DataLoader stream, ray_data.py's Ray Data pipeline) move samples as columns, so a
collated batch arrives as one dict holding the sample tensors, the data counters its rows carried (skipped
rows, dropped and truncated regions) and, in a single process, the resume cursors. `HostBatch.from_columns`
splits them at the source: the counters go to the loop's telemetry, the cursors stay with the stream
position, and only the sample tensors travel on, to the device, as a `TrainBatch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NotRequired, TypedDict

import torch

from grainclip.train.samples import SKIP_KEYS

COUNTER_KEYS = (*SKIP_KEYS, "regions_dropped", "regions_truncated")  # per-sample data counters, summed per batch
CURSOR_KEYS = ("shard", "cursor")  # where a sample sits in its shard's stream (single-process resume)


class TrainBatch(TypedDict):
    """One micro-batch on the training device. The region fields exist in `grain` mode only."""

    images: torch.Tensor  # (B, 3, H, W) float, normalised with the backbone's mean and std
    caption_tokens: torch.Tensor  # (B, L)
    caption_ids: torch.Tensor  # (B,) text_id of each caption: equal ids are equal strings
    boxes: NotRequired[torch.Tensor]  # (B, R, 4) normalised xyxy, zero where box_mask is False
    box_mask: NotRequired[torch.Tensor]  # (B, R) bool
    description_tokens: NotRequired[torch.Tensor]  # (B, R, L)
    description_ids: NotRequired[torch.Tensor]  # (B, R)
    unique_description_tokens: NotRequired[torch.Tensor]  # (U, L): each distinct description once
    unique_description_ids: NotRequired[torch.Tensor]  # (U,) sorted


@dataclass
class HostBatch:
    """A collated micro-batch as a batch source hands it over: sample tensors on the host (images uint8), and
    the data counters of its rows (plus the rows skipped before them), summed."""

    samples: dict[str, torch.Tensor]
    counts: dict[str, int]

    @classmethod
    def from_columns(cls, columns: dict[str, torch.Tensor]) -> HostBatch:
        """Split a loader's columns; resume cursors are dropped (the stream position has read them already)."""
        samples = {key: value for key, value in columns.items() if key not in COUNTER_KEYS and key not in CURSOR_KEYS}
        return cls(samples, {key: int(columns[key].sum()) for key in COUNTER_KEYS})

    @property
    def size(self) -> int:
        return self.samples["image"].shape[0]

    def to_device(self, device: torch.device, mean: torch.Tensor, std: torch.Tensor) -> TrainBatch:
        """Move to `device`, normalise the uint8 images, and add the distinct descriptions."""
        batch = {key: value.to(device, non_blocking=True) for key, value in self.samples.items()}
        batch["images"] = (batch.pop("image").float() / 255.0 - mean) / std
        if "box_mask" in batch:
            batch["box_mask"] = batch["box_mask"].bool()
            batch["unique_description_tokens"], batch["unique_description_ids"] = distinct_descriptions(
                batch["description_tokens"], batch["description_ids"], batch["box_mask"]
            )
        return TrainBatch(**batch)


def first_of_each(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(distinct ids sorted, position of each one's first copy in `ids`). Equal ids stand for equal texts, so the
    first copy represents them all: a batch encodes each description once, and L_rd keeps one column per text."""
    distinct, inverse = torch.unique(ids, return_inverse=True)
    first = torch.full_like(distinct, ids.numel()).scatter_reduce(
        0, inverse, torch.arange(ids.numel(), device=ids.device), reduce="amin"
    )
    return distinct, first


def distinct_descriptions(
    tokens: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct descriptions of a batch: (tokens (U, L), ids (U,) sorted), each text encoded once."""
    flat_ids, flat_tokens = ids[mask], tokens[mask]
    distinct, first = first_of_each(flat_ids)
    return flat_tokens[first], distinct
