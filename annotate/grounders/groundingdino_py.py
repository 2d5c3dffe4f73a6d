"""`groundingdino-py` grounder: the original IDEA implementation and its `.pth` checkpoints.

groundingdino-py needs transformers<5, so it cannot run in the main environment: it runs where its own
environment is installed, which for the pipeline is a Ray actor with `runtime_env` (the class attribute,
from grainclip.envs) layered on the main one. `groundingdino` is imported only inside the class.

`model` is a folder holding the model's config (`*.py`, SLConfig format) and checkpoint (`*.pth`), or the
options name them. The model returns cxcywh boxes normalised to each image's unpadded frame (the same as
the transformers port), and the text side is shared with it (grounders/phrases.py). Images are batched
per transformed size: the model reads `.device` from its input, which only a stacked tensor has.
"""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from grainclip.annotate.grounders.phrases import PhraseGrounder
from grainclip.config.annotate import GrounderConfig
from grainclip.config.base import ConfigError, ConfigModel, parse_config
from grainclip.envs import groundingdino_runtime_env

log = logging.getLogger(__name__)

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


class GroundingDinoPyOptions(ConfigModel):
    config_file: Path | None = Field(None, description="SLConfig .py; default: the single *.py in `model`.")
    checkpoint: Path | None = Field(None, description="Checkpoint .pth; default: the single *.pth in `model`.")
    text_encoder: str | None = Field(None, description="Override text_encoder_type, e.g. a local BERT folder.")
    image_size: int = Field(800, gt=0, description="Shorter image side after resizing (the original uses 800).")
    max_size: int = Field(1333, gt=0, description="Cap on the longer side after resizing.")
    weights_only: bool = Field(
        True, description="torch.load(weights_only=...); false only for checkpoints you trust that pickle objects."
    )


def _single(folder: Path, pattern: str, option: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        raise ConfigError(f"grounder.options.{option}: expected exactly one {pattern} in {folder}, found {len(found)}")
    return found[0]


class GroundingDinoPyGrounder(PhraseGrounder):
    runtime_env = groundingdino_runtime_env()

    def __init__(self, config: GrounderConfig) -> None:
        super().__init__(config)
        import torch
        from groundingdino.datasets import transforms
        from groundingdino.models import build_model
        from groundingdino.util.misc import clean_state_dict
        from groundingdino.util.slconfig import SLConfig

        self.options = parse_config(
            config.options, GroundingDinoPyOptions, source="grounder.options (groundingdino-py)"
        )
        folder = Path(config.model)
        self.config_file = self.options.config_file or _single(folder, "*.py", "config_file")
        self.checkpoint = self.options.checkpoint or _single(folder, "*.pth", "checkpoint")
        args = SLConfig.fromfile(str(self.config_file))
        args.device = str(self.device)
        if self.options.text_encoder:
            args.text_encoder_type = self.options.text_encoder
        model = build_model(args)
        state = torch.load(self.checkpoint, map_location="cpu", weights_only=self.options.weights_only)
        missing, unexpected = model.load_state_dict(clean_state_dict(state.get("model", state)), strict=False)
        if len(missing) > len(model.state_dict()) // 2:  # not this model's checkpoint at all
            raise ConfigError(
                f"checkpoint {self.checkpoint} does not match {self.config_file}: {len(missing)} weights missing"
            )
        if missing or unexpected:  # the official checkpoints carry a few unused keys (e.g. label_enc.weight)
            log.warning(
                "checkpoint %s: %d missing, %d unexpected weights", self.checkpoint, len(missing), len(unexpected)
            )
        self.model = model.to(self.device).eval()
        # A copy for the prefetch thread: the model tokenizes its captions in forward on the calling thread, and a
        # fast tokenizer must not be reconfigured (padding) by one thread while another encodes with it.
        self.tokenizer = copy.deepcopy(model.tokenizer)
        self.max_text_len = int(model.max_text_len)
        self.transform = transforms.Compose(
            [
                transforms.RandomResize([self.options.image_size], max_size=self.options.max_size),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )

    def _encode(self, images: list, texts: list[str]) -> tuple[list, list[str], np.ndarray]:
        tensors = [self.transform(image, None)[0] for image in images]
        offsets = self.tokenizer(texts, padding="longest", return_offsets_mapping=True, return_tensors="np")[
            "offset_mapping"
        ][:, : self.max_text_len]
        return tensors, texts, offsets

    def _forward(self, encoded: tuple[list, list[str], np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import torch

        tensors, texts, offsets = encoded
        tokens = offsets.shape[1]
        by_size: dict[tuple[int, ...], list[int]] = defaultdict(list)
        for index, tensor in enumerate(tensors):
            by_size[tuple(tensor.shape)].append(index)
        results: list[tuple[np.ndarray, np.ndarray]] = [None] * len(tensors)  # type: ignore[list-item]
        for indices in by_size.values():
            batch = torch.stack([tensors[i] for i in indices]).to(self.device)
            with torch.inference_mode():
                outputs = self.model(batch, captions=[texts[i] for i in indices])
            logits = outputs["pred_logits"][:, :, :tokens].sigmoid().float().cpu().numpy()
            pred_boxes = outputs["pred_boxes"].float().cpu().numpy()
            for k, index in enumerate(indices):
                results[index] = (logits[k], pred_boxes[k])
        probs, boxes = (np.stack(column) for column in zip(*results, strict=True))
        return probs, boxes, offsets

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "config_file": str(self.config_file),
            "checkpoint": str(self.checkpoint),
            **self.options.model_dump(mode="json", exclude={"config_file", "checkpoint"}),
        }
