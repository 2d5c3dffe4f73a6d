"""Resolve and build the open_clip backbone from what a user writes in `backbone.model`.

Three spellings are accepted so tiny and custom models work offline: a built-in open_clip config name, a path
to a config JSON (registered with open_clip at run time under the file's stem), or a folder in open_clip's
`local-dir:` layout (open_clip_config.json + weights), which is also how grainclip exports backbones.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch

from grainclip.config.base import ConfigError
from grainclip.config.train import BackboneConfig
from grainclip.model_api import input_side

log = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"
OPEN_CLIP_CONFIG = "open_clip_config.json"


@dataclass
class Backbone:
    """A built open_clip model with everything needed to rebuild it offline and to feed it."""

    model: torch.nn.Module
    model_cfg: dict[str, Any]  # the architecture itself, not a name: tiny configs exist only at run time
    preprocess_cfg: dict[str, Any]
    tokenizer: Any  # open_clip tokenizer: list[str] -> LongTensor (N, context_length)

    @property
    def image_size(self) -> int:
        return input_side(self.preprocess_cfg["size"])


def resolve_model_name(model: str, field: str = "backbone.model") -> str:
    """The name open_clip's factory understands for `model` (registering a JSON config if needed).

    The trainer's backbone and the evaluator's plain open_clip models both resolve here; `field` names the
    config entry in the error messages.
    """
    path = Path(model).expanduser()
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"{field}: open_clip config file not found: {path}")
        open_clip.add_model_config(path)
        if open_clip.get_model_config(path.stem) is None:
            raise ConfigError(f"{field}: {path} is not an open_clip config (needs embed_dim, vision_cfg, text_cfg)")
        return path.stem
    if path.is_dir():
        if not (path / OPEN_CLIP_CONFIG).is_file():
            raise ConfigError(f"{field}: folder {path} has no {OPEN_CLIP_CONFIG}")
        return f"{LOCAL_DIR}{path}"
    if open_clip.get_model_config(model) is None:
        raise ConfigError(f"{field}: {model!r} is neither an open_clip config name nor an existing JSON file or folder")
    return model


def model_config(name: str) -> dict[str, Any]:
    config = open_clip.get_model_config(name)
    if config is None:
        raise ConfigError(f"open_clip has no config for {name!r}")
    return copy.deepcopy(config)


def build_backbone(config: BackboneConfig, image_size: int | None = None, load_weights: bool = True) -> Backbone:
    """Create the open_clip model (random or from `config.pretrained`), its tokenizer and preprocessing config.

    Preprocessing squashes the whole image to a square instead of open_clip's centre crop, so that boxes
    normalised to the original image are also normalised to the model input (nothing is cropped away).
    """
    name = resolve_model_name(config.model)
    pretrained = None
    if config.pretrained is not None:
        if not config.pretrained.is_file():
            raise ConfigError(f"backbone.pretrained: weights file not found: {config.pretrained}")
        pretrained = str(config.pretrained)
    model = open_clip.create_model(name, pretrained=pretrained, load_weights=load_weights, force_image_size=image_size)
    model_cfg = model_config(name)
    if image_size is not None:
        model_cfg["vision_cfg"]["image_size"] = image_size
    preprocess_cfg = {**open_clip.get_model_preprocess_cfg(model), "resize_mode": "squash"}
    open_clip.model.set_model_preprocess_cfg(model, preprocess_cfg)
    return Backbone(model, model_cfg, preprocess_cfg, open_clip.get_tokenizer(name))


def visual_token_width(model: torch.nn.Module) -> int:
    """Width of the patch tokens open_clip's VisionTransformer returns with output_tokens (after ln_post)."""
    visual = model.visual
    if not isinstance(visual, open_clip.transformer.VisionTransformer):
        raise ConfigError(
            f"GRAIN needs patch tokens from an open_clip VisionTransformer; {type(visual).__name__} backbones "
            "are not supported (use mode: clip, or a ViT config)"
        )
    return visual.ln_post.normalized_shape[0]
