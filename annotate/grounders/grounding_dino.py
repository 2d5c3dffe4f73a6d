"""`grounding-dino` grounder: transformers' GroundingDinoForObjectDetection (default grounding-dino-tiny).

Images and prompts are batched together: the image processor pads the batch and passes a pixel mask, and
predicted boxes are fractions of each image's own (unpadded, aspect-preserving resized) frame, so they map
to the original image unchanged (see grounders/common.py). As in the original implementation, the padding of
a mixed-size batch can shift scores and boxes slightly; images of one size give the same result alone or
batched.
"""

from __future__ import annotations

import numpy as np

from grainclip.annotate.grounders.phrases import PhraseGrounder
from grainclip.config.annotate import GrounderConfig


class GroundingDinoGrounder(PhraseGrounder):
    default_model = "IDEA-Research/grounding-dino-tiny"

    def __init__(self, config: GrounderConfig) -> None:
        super().__init__(config)
        from transformers import AutoProcessor, GroundingDinoForObjectDetection

        self.processor = AutoProcessor.from_pretrained(self.model_id)
        self.tokenizer = self.processor.tokenizer
        self.model = GroundingDinoForObjectDetection.from_pretrained(self.model_id).to(self.device).eval()
        self.max_text_len = int(self.model.config.max_text_len)

    def _encode(self, images: list, texts: list[str]) -> tuple[dict, np.ndarray]:
        pixels = self.processor.image_processor(images=images, return_tensors="pt")
        text = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.max_text_len,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = text.pop("offset_mapping").numpy()
        return {**pixels, **text}, offsets

    def _forward(self, encoded: tuple[dict, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        inputs, offsets = encoded
        with torch.inference_mode():
            outputs = self.model(**{k: v.to(self.device) for k, v in inputs.items()})
        tokens = offsets.shape[1]  # logits are padded to max_text_len; keep the real token positions
        probs = outputs.logits[:, :, :tokens].sigmoid().float().cpu().numpy()
        return probs, outputs.pred_boxes.float().cpu().numpy(), offsets
