"""`grainclip pipeline ...` commands."""

from __future__ import annotations

from pathlib import Path

import typer

from grainclip.errors import NotBuiltError, user_errors

pipeline_app = typer.Typer(help="Run, submit and report on annotation pipelines.", no_args_is_help=True)


@pipeline_app.command()
@user_errors
def run(config: Path, address: str | None = typer.Option(None, help="Ray cluster address; default: embedded local Ray.")) -> None:
    """Run an annotation pipeline."""
    raise NotBuiltError("pipeline run")


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
