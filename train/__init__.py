"""grainclip.train: the GRAIN model on an open_clip backbone, its three losses, data loading and trainer.

Public entry points (imported lazily so `grainclip --help` does not load torch):
    train(cfg: TrainConfig, resume=None) -> TrainResult
    load_model(path, device="cpu") -> grainclip.modeling.LoadedModel
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "train": "grainclip.train.trainer",
    "TrainResult": "grainclip.train.trainer",
    "load_model": "grainclip.train.export",
    "export_model": "grainclip.train.export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'grainclip.train' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
