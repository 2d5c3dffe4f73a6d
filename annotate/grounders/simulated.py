"""`partsworld` grounder: boxes from PartsWorld's truth, with seeded box noise.

Each description is matched to the true region with the same text, or else to the true region sharing the
most words with it (as a detector keyed on "wings" boxes the wings whatever colour the text claims), with the
score scaled by that word overlap. Noise knobs: `jitter` (std of each edge, as a fraction of the box size),
`miss_prob` (a true box is not found), `spurious_prob` (per description, an extra box at a random place).
Truth boxes are normalised to the original image, so the output does not depend on the rendered resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from grainclip.annotate.base import Grounder
from grainclip.annotate.grounders.common import select_regions
from grainclip.annotate.partsworld_truth import TruthOptions, TruthRecord, TruthReplay, word_overlap
from grainclip.annotate.types import Grounding, GroundRequest


class PartsWorldGrounderOptions(TruthOptions):
    jitter: float = Field(0.0, ge=0.0, le=1.0)
    miss_prob: float = Field(0.0, ge=0.0, le=1.0)
    spurious_prob: float = Field(0.0, ge=0.0, le=1.0)
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="Scores of true boxes are uniform in [min_score, 1].")


class PartsWorldGrounder(TruthReplay, Grounder):
    options_model = PartsWorldGrounderOptions

    def ground(self, requests: Sequence[GroundRequest]) -> list[Grounding]:
        return self.replay(requests, "ground", self._ground_one, Grounding.failed)

    def _ground_one(self, request: GroundRequest, record: TruthRecord, rng: np.random.Generator) -> Grounding:
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
