"""The training loop, shared by single-process runs and every Ray Train worker.

    train(cfg, resume=None) -> TrainResult

`cfg.workers == 1` (and no Ray address) runs here, in this process, with no process group. Otherwise
ray_train.py starts a TorchTrainer whose workers run the same `fit` with DDP and Ray Data batches.
One optimizer step = `grad_accum_steps` micro-batches of `batch_size` images per worker.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from grainclip.config.base import ConfigError, dump_config
from grainclip.config.train import TrainConfig
from grainclip.model_api import LoadedModel
from grainclip.schema import list_row_groups
from grainclip.train import distributed
from grainclip.train.backbone import Backbone, build_backbone
from grainclip.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from grainclip.train.data import (
    EpochOrder,
    StreamPosition,
    check_trainable,
    make_loader,
    prepare_batch,
)
from grainclip.train.export import build_model, export_model
from grainclip.train.losses import GrainCriterion
from grainclip.train.metrics import MetricsLog
from grainclip.train.model import ClipModel
from grainclip.train.optim import build_optimizer, build_scheduler
from grainclip.train.samples import SKIP_KEYS, TRAINABLE_STATUSES, SampleBuilder

log = logging.getLogger(__name__)

MODEL_DIR = "model"
COUNTER_KEYS = (*SKIP_KEYS, "regions_dropped", "regions_truncated")


@dataclass
class TrainResult:
    output_dir: Path
    checkpoint: Path  # the exported model folder: grainclip.train.load_model(checkpoint)
    metrics: dict[str, float]  # the last logged step's metrics
    steps: int


class BatchSource(Protocol):
    """Endless collated batches for this worker; `state_dict` says where the stream stands (for resume)."""

    def __next__(self) -> dict[str, torch.Tensor]: ...

    def state_dict(self) -> dict[str, Any]: ...


@dataclass
class WorkerContext:
    """What differs between a single process and a Ray Train worker."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    prepare_model: Callable[[nn.Module], nn.Module] = lambda model: model
    report: Callable[[dict[str, float]], None] = lambda metrics: None
    make_batches: Callable[[TrainConfig, Backbone, dict[str, Any] | None], BatchSource] | None = None


class LocalBatches:
    """The DataLoader stream of data.py plus the position of the batches actually consumed."""

    def __init__(self, cfg: TrainConfig, backbone: Backbone, state: dict[str, Any] | None, rank: int = 0, world_size: int = 1) -> None:
        groups = list_row_groups(cfg.data.train)
        num_shards = world_size * max(cfg.data.num_workers, 1)
        check_trainable(groups, num_shards)
        order = EpochOrder(groups, cfg.data.shuffle_row_groups, cfg.seed)
        self.position = StreamPosition.from_state(state, num_shards) if state else StreamPosition(num_shards)
        loader = make_loader(
            order,
            sample_builder(cfg, backbone),
            cfg.batch_size,
            cfg.data.num_workers,
            cfg.data.prefetch_batches,
            self.position,
            rank=rank,
            world_size=world_size,
            pin_memory=cfg.gpu,
        )
        self.batches: Iterator[dict[str, torch.Tensor]] = iter(loader)

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = next(self.batches)
        self.position.advance(batch)
        return batch

    def state_dict(self) -> dict[str, Any]:
        return self.position.state_dict()


def sample_builder(cfg: TrainConfig, backbone: Backbone) -> SampleBuilder:
    return SampleBuilder(
        cfg.data,
        backbone.image_size,
        backbone.tokenizer,
        with_regions=cfg.mode == "grain",
        seed=cfg.seed,
        interpolation=backbone.preprocess_cfg.get("interpolation", "bicubic"),
    )


