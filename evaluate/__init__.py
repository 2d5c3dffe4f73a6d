"""grainclip.evaluate: zero-shot classification (global / descriptors / region-aware), retrieval, grounding.

`evaluate(cfg)` runs an EvaluateConfig and writes its report; `zero_shot_accuracy(loaded, split)` is the
light hook a trainer calls periodically, with a split from `load_split`. The names are resolved on first
use so that importing the package (the CLI does, to register its command) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "evaluate": "grainclip.evaluate.runner",
    "evaluate_split": "grainclip.evaluate.runner",
    "zero_shot_accuracy": "grainclip.evaluate.runner",
    "EvalSplit": "grainclip.evaluate.datasets",
    "load_split": "grainclip.evaluate.datasets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
