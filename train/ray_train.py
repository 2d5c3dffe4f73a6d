"""Data-parallel training with Ray Train (v2 API): a TorchTrainer whose workers run trainer.fit under DDP.

The driver builds the Ray Data pipeline (ray_data.py) and starts N workers (gloo on CPU, NCCL on GPU) on the
local Ray instance or the cluster at `ray_address`. Every worker calls `ray.train.report` at the same steps
(the logged ones, with metrics already averaged over ranks); rank 0 writes checkpoints, metrics and the
exported model into `output_dir`, which must be shared storage on a multi-node cluster.

Resume restores weights, optimizer, scheduler, RNG and step exactly; the data stream restarts at the epoch
the checkpoint had reached (Ray Data's streaming split keeps no row cursor), not at the exact row.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import ray
import ray.train
import ray.train.torch
from ray.train import DataConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from grainclip import storage
from grainclip.config.train import TrainConfig
from grainclip.schema import list_row_groups
from grainclip.train.backbone import Backbone, build_backbone
from grainclip.train.batch import HostBatch
from grainclip.train.checkpoint import STATE_JSON, find_checkpoint
from grainclip.train.data import check_trainable
from grainclip.train.layout import exported_model_dir
from grainclip.train.metrics import read_metrics
from grainclip.train.ray_data import epochs_needed, training_dataset
from grainclip.train.samples import TRAINABLE_STATUSES
from grainclip.train.trainer import EvalHook, TrainResult, WorkerContext, fit, sample_builder

log = logging.getLogger(__name__)


class RayBatches:
    """This worker's shard of the Ray dataset as endless batches; counts batches for the checkpoint."""

    def __init__(self, cfg: TrainConfig, state: dict[str, Any] | None) -> None:
        self.shard = ray.train.get_dataset_shard("train")
        self.batch_size = cfg.batch_size
        self.prefetch = cfg.data.prefetch_batches
        self.batches = state["batches"] if state else 0
        self.iterator = self.iterate()

    def iterate(self):
        while True:
            yield from self.shard.iter_torch_batches(
                batch_size=self.batch_size, drop_last=True, prefetch_batches=self.prefetch, device="cpu"
            )
            log.warning("the Ray dataset ran out before the last step (rows failed to decode?); reading it again")

    def __next__(self) -> HostBatch:
        self.batches += 1
        return HostBatch.from_columns(next(self.iterator))

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "world_size": ray.train.get_context().get_world_size()}


def train_worker(loop_config: dict[str, Any]) -> None:
    cfg = TrainConfig.model_validate(loop_config["config"])
    context = ray.train.get_context()
    fit(
        cfg,
        loop_config["resume"],
        WorkerContext(
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            device=ray.train.torch.get_device(),
            prepare_model=ray.train.torch.prepare_model,
            report=ray.train.report,
            make_batches=lambda cfg, backbone, state: RayBatches(cfg, state),
        ),
        loop_config["eval_hook"],  # rank 0 runs it
    )


def absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """Workers do not share the driver's working directory: send them absolute paths."""
    update: dict[str, Any] = {
        "output_dir": cfg.output_dir.resolve(),
        "data": cfg.data.model_copy(update={"train": storage.absolute(cfg.data.train)}),
    }
    if Path(cfg.backbone.model).exists():
        update["backbone"] = cfg.backbone.model_copy(update={"model": str(Path(cfg.backbone.model).resolve())})
    return cfg.model_copy(update=update)


def resume_point(cfg: TrainConfig, resume: str | None, total_rows: int) -> tuple[int, int]:
    """(step, epoch) a resumed run continues from: the checkpoint's step, and the epoch its rows reached."""
    if not resume:
        return 0, 0
    state = json.loads((find_checkpoint(cfg.output_dir, resume) / STATE_JSON).read_text())
    stream = state["data"]["stream"]
    rows = stream.get("batches", 0) * cfg.batch_size * stream.get("world_size", cfg.workers)
    return state["step"], rows // max(total_rows, 1)


def train_with_ray(cfg: TrainConfig, resume: str | None, eval_hook: EvalHook | None = None) -> TrainResult:
    cfg = absolute_paths(cfg)
    started = not ray.is_initialized()
    if started:
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
        # Ray's CPU count is a scheduling token: on a small machine the data actors and read tasks still
        # need CPUs beside the training workers, or the pipeline never starts. A cluster brings its own.
        num_cpus = None if address else max(os.cpu_count() or 1, cfg.workers + max(cfg.data.workers(), 1) + 1)
        # An embedded Ray's workers inherit this environment; an attached cluster's get the storage names here.
        ray.init(address=address, num_cpus=num_cpus, runtime_env=storage.ray_runtime_env() if address else None)
    try:
        groups = list_row_groups(cfg.data.train)
        statuses = check_trainable(groups, num_shards=1)
        trainable = sum(count for status, count in statuses.items() if status in TRAINABLE_STATUSES)
        backbone: Backbone = build_backbone(cfg.backbone, cfg.data.image_size, load_weights=False)
        step, epoch = resume_point(cfg, resume, sum(statuses.values()))
        dataset = training_dataset(
            cfg, groups, sample_builder(cfg, backbone), epoch, epochs_needed(cfg, step, trainable)
        )
        options = ray.data.ExecutionOptions(preserve_order=True)  # reproducible order of batches
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"config": cfg.model_dump(mode="json"), "resume": resume, "eval_hook": eval_hook},
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpu),
            run_config=RunConfig(name="grainclip-train", storage_path=str(cfg.output_dir / "ray")),
            datasets={"train": dataset},
            dataset_config=DataConfig(execution_options=options),
        )
        trainer.fit()
    finally:
        if started:
            ray.shutdown()
    logged = read_metrics(cfg.output_dir)  # what rank 0 logged: the same as every worker reported
    return TrainResult(
        output_dir=cfg.output_dir,
        model_dir=exported_model_dir(cfg.output_dir),
        metrics=logged[-1] if logged else {},
        steps=cfg.steps,
    )
