"""Core commands: PartsWorld synthesis, rendering annotations, tiny offline models, the config reference."""

from __future__ import annotations

from pathlib import Path

import typer

from grainclip.errors import user_errors


def register(app: typer.Typer) -> None:
    config_app = typer.Typer(help="The config reference (docs/config.md) and example YAMLs.", no_args_is_help=True)
    app.add_typer(config_app, name="config")

    @config_app.command("docs")
    @user_errors
    def config_docs(
        out: Path = typer.Option(Path("docs/config.md"), help="Markdown file to write (run from the repository root)."),
        check: bool = typer.Option(False, "--check", help="Write nothing; exit 1 if OUT differs from the models."),
    ) -> None:
        """Write the reference of every pipeline, train and evaluate config key, generated from the models."""
        from grainclip.config.reference import reference_markdown

        text = reference_markdown()
        if check:
            if not out.is_file() or out.read_text() != text:
                typer.secho(f"error: {out} is stale: run `grainclip config docs --out {out}`", err=True, fg="red")
                raise typer.Exit(1)
            typer.echo(f"{out} is up to date")
            return
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        typer.echo(f"wrote {out}")

    @config_app.command("example")
    @user_errors
    def config_example(kind: str = typer.Argument(..., help="pipeline, train or evaluate.")) -> None:
        """Print a commented example config of KIND that loads as it is: every key, at its default."""
        from grainclip.config.reference import example_yaml

        typer.echo(example_yaml(kind), nl=False)

    @app.command()
    @user_errors
    def synth(
        out: Path = typer.Option(..., help="Output directory."),
        n: int = typer.Option(1000, help="Number of training images (seen classes)."),
        seed: int = typer.Option(0, help="Random seed; output is deterministic per seed."),
        n_test: int | None = typer.Option(None, help="Images per test split (test_seen, test_novel); default n // 4."),
        n_val: int | None = typer.Option(
            None, help="Images per validation split (val_seen, val_novel; another seed); default n_test."
        ),
        image_size: int = typer.Option(224, help="Image width and height in pixels."),
        shard_rows: int = typer.Option(1000, help="Rows per Parquet shard."),
    ) -> None:
        """Generate the built-in PartsWorld dataset (images, ground truth, class splits, descriptors)."""
        from grainclip.partsworld import generate

        paths = generate(out, n=n, seed=seed, n_test=n_test, image_size=image_size, shard_rows=shard_rows, n_val=n_val)
        typer.echo(f"wrote PartsWorld to {paths.root}")

    @app.command()
    @user_errors
    def show(
        annotations: Path = typer.Argument(..., help="Annotations Parquet file or directory."),
        out: Path = typer.Option(..., help="Output PNG path."),
        max_images: int = typer.Option(16, help="Show the first K rows."),
        columns: int = typer.Option(4, help="Images per row of the grid."),
        cell_size: int = typer.Option(256, help="Each image is scaled to fit a square of this many pixels."),
    ) -> None:
        """Render annotations (boxes and texts over images) to a PNG to look at."""
        from grainclip.show import show as render

        typer.echo(f"wrote {render(annotations, out, max_images=max_images, columns=columns, cell_size=cell_size)}")

    @app.command("tiny-models")
    @user_errors
    def tiny_models(
        out: Path | None = typer.Option(
            None, help="Output directory.", show_default="<cache>/tiny-models, which the tests use"
        ),
        only: str | None = typer.Option(None, help="Comma-separated subset, e.g. llm,owlv2.", show_default="all"),
    ) -> None:
        """Build tiny random offline models (llm, vlm, grounding-dino, owlv2, groundingdino-py, clip)."""
        from rich.console import Console
        from rich.table import Table

        from grainclip.testing import TINY_MODEL_NAMES, default_tiny_models_dir, ensure_tiny_model

        names = [name.strip() for name in only.split(",") if name.strip()] if only else list(TINY_MODEL_NAMES)
        unknown = sorted(set(names) - set(TINY_MODEL_NAMES))
        if unknown:
            raise typer.BadParameter(f"unknown {', '.join(unknown)}; choose from {', '.join(TINY_MODEL_NAMES)}")
        if out is not None and out.exists() and not out.is_dir():
            raise typer.BadParameter(f"--out {out} exists and is not a directory")
        table = Table("model", "status", "seconds", title="tiny random models (for offline tests)")
        table.add_column("folder", overflow="fold")
        for name in names:
            build = ensure_tiny_model(name, out or default_tiny_models_dir())
            status = "built" if build.built else "cached"
            table.add_row(name, status, f"{build.seconds:.1f}", str(build.path))
        Console().print(table)
