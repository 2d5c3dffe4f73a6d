"""`grainclip train` command."""

from __future__ import annotations

from pathlib import Path

import typer

from grainclip.errors import NotBuiltError, user_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def train(config: Path) -> None:
        """Train GRAIN (or the CLIP baseline) from a train config."""
        raise NotBuiltError("train")
