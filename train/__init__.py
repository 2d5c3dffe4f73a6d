"""grainclip.train: the GRAIN model on an open_clip backbone, its three losses, data loading and trainer.

Public entry points (imported lazily so `grainclip --help` does not load torch):
    train(cfg: TrainConfig, resume=None, eval_hook=None) -> TrainResult
    load_model(path, device="cpu") -> grainclip.model_api.LoadedModel
"""

from grainclip.lazy import lazy_exports

_EXPORTS = {
    "grainclip.train.launch": ("train",),
    "grainclip.train.trainer": ("TrainResult",),
    "grainclip.train.export": ("load_model", "export_model"),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
