"""Load the models an evaluate config names into `LoadedModel`s (grainclip.model_api)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from grainclip.config.base import ConfigError
from grainclip.config.evaluate import CheckpointModel, ModelSpec, OpenClipModel
from grainclip.model_api import LoadedModel, RegionModel, input_side

log = logging.getLogger(__name__)


def load_open_clip(name: str, pretrained: str | None, device: torch.device) -> LoadedModel:
    import open_clip

    from grainclip.train.backbone import resolve_model_name

    model_name = resolve_model_name(name, field="open_clip model")
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    model.eval()
    size = input_side(open_clip.get_model_preprocess_cfg(model)["size"])
    return LoadedModel(model, preprocess, open_clip.get_tokenizer(model_name), "clip", model_name, size)


def load_model(spec: ModelSpec, device: torch.device) -> LoadedModel:
    if isinstance(spec, OpenClipModel):
        return load_open_clip(spec.name, spec.pretrained, device)
    assert isinstance(spec, CheckpointModel)
    if not Path(spec.path).exists():
        raise ConfigError(f"model {spec.label!r}: checkpoint not found: {spec.path}")
    from grainclip.train import load_model as load_checkpoint  # lazy: open_clip loads with the first model

    loaded = load_checkpoint(spec.path, device)
    loaded.model.eval()
    return loaded


def has_regions(loaded: LoadedModel) -> bool:
    """Region modes need a GRAIN model: the `clip` baseline and plain open_clip models have no region head."""
    return loaded.kind == "grain" and isinstance(loaded.model, RegionModel)
