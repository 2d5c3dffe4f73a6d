"""The zero-shot evaluation a training run does every `eval.every` steps.

grainclip.train must not import the evaluator, so whoever starts a training run (the `grainclip train`
command, the pipeline's train step) builds this hook from the train config and passes it to
`grainclip.train.train(cfg, eval_hook=...)`. Importing this module is cheap (no torch): the CLI does it.
The hook reads images with the training data's `image_alpha`, so it scores the pixels the model learns from.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from grainclip.config.train import TrainConfig
    from grainclip.model_api import LoadedModel

log = logging.getLogger(__name__)


class ZeroShotHook:
    """Zero-shot accuracy of the model being trained on the configured splits: {'eval/<split>/<mode>/top1': ...}.

    The splits are resolved when the hook is built, so a wrong dataset fails before training starts.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        from grainclip.evaluate.datasets import load_split

        self.modes, self.image_alpha = list(cfg.eval.modes), cfg.data.image_alpha
        self.splits = [load_split(spec) for spec in cfg.eval.datasets]

    def __call__(self, loaded: LoadedModel) -> dict[str, float]:
        from grainclip.evaluate.runner import zero_shot_accuracy

        results: dict[str, float] = {}
        for split in self.splits:
            scores = zero_shot_accuracy(loaded, split, modes=self.modes, image_alpha=self.image_alpha)
            results.update({f"eval/{split.name}/{key}": value for key, value in scores.items()})
        return results


def zero_shot_hook(cfg: TrainConfig) -> ZeroShotHook | None:
    """The hook a train config's `eval` section asks for; None when `every` is 0 or no dataset is listed."""
    if not cfg.eval.every:
        return None
    if not cfg.eval.datasets:
        log.warning("zero-shot eval hook disabled: eval.datasets is empty")
        return None
    return ZeroShotHook(cfg)
