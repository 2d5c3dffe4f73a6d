"""Tiny random models built locally from seeds, so every real component can be tested offline.

`build_tiny_models(dir)` returns name -> folder for: `llm` (chat LLM for vLLM/transformers), `vlm` (LLaVA-style
model vLLM accepts on CPU), `grounding-dino` and `owlv2` (transformers detectors), `groundingdino-py`
(config + checkpoint + local BERT for the original implementation) and `clip` (a tiny open_clip config).
Every folder carries a `grainclip-tiny.json` saying what it is and how to load it. Importing this package
is cheap: torch, transformers and open_clip are imported only while building.
"""

from grainclip.testing.build import (
    TINY_MODEL_NAMES,
    TinyModelBuild,
    build_tiny_models,
    default_tiny_models_dir,
    ensure_tiny_model,
    read_manifest,
)
from grainclip.testing.cache import default_cache_dir
from grainclip.testing.clip import tiny_clip_name

__all__ = [
    "TINY_MODEL_NAMES",
    "TinyModelBuild",
    "build_tiny_models",
    "default_cache_dir",
    "default_tiny_models_dir",
    "ensure_tiny_model",
    "read_manifest",
    "tiny_clip_name",
]
