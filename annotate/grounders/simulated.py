"""`partsworld` grounder: boxes from PartsWorld's truth, with seeded box noise.

Each description is matched to the true region with the same text, or else to the true region sharing the
most words with it (as a detector keyed on "wings" boxes the wings whatever colour the text claims), with the
score scaled by that word overlap. Noise knobs: `jitter` (std of each edge, as a fraction of the box size),
`miss_prob` (a true box is not found), `spurious_prob` (per description, an extra box at a random place).
Truth boxes are normalised to the original image, so the output does not depend on the rendered resolution.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from grainclip.annotate.base import Grounder
from grainclip.annotate.grounders.common import select_regions
from grainclip.annotate.partsworld_truth import TruthIndex, TruthRecord, rng_for, word_overlap
from grainclip.annotate.types import Grounding, GroundRequest
from grainclip.config.annotate import GrounderConfig
from grainclip.config.base import ConfigModel, parse_config


class PartsWorldGrounderOptions(ConfigModel):
    truth: Path = Field(description="PartsWorld dataset dir (or its truth dir) holding annotations Parquet.")
    jitter: float = Field(0.0, ge=0.0, le=1.0)
    miss_prob: float = Field(0.0, ge=0.0, le=1.0)
    spurious_prob: float = Field(0.0, ge=0.0, le=1.0)
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="Scores of true boxes are uniform in [min_score, 1].")
    seed: int = 0


class PartsWorldGrounder(Grounder):
    simulated = True

    def __init__(self, config: GrounderConfig) -> None:
        super().__init__(config)
        self.options = parse_config(config.options, PartsWorldGrounderOptions, source="grounder.options (partsworld)")
        self.truth = TruthIndex(self.options.truth)

    def ground(self, requests: Sequence[GroundRequest]) -> list[Grounding]:
        return [self._ground_one(request) for request in requests]

    def _ground_one(self, request: GroundRequest) -> Grounding:
        record = self.truth.get(request.image_id)
        if record is None:
            return Grounding.failed(
                f"image_id {request.image_id!r} is not in the PartsWorld truth at {self.truth.path}"
            )
        rng = rng_for(self.options.seed, "ground", request.image_id)
        boxes, scores, labels = [], [], []
        for label, text in enumerate(request.descriptions):
            for box, score in self._noisy_boxes(record, text, rng):
                boxes.append(box)
                scores.append(score)
                labels.append(label)
        regions = select_regions(
            request.descriptions,
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
            np.asarray(scores, dtype=np.float32),
            np.asarray(labels, dtype=np.int64),
            self.config,
        )
        return Grounding.from_regions(regions)

    def _noisy_boxes(self, record: TruthRecord, text: str, rng: np.random.Generator) -> list[tuple[np.ndarray, float]]:
        opts = self.options
        overlaps = np.asarray([word_overlap(text, t) for t in record.region_texts], dtype=np.float32)
        found: list[tuple[np.ndarray, float]] = []
        if overlaps.size and overlaps.max() > 0:
            best = overlaps.max()
            for box in record.region_boxes[overlaps == best]:
                miss, score, noise = rng.random(), rng.uniform(opts.min_score, 1.0), rng.normal(size=4)
                if miss < opts.miss_prob:
                    continue
                size = np.array([box[2] - box[0], box[3] - box[1]] * 2, dtype=np.float32)
                found.append((box + opts.jitter * noise * size, float(score * best)))
        if rng.random() < opts.spurious_prob:
            centre, half = rng.uniform(0.1, 0.9, size=2), rng.uniform(0.03, 0.25, size=2)
            found.append((np.concatenate([centre - half, centre + half]), float(rng.uniform(opts.min_score, 1.0))))
        return found

    def info(self) -> dict[str, Any]:
        return {**super().info(), "truth": str(self.options.truth), **self.options.model_dump(exclude={"truth"})}
