"""Where a training run executes: in this process, or on Ray Train workers.

    train(cfg, resume=None, eval_hook=None) -> TrainResult

`cfg.workers == 1` (and no Ray address) runs trainer.fit here, with no process group. Otherwise ray_train.py
starts a TorchTrainer whose workers run the same `fit` with DDP and Ray Data batches. Ray is imported only
then, so single-process training (a GPU machine without Ray, say) never needs it.
"""

from __future__ import annotations

import logging

import torch

from grainclip import storage
from grainclip.config.base import ConfigError
from grainclip.config.train import TrainConfig
from grainclip.schema import list_row_groups
from grainclip.train.data import check_trainable
from grainclip.train.samples import TRAINABLE_STATUSES
from grainclip.train.trainer import EvalHook, TrainResult, WorkerContext, fit

log = logging.getLogger(__name__)


def train(cfg: TrainConfig, resume: str | None = None, eval_hook: EvalHook | None = None) -> TrainResult:
    """Train per `cfg`; `resume` is "latest" or a checkpoint folder; `eval_hook` evaluates every `eval.every`
    steps (grainclip.evaluate.hook.zero_shot_hook builds one from cfg). Returns where the model went."""
    with storage.configured(cfg.storage):  # the variables it names, here and in the workers it starts
        statuses = check_trainable(list_row_groups(cfg.data.train), num_shards=1)  # bad data fails before any model
        log.info("annotation rows by status: %s (only %s train)", statuses, sorted(TRAINABLE_STATUSES))
        if cfg.workers > 1 or cfg.ray_address:
            from grainclip.train.ray_train import train_with_ray

            return train_with_ray(cfg, resume, eval_hook)
        if cfg.gpu and not torch.cuda.is_available():
            raise ConfigError(
                "gpu: true (--gpu) but torch sees no CUDA device on this machine; drop --gpu to train on CPU"
            )
        device = torch.device("cuda" if cfg.gpu else "cpu")
        return fit(cfg, resume, WorkerContext(device=device), eval_hook)
