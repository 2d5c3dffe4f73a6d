"""Tiny open_clip model: a config small enough for overfit tests, plus seeded random weights.

The folder works two ways:
- `open_clip.create_model(tiny_clip_name(folder))` builds the architecture (fresh random init), the way the
  trainer builds any named open_clip config;
- `open_clip.create_model_and_transforms(f"local-dir:{folder}")` also loads the seeded weights.
Its tokenizer is open_clip's own SimpleTokenizer (shipped with the package) at context length 16.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_CLIP_NAME = "grainclip-tiny-clip"
MODEL_CONFIG_FILE = f"{TINY_CLIP_NAME}.json"  # open_clip names a registered config after its file stem
LOCAL_DIR_CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
IMAGE_SIZE = 64

MODEL_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": IMAGE_SIZE, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}

#: The smallest open_clip config that still runs (32 px, one layer per tower), for tests that need a model to
#: load and embed, not to learn: evaluator CLI and bad-input runs.
SMALLEST_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def build_clip(out: Path, seed: int, final: Path) -> None:
    import open_clip
    import torch
    from safetensors.torch import save_model

    (out / MODEL_CONFIG_FILE).write_text(json.dumps(MODEL_CONFIG, indent=2))
    mean, std = list(open_clip.OPENAI_DATASET_MEAN), list(open_clip.OPENAI_DATASET_STD)
    local_dir_config = {"model_cfg": MODEL_CONFIG, "preprocess_cfg": {"size": IMAGE_SIZE, "mean": mean, "std": std}}
    (out / LOCAL_DIR_CONFIG_FILE).write_text(json.dumps(local_dir_config, indent=2))
    torch.manual_seed(seed)
    save_model(open_clip.CLIP(**MODEL_CONFIG), str(out / WEIGHTS_FILE))


def tiny_clip_name(folder: Path) -> str:
    """Register the folder's tiny config with open_clip (once per process) and return its model name."""
    import open_clip

    if TINY_CLIP_NAME not in open_clip.list_models():
        open_clip.add_model_config(Path(folder) / MODEL_CONFIG_FILE)
    return TINY_CLIP_NAME
