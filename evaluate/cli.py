"""`grainclip evaluate` command."""

from __future__ import annotations

from pathlib import Path

import typer

from grainclip.errors import NotBuiltError, user_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def evaluate(config: Path) -> None:
        """Zero-shot classification, retrieval and grounding metrics with a report."""
        raise NotBuiltError("evaluate")