def train(cfg: TrainConfig, resume: str | None = None) -> TrainResult:
    """Train per `cfg`; `resume` is "latest" or a checkpoint folder. Returns where the model was exported."""
    statuses = check_trainable(list_row_groups(cfg.data.train), num_shards=1)  # bad data fails before any model
    log.info("annotation rows by status: %s (only %s train)", statuses, sorted(TRAINABLE_STATUSES))
    if cfg.workers > 1 or cfg.ray_address:
        from grainclip.train.ray_train import train_with_ray

        return train_with_ray(cfg, resume)
    if cfg.gpu and not torch.cuda.is_available():
        raise ConfigError("gpu: true (--gpu) but torch sees no CUDA device on this machine; drop --gpu to train on CPU")
    device = torch.device("cuda" if cfg.gpu else "cpu")
    return fit(cfg, resume, WorkerContext(device=device))


def autocast_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "bf16" or (cfg.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def fit(cfg: TrainConfig, resume: str | None, ctx: WorkerContext) -> TrainResult:
    """Build, optionally resume, and train; rank 0 logs, checkpoints and exports."""
    is_main = ctx.rank == 0
    output_dir = Path(cfg.output_dir)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    backbone = build_backbone(cfg.backbone, cfg.data.image_size)
    model = build_model(cfg.mode, backbone.model, cfg.decoder, int(backbone.model_cfg["embed_dim"]))
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.steps)
    torch.manual_seed(cfg.seed + 1_000_003 * ctx.rank)  # dropout differs per rank, reproducibly

    model.to(ctx.device)  # in place: the optimizer keeps the same parameter objects
    step, data_state, totals = 0, None, dict.fromkeys(COUNTER_KEYS, 0)
    if resume:
        path = find_checkpoint(output_dir, resume)
        state = load_checkpoint(path, model, optimizer, scheduler)  # optimizer state lands on the params' device
        step, data_state = state["step"], state["data"]["stream"]
        totals.update(state["data"]["totals"])
        log.info("resumed from %s at step %d", path, step)
    train_model = ctx.prepare_model(model)
    if cfg.compile:
        train_model = torch.compile(train_model)

    criterion = GrainCriterion(cfg.loss, cfg.mode)
    batches = ctx.make_batches(cfg, backbone, data_state) if ctx.make_batches else LocalBatches(cfg, backbone, data_state)
    mean = torch.tensor(backbone.preprocess_cfg["mean"], device=ctx.device).view(1, 3, 1, 1)
    std = torch.tensor(backbone.preprocess_cfg["std"], device=ctx.device).view(1, 3, 1, 1)
    dtype = autocast_dtype(cfg, ctx.device)
    eval_hook = ZeroShotHook(cfg, backbone) if is_main and cfg.eval.every else None
    metrics_log = MetricsLog(output_dir, resumed_step=step) if is_main else None
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "train_config.yaml").write_text(dump_config(cfg))

    metrics: dict[str, float] = {}
    interval = dict.fromkeys(COUNTER_KEYS, 0)
    images_seen, interval_start = 0, time.perf_counter()
    model.train()
    with progress_bar(is_main, cfg.steps, step) as advance:
        while step < cfg.steps:
            losses: dict[str, float] = {}
            for micro in range(cfg.optim.grad_accum_steps):
                raw = next(batches)
                for key in COUNTER_KEYS:
                    interval[key] += int(raw[key].sum())
                batch = prepare_batch(raw, ctx.device, mean, std)
                last_micro = micro == cfg.optim.grad_accum_steps - 1
                sync = contextlib.nullcontext() if last_micro or not hasattr(train_model, "no_sync") else train_model.no_sync()
                with sync:
                    with torch.autocast(ctx.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                        out = train_model(
                            batch["images"], batch["caption_tokens"], batch.get("unique_description_tokens"), batch.get("boxes")
                        )
                        parts = criterion(out, batch)
                    (parts["total"] / cfg.optim.grad_accum_steps).backward()
                for key, value in parts.items():
                    losses[key] = losses.get(key, 0.0) + value.item() / cfg.optim.grad_accum_steps
                images_seen += batch["images"].shape[0]
            grad_norm = (
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
                if cfg.optim.grad_clip
                else torch.zeros(())
            )
            lr = scheduler.get_last_lr()[0]
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                model.logit_scale.clamp_(0.0, math.log(cfg.loss.max_logit_scale))
            step += 1
            advance()

            last = step == cfg.steps
            checkpoint_due = step % cfg.checkpoint_every == 0 or last
            if step % cfg.log_every == 0 or checkpoint_due:  # a checkpoint carries up-to-date counters
                elapsed = time.perf_counter() - interval_start
                counts = distributed.all_reduce_sum(torch.tensor([interval[k] for k in COUNTER_KEYS], dtype=torch.float64))
                for key, count in zip(COUNTER_KEYS, counts.tolist()):
                    totals[key] += int(count)
                reduced = distributed.all_reduce_mean(torch.tensor(list(losses.values()), dtype=torch.float64))
                metrics = {f"loss/{k}": v for k, v in zip(losses, reduced.tolist())}
                metrics.update(
                    {
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "logit_scale": model.logit_scale.detach().exp().item(),
                        "images_per_s": images_seen * ctx.world_size / max(elapsed, 1e-9),
                        **{f"data/{key}": float(totals[key]) for key in COUNTER_KEYS},
                    }
                )
                interval = dict.fromkeys(COUNTER_KEYS, 0)
                images_seen, interval_start = 0, time.perf_counter()
                if eval_hook is not None and (step % cfg.eval.every == 0 or last):
                    metrics.update(eval_hook(model))
                if metrics_log is not None:
                    metrics_log.write(step, metrics)
                ctx.report(metrics)
            if is_main and checkpoint_due:
                save_checkpoint(
                    output_dir, step, model, backbone, cfg.decoder, optimizer, scheduler,
                    {"stream": batches.state_dict(), "totals": totals}, metrics, cfg.mode, cfg.keep_checkpoints,
                )  # fmt: skip

    exported = output_dir / MODEL_DIR
    if is_main:
        export_model(model, backbone, cfg.decoder, exported, name=cfg.mode)
        metrics_log.close()
        log.info("exported %s model to %s", cfg.mode, exported)
    return TrainResult(output_dir=output_dir, checkpoint=exported, metrics=metrics, steps=step)


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, done: int) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    columns = (TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("train", total=total, completed=done)
        yield lambda: progress.advance(task)


class ZeroShotHook:
    """Periodic zero-shot accuracy through grainclip.evaluate, if that package provides its hook."""

    def __init__(self, cfg: TrainConfig, backbone: Backbone) -> None:
        self.cfg = cfg.eval
        self.backbone = backbone
        self.kind = cfg.mode
        try:
            from grainclip.evaluate import load_split, zero_shot_accuracy
        except (ImportError, AttributeError) as exc:
            log.warning("zero-shot eval hook disabled: grainclip.evaluate has no usable hook (%s)", exc)
            self.splits = []
            return
        self.zero_shot_accuracy = zero_shot_accuracy
        self.splits = [load_split(spec) for spec in self.cfg.datasets]
        if not self.splits:
            log.warning("zero-shot eval hook disabled: eval.datasets is empty")

    def __call__(self, model: ClipModel) -> dict[str, float]:
        from open_clip.transform import PreprocessCfg, image_transform_v2

        loaded = LoadedModel(
            model=model,
            preprocess=image_transform_v2(PreprocessCfg(**self.backbone.preprocess_cfg), is_train=False),
            tokenizer=self.backbone.tokenizer,
            kind=self.kind,
            name=self.kind,
        )
        results: dict[str, float] = {}
        for split in self.splits:
            scores = self.zero_shot_accuracy(loaded, split, modes=self.cfg.modes)
            results.update({f"eval/{split.name}/{key}": value for key, value in scores.items()})
        return results
