"""`grainclip train` command."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from grainclip.errors import user_errors

if TYPE_CHECKING:
    from grainclip.config.train import TrainConfig
    from grainclip.train.trainer import EvalHook


def register(app: typer.Typer, make_eval_hook: Callable[[TrainConfig], EvalHook | None] | None = None) -> None:
    """Add `grainclip train`; `make_eval_hook(cfg)` builds the zero-shot hook (the CLI's root passes
    grainclip.evaluate's, which this package must not import)."""

    @app.command()
    @user_errors
    def train(
        config: Path = typer.Argument(..., help="Train config YAML (grainclip.config.train.TrainConfig)."),
        workers: int | None = typer.Option(None, "--workers", help="Ray Train workers (DDP); default: the config's."),
        gpu: bool = typer.Option(False, "--gpu", help="One GPU per worker."),
        address: str | None = typer.Option(None, "--address", help="Ray cluster address to attach to."),
        resume: str | None = typer.Option(None, "--resume", help="'latest' or a checkpoint folder."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config value: --set steps=100."),
    ) -> None:
        """Train GRAIN (or the CLIP baseline with mode: clip) from a train config."""
        from grainclip.config.base import load_config, parse_overrides
        from grainclip.config.train import TrainConfig

        values = parse_overrides(overrides)
        if workers is not None:
            values["workers"] = workers
        if gpu:
            values["gpu"] = True
        if address is not None:
            values["ray_address"] = address
        cfg = load_config(config, TrainConfig, values)  # config mistakes surface before torch is imported

        from grainclip.train.launch import train as run_training
        from grainclip.train.metrics import METRICS_FILE

        eval_hook = make_eval_hook(cfg) if make_eval_hook else None
        result = run_training(cfg, resume=resume, eval_hook=eval_hook)
        typer.echo(f"model: {result.model_dir}")
        typer.echo(f"metrics: {result.output_dir / METRICS_FILE}")
