"""One worker's training loop, shared by single-process runs and every Ray Train worker.

`Trainer` builds (or resumes) the model, optimizer and batch stream of a TrainConfig; `fit` loops over
`train_step`, and on rank 0 logs, evaluates, checkpoints and finally exports. One optimizer step is
`grad_accum_steps` micro-batches of `batch_size` images per worker. `train_step` returns detached device
tensors: the host reads them (a sync) only at the steps that are logged. Which processes run the loop (this
one, or Ray Train workers under DDP) is decided by grainclip.train.launch.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from grainclip.config.base import dump_config
from grainclip.config.train import TrainConfig
from grainclip.devices import autocast
from grainclip.model_api import LoadedModel
from grainclip.schema import list_row_groups
from grainclip.train import distributed
from grainclip.train.backbone import Backbone, build_backbone
from grainclip.train.batch import COUNTER_KEYS, HostBatch
from grainclip.train.checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from grainclip.train.data import EpochOrder, StreamPosition, check_trainable, make_loader
from grainclip.train.export import export_model, loaded_model
from grainclip.train.layout import exported_model_dir
from grainclip.train.losses import GrainCriterion
from grainclip.train.metrics import MetricsLog
from grainclip.train.model import build_model
from grainclip.train.optim import build_optimizer, build_scheduler
from grainclip.train.samples import SampleBuilder

log = logging.getLogger(__name__)

EvalHook = Callable[[LoadedModel], dict[str, float]]
"""Periodic evaluation of the model being trained (metric name -> value), run on rank 0 every `eval.every`
steps. The caller builds it (grainclip.evaluate.hook): the trainer does not import the evaluator."""


@dataclass
class TrainResult:
    output_dir: Path
    model_dir: Path  # the exported model folder: grainclip.train.load_model(model_dir)
    metrics: dict[str, float]  # the last logged step's metrics
    steps: int


class BatchSource(Protocol):
    """Endless collated batches for this worker; `state_dict` says where the stream stands (for resume)."""

    def __next__(self) -> HostBatch: ...

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

    def __init__(
        self, cfg: TrainConfig, backbone: Backbone, state: dict[str, Any] | None, rank: int = 0, world_size: int = 1
    ) -> None:
        groups = list_row_groups(cfg.data.train)
        workers = cfg.data.workers(backbone.image_size)
        num_shards = world_size * max(workers, 1)
        check_trainable(groups, num_shards)
        order = EpochOrder(groups, cfg.data.shuffle_row_groups, cfg.seed)
        self.position = StreamPosition.from_state(state, num_shards) if state else StreamPosition(num_shards)
        loader = make_loader(
            order,
            sample_builder(cfg, backbone),
            cfg.batch_size,
            workers,
            cfg.data.prefetch_batches,
            self.position,
            rank=rank,
            world_size=world_size,
            pin_memory=cfg.gpu,
        )
        self.batches: Iterator[dict[str, torch.Tensor]] = iter(loader)

    def __next__(self) -> HostBatch:
        columns = next(self.batches)
        self.position.advance(columns)
        return HostBatch.from_columns(columns)

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


@dataclass
class StepResult:
    """One optimizer step, as detached tensors on the training device: reading them makes the host wait."""

    losses: dict[str, torch.Tensor]  # each loss part, mean over the micro-batches (float64)
    grad_norm: torch.Tensor  # before clipping; zero when clipping is off
    lr: float  # the learning rate the step used


class Telemetry:
    """The data counters, images and time between two logged steps, and the counter totals of the whole run
    (checkpointed, so a resumed run continues them). Counting is host-side integer work: no device sync."""

    def __init__(self, totals: dict[str, int] | None = None) -> None:
        self.totals = {**dict.fromkeys(COUNTER_KEYS, 0), **(totals or {})}
        self.reset()

    def reset(self) -> None:
        self.interval = dict.fromkeys(COUNTER_KEYS, 0)
        self.images = 0
        self.started = time.perf_counter()

    def count(self, batch: HostBatch) -> None:
        for key in COUNTER_KEYS:
            self.interval[key] += batch.counts[key]
        self.images += batch.size

    def flush(self, world_size: int, device: torch.device) -> dict[str, float]:
        """images/s and the running counter totals over all ranks, then a new interval (a collective)."""
        elapsed = time.perf_counter() - self.started
        counts = torch.tensor([self.interval[key] for key in COUNTER_KEYS], dtype=torch.float64, device=device)
        for key, count in zip(COUNTER_KEYS, distributed.all_reduce_sum(counts).tolist()):
            self.totals[key] += int(count)
        metrics = {
            "images_per_s": self.images * world_size / max(elapsed, 1e-9),
            **{f"data/{key}": float(self.totals[key]) for key in COUNTER_KEYS},
        }
        self.reset()
        return metrics


class Trainer:
    """One worker's run: the model, optimizer and batch stream of `cfg`, restored from `resume` if given."""

    def __init__(
        self, cfg: TrainConfig, ctx: WorkerContext, resume: str | None = None, eval_hook: EvalHook | None = None
    ) -> None:
        self.cfg, self.ctx = cfg, ctx
        self.is_main = ctx.rank == 0
        self.output_dir = Path(cfg.output_dir)
        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        self.backbone = build_backbone(cfg.backbone, cfg.data.image_size)
        self.model = build_model(cfg.mode, self.backbone.model, cfg.decoder, int(self.backbone.model_cfg["embed_dim"]))
        if cfg.grad_checkpointing:
            self.model.set_grad_checkpointing(True)
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.steps)
        torch.manual_seed(cfg.seed + 1_000_003 * ctx.rank)  # dropout differs per rank, reproducibly

        self.model.to(ctx.device)  # in place: the optimizer keeps the same parameter objects
        self.step, data_state, totals = 0, None, None
        if resume:
            path = find_checkpoint(self.output_dir, resume)
            state = load_checkpoint(
                path, self.model, self.optimizer, self.scheduler
            )  # optimizer state lands on the params' device
            self.step, data_state, totals = state["step"], state["data"]["stream"], state["data"]["totals"]
            log.info("resumed from %s at step %d", path, self.step)
        self.train_model = ctx.prepare_model(self.model)
        if cfg.compile:
            self.train_model = torch.compile(self.train_model)

        self.criterion = GrainCriterion(cfg.loss, cfg.mode)
        self.batches = (
            ctx.make_batches(cfg, self.backbone, data_state)
            if ctx.make_batches
            else LocalBatches(cfg, self.backbone, data_state)
        )
        self.mean = torch.tensor(self.backbone.preprocess_cfg["mean"], device=ctx.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.backbone.preprocess_cfg["std"], device=ctx.device).view(1, 3, 1, 1)
        self.telemetry = Telemetry(totals)
        self.eval_hook = eval_hook if self.is_main and cfg.eval.every else None
        if self.is_main and cfg.eval.every and eval_hook is None:
            log.warning(
                "eval.every is %d but no eval hook was passed to train(): zero-shot evaluation is off", cfg.eval.every
            )
        self.metrics_log = MetricsLog(self.output_dir, resumed_step=self.step) if self.is_main else None
        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            (self.output_dir / "train_config.yaml").write_text(dump_config(cfg))

    def train_step(self) -> StepResult:
        """Forward and backward over `grad_accum_steps` micro-batches, then one clipped optimizer step."""
        accum = self.cfg.optim.grad_accum_steps
        losses: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            host = next(self.batches)
            self.telemetry.count(host)
            batch = host.to_device(self.ctx.device, self.mean, self.std)
            last_micro = micro == accum - 1
            no_sync = not last_micro and hasattr(self.train_model, "no_sync")  # DDP all-reduces on the last one only
            with self.train_model.no_sync() if no_sync else contextlib.nullcontext():
                with autocast(self.ctx.device, self.cfg.precision):
                    out = self.train_model(
                        batch["images"],
                        batch["caption_tokens"],
                        batch.get("unique_description_tokens"),
                        batch.get("boxes"),
                    )
                    parts = self.criterion(out, batch)
                (parts["total"] / accum).backward()
            for key, value in parts.items():  # float64, as the logged numbers always were
                losses[key] = losses.get(key, 0.0) + value.detach().double() / accum
        grad_norm = (
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
            if self.cfg.optim.grad_clip
            else torch.zeros(())
        )
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.clamp_logit_scales(self.cfg.loss.max_logit_scale)
        return StepResult(losses, grad_norm.detach(), lr)

    def log(self, result: StepResult, last: bool) -> dict[str, float]:
        """The step's metrics, averaged (losses) or summed (counters) over ranks; rank 0 writes them."""
        data = self.telemetry.flush(self.ctx.world_size, self.ctx.device)
        reduced = distributed.all_reduce_mean(torch.stack(list(result.losses.values())))
        metrics = {f"loss/{key}": value for key, value in zip(result.losses, reduced.tolist())}
        metrics.update(
            {
                "lr": result.lr,
                "grad_norm": float(result.grad_norm),
                "logit_scale": self.model.logit_scale.detach().exp().item(),
                **data,
            }
        )
        if self.eval_hook is not None and (self.step % self.cfg.eval.every == 0 or last):
            metrics.update(self.eval_hook(self.as_loaded()))
        if self.metrics_log is not None:
            self.metrics_log.write(self.step, metrics)
        self.ctx.report(metrics)
        return metrics

    def as_loaded(self) -> LoadedModel:
        """The model being trained, as inference code sees it."""
        return loaded_model(
            self.model, self.backbone.preprocess_cfg, self.backbone.tokenizer, self.cfg.mode, self.cfg.mode
        )

    def save_checkpoint(self, metrics: dict[str, float]) -> None:
        data = {"stream": self.batches.state_dict(), "totals": self.telemetry.totals}
        save_checkpoint(
            self.output_dir, self.step, self.model, self.backbone, self.cfg.decoder, self.optimizer, self.scheduler,
            data, metrics, self.cfg.mode, self.cfg.keep_checkpoints,
        )  # fmt: skip

    def fit(self) -> TrainResult:
        """Train to `cfg.steps`; rank 0 exports the model at the end."""
        cfg = self.cfg
        metrics: dict[str, float] = {}
        self.model.train()
        with progress_bar(self.is_main, cfg.steps, self.step) as advance:
            while self.step < cfg.steps:
                result = self.train_step()
                self.step += 1
                advance()
                last = self.step == cfg.steps
                checkpoint_due = self.step % cfg.checkpoint_every == 0 or last
                if self.step % cfg.log_every == 0 or checkpoint_due:  # a checkpoint carries up-to-date counters
                    metrics = self.log(result, last)
                if self.is_main and checkpoint_due:
                    self.save_checkpoint(metrics)

        model_dir = exported_model_dir(self.output_dir)
        if self.is_main:
            export_model(self.model, self.backbone, cfg.decoder, model_dir, name=cfg.mode)
            self.metrics_log.close()
            log.info("exported %s model to %s", cfg.mode, model_dir)
        return TrainResult(output_dir=self.output_dir, model_dir=model_dir, metrics=metrics, steps=self.step)


def fit(cfg: TrainConfig, resume: str | None, ctx: WorkerContext, eval_hook: EvalHook | None = None) -> TrainResult:
    """Build, optionally resume, and train in this process (one of `ctx.world_size` ranks)."""
    return Trainer(cfg, ctx, resume, eval_hook).fit()


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, done: int) -> Iterator[Callable[[], None]]:
    if not enabled:
        yield lambda: None
        return
    columns = (TextColumn("train"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task("train", total=total, completed=done)
        yield lambda: progress.advance(task)
