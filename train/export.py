"""Model folders: what the trainer writes and what the evaluator loads, offline and without pickles.

Layout of a model folder (every training checkpoint is one too, plus its trainer state):

    grain_model.json          kind (grain / clip), name, embedding size, decoder config
    grain_heads.safetensors   decoder, queries and heads (GRAIN only; keys relative to GrainModel)
    backbone/                 open_clip's local-dir layout: open_clip.create_model("local-dir:<folder>/backbone")
      open_clip_config.json   {"model_cfg": the architecture itself, "preprocess_cfg": ...}
      open_clip_model.safetensors

The backbone weights are stored once, in the folder open_clip reads directly; the GRAIN heads beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from safetensors.torch import load_file, save_file

from grainclip.config.train import DecoderConfig
from grainclip.model_api import LoadedModel, input_side
from grainclip.train.backbone import LOCAL_DIR, OPEN_CLIP_CONFIG, Backbone
from grainclip.train.layout import MODEL_CONFIG
from grainclip.train.model import ClipModel, GrainModel, build_model

HEADS_WEIGHTS = "grain_heads.safetensors"
BACKBONE_DIR = "backbone"
BACKBONE_WEIGHTS = "open_clip_model.safetensors"
FORMAT = "grainclip.model/1"


def _tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().cpu().contiguous() for key, value in state.items()}


def write_model_files(model: ClipModel, backbone: Backbone, decoder: DecoderConfig, folder: Path, name: str) -> None:
    """Write the model folder layout into an existing (temporary) folder."""
    backbone_dir = folder / BACKBONE_DIR
    backbone_dir.mkdir(parents=True, exist_ok=True)
    (backbone_dir / OPEN_CLIP_CONFIG).write_text(
        json.dumps({"model_cfg": backbone.model_cfg, "preprocess_cfg": backbone.preprocess_cfg}, indent=2)
    )
    save_file(_tensors(model.backbone.state_dict()), backbone_dir / BACKBONE_WEIGHTS)
    spec: dict[str, Any] = {
        "format": FORMAT,
        "kind": model.kind,
        "name": name,
        "embed_dim": int(backbone.model_cfg["embed_dim"]),
    }
    if isinstance(model, GrainModel):
        spec["decoder"] = decoder.model_dump(mode="json")
        heads = {k: v for k, v in model.state_dict().items() if not k.startswith("backbone.")}
        save_file(_tensors(heads), folder / HEADS_WEIGHTS)
    (folder / MODEL_CONFIG).write_text(json.dumps(spec, indent=2))


def replace_dir_atomically(tmp: Path, final: Path) -> None:
    """Move a finished temporary folder into place; the old folder stays intact until the new one is ready."""
    old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex}")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def export_model(model: ClipModel, backbone: Backbone, decoder: DecoderConfig, out: str | Path, name: str) -> Path:
    """Write a model folder at `out` atomically (temp folder + rename) and return its path."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex}")
    try:
        tmp.mkdir()
        write_model_files(model, backbone, decoder, tmp, name)
        replace_dir_atomically(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def read_model_spec(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    spec_path = path / MODEL_CONFIG
    if not spec_path.is_file():
        raise FileNotFoundError(f"{path} is not a grainclip model folder (no {MODEL_CONFIG})")
    spec = json.loads(spec_path.read_text())
    if spec.get("format") != FORMAT:
        raise ValueError(f"{spec_path}: unsupported model format {spec.get('format')!r}, expected {FORMAT!r}")
    return spec


def load_weights(model: ClipModel, path: str | Path, backbone_loaded: bool = False) -> None:
    """Load a model folder's weights into a model of the same architecture (strict: every key must fit)."""
    path = Path(path)
    if not backbone_loaded:
        model.backbone.load_state_dict(load_file(path / BACKBONE_DIR / BACKBONE_WEIGHTS))
    if isinstance(model, GrainModel):
        missing, unexpected = model.load_state_dict(load_file(path / HEADS_WEIGHTS), strict=False)
        missing = [key for key in missing if not key.startswith("backbone.")]
        if missing or unexpected:
            raise ValueError(
                f"{path / HEADS_WEIGHTS} does not fit the model: missing {missing}, unexpected {unexpected}"
            )


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Load an exported model or a training checkpoint folder for inference (eval mode, on `device`).

    The preprocess squashes the image to the model's square input (as in training), so predicted boxes,
    normalised to the model input, are also normalised to the original image.
    """
    path = Path(path)
    spec = read_model_spec(path)
    source = f"{LOCAL_DIR}{path / BACKBONE_DIR}"
    backbone_model = open_clip.create_model(source)
    preprocess_cfg = open_clip.get_model_preprocess_cfg(backbone_model)
    decoder = DecoderConfig(**spec["decoder"]) if spec["kind"] == "grain" else DecoderConfig()
    model = build_model(spec["kind"], backbone_model, decoder, spec["embed_dim"])
    load_weights(model, path, backbone_loaded=True)
    model.to(device).eval()
    return loaded_model(
        model, preprocess_cfg, open_clip.get_tokenizer(source), spec["kind"], spec.get("name") or path.name
    )


def loaded_model(model: ClipModel, preprocess_cfg: dict[str, Any], tokenizer: Any, kind: str, name: str) -> LoadedModel:
    """A model as inference code sees it (the evaluator, the trainer's eval hook), with eval-time preprocessing."""
    preprocess = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        kind=kind,
        name=name,
        image_size=input_side(preprocess_cfg["size"]),
    )
