"""`owlv2` grounder: transformers' Owlv2ForObjectDetection (default owlv2-base-patch16-ensemble, the paper's).

Every description is a text query; every (patch box, description) pair scoring above the threshold is a
candidate, so one box may ground two descriptions that name the same part. OWLv2 pads each image to a
square at the bottom/right before resizing: its boxes are fractions of that square and are mapped back to
the original frame (grounders/common.py: padded_square_to_original).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from grainclip.annotate.grounders.common import padded_square_to_original, select_regions
from grainclip.annotate.grounders.detector import DetectorGrounder
from grainclip.annotate.types import Grounding, GroundRequest
from grainclip.config.annotate import GrounderConfig


class Owlv2Grounder(DetectorGrounder):
    default_model = "google/owlv2-base-patch16-ensemble"

    def __init__(self, config: GrounderConfig) -> None:
        super().__init__(config)
        from transformers import AutoProcessor, Owlv2ForObjectDetection

        self.processor = AutoProcessor.from_pretrained(self.model_id)
        self.model = Owlv2ForObjectDetection.from_pretrained(self.model_id).to(self.device).eval()

    def _prepare(self, requests: Sequence[GroundRequest]) -> dict:
        return self.processor(
            text=[list(r.descriptions) for r in requests],
            images=[r.image for r in requests],
            truncation=True,  # queries longer than the text tower's context are cut, not an error
            return_tensors="pt",
        )

    def _run(self, requests: Sequence[GroundRequest], prepared: dict) -> list[Grounding]:
        import torch

        with torch.inference_mode():
            outputs = self.model(**{k: v.to(self.device) for k, v in prepared.items()})
        # The processor pads every image's query list to the longest in the batch with " " queries, which
        # the model does not mask: only the first len(descriptions) columns are real.
        probs = outputs.logits.sigmoid().float().cpu().numpy()  # (B, patches, max queries)
        pred_boxes = outputs.pred_boxes.float().cpu().numpy()  # (B, patches, 4) cxcywh of the padded square
        groundings = []
        for k, request in enumerate(requests):
            real = probs[k, :, : len(request.descriptions)]
            patches, labels = np.nonzero(real > self.config.box_threshold)
            boxes = padded_square_to_original(pred_boxes[k][patches], request.image.width, request.image.height)
            regions = select_regions(request.descriptions, boxes, real[patches, labels], labels, self.config)
            groundings.append(Grounding.from_regions(regions))
        return groundings
