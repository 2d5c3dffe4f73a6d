"""Core commands: PartsWorld synthesis, rendering annotations, tiny offline models, the quickstart."""

from __future__ import annotations

from pathlib import Path

import typer

from grainclip.errors import NotBuiltError, user_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def synth(
        out: Path = typer.Option(..., help="Output directory."),
        n: int = typer.Option(1000, help="Number of training images (seen classes)."),
        seed: int = typer.Option(0, help="Random seed; output is deterministic per seed."),
    ) -> None:
        """Generate the built-in PartsWorld dataset (images, ground truth, class splits, descriptors)."""
        raise NotBuiltError("synth (PartsWorld generator)")

    @app.command()
    @user_errors
    def show(
        annotations: Path = typer.Argument(..., help="Annotations Parquet file or directory."),
        out: Path = typer.Option(..., help="Output PNG path."),
    ) -> None:
        """Render annotations (boxes and texts over images) to a PNG to look at."""
        raise NotBuiltError("show")

    @app.command("tiny-models")
    @user_errors
    def tiny_models(out: Path = typer.Option(..., help="Output directory.")) -> None:
        """Build tiny random offline models (llm, vlm, grounding-dino, owlv2, groundingdino-py, clip)."""
        raise NotBuiltError("tiny-models")

    @app.command()
    @user_errors
    def quickstart(out: Path = typer.Option(Path("runs/quickstart"), help="Output directory.")) -> None:
        """Whole flow offline: PartsWorld -> annotation pipeline -> train GRAIN and CLIP -> evaluate -> report."""
        raise NotBuiltError("quickstart")
