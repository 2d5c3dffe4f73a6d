"""grainclip.evaluate: zero-shot classification (global / descriptors / region-aware), retrieval, grounding.

`evaluate(cfg)` runs an EvaluateConfig and writes its report; `zero_shot_accuracy(loaded, split)` is the
light evaluation a trainer's hook calls periodically (`zero_shot_hook(train_cfg)` builds that hook),
with a split from `load_split`. The names are resolved on first
use so that importing the package (the CLI does, to register its command) does not import torch.
"""

from grainclip.lazy import lazy_exports

_EXPORTS = {
    "grainclip.evaluate.runner": ("evaluate", "evaluate_split", "zero_shot_accuracy"),
    "grainclip.evaluate.datasets": ("EvalSplit", "load_split"),
    "grainclip.evaluate.hook": ("ZeroShotHook", "zero_shot_hook"),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
