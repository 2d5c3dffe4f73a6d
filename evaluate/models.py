"""Load the models an evaluate config names into `LoadedModel`s (grainclip.model_api)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from grainclip.config.base import ConfigError
from grainclip.config.evaluate import CheckpointModel, ModelSpec, OpenClipModel
from grainclip.model_api import LoadedModel, RegionModel

log = logging.getLogger(__name__)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available here")
    return resolved


def open_clip_model_name(name: str) -> str:
    """The name open_clip's factory reads: a built-in name as is, a JSON config registered under its stem, or a
    folder in open_clip's local-dir layout (open_clip_config.json + weights, as grainclip exports backbones)."""
    import open_clip

    path = Path(name).expanduser()
    if path.suffix == ".json":
        if not path.is_file():
            raise ConfigError(f"open_clip model config not found: {path}")
        config = json.loads(path.read_text())
        if not all(key in config for key in ("embed_dim", "vision_cfg", "text_cfg")):
            raise ConfigError(f"{path} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
        open_clip.add_model_config(path)
        return path.stem
    if path.is_dir():
        if not (path / "open_clip_config.json").is_file():
            raise ConfigError(f"open_clip model folder {path} has no open_clip_config.json")
        return f"local-dir:{path}"
    if open_clip.get_model_config(name) is None:
        raise ConfigError(f"unknown open_clip model {name!r}: give a built-in name, a JSON config or a local-dir folder")
    return name


def load_open_clip(name: str, pretrained: str | None, device: torch.device) -> LoadedModel:
    import open_clip

    model_name = open_clip_model_name(name)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    model.eval()
    return LoadedModel(model, preprocess, open_clip.get_tokenizer(model_name), "clip", model_name)


def load_model(spec: ModelSpec, device: torch.device) -> LoadedModel:
    if isinstance(spec, OpenClipModel):
        return load_open_clip(spec.name, spec.pretrained, device)
    assert isinstance(spec, CheckpointModel)
    if not Path(spec.path).exists():
        raise ConfigError(f"model {spec.label!r}: checkpoint not found: {spec.path}")
    from grainclip.train import load_model as load_checkpoint  # lazy: grainclip.train may import this package

    loaded = load_checkpoint(spec.path, device)
    loaded.model.eval()
    return loaded


def has_regions(loaded: LoadedModel) -> bool:
    """Region modes need a GRAIN model: the `clip` baseline and plain open_clip models have no region head."""
    return loaded.kind == "grain" and isinstance(loaded.model, RegionModel)
