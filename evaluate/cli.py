"""`grainclip evaluate` and `grainclip describe-classes` (heavy imports happen inside the commands)."""

from __future__ import annotations

from pathlib import Path

import typer

from grainclip.errors import user_errors


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def evaluate(
        config: Path = typer.Argument(..., help="Evaluate config YAML (models x datasets)."),
        out: Path = typer.Option(None, help="Output folder (overrides `out` in the config)."),
        set_: list[str] = typer.Option(
            [], "--set", help="Override a config key, e.g. --set batch_size=32 (YAML value)."
        ),
    ) -> None:
        """Zero-shot classification, retrieval and grounding metrics, with a markdown report and plots."""
        from grainclip.config.base import load_config, parse_overrides
        from grainclip.config.evaluate import EvaluateConfig

        overrides = parse_overrides(set_)
        if out is not None:
            overrides["out"] = str(out)
        cfg = load_config(config, EvaluateConfig, overrides)

        from grainclip.evaluate import evaluate as run_evaluation
        from grainclip.evaluate.report import markdown

        results = run_evaluation(cfg)
        typer.echo(markdown(results))
        typer.echo(f"report: {cfg.out / 'results.md'}")

    @app.command("describe-classes")
    @user_errors
    def describe_classes(
        classes: Path = typer.Argument(..., help="Class-name file: one class per line (`key<TAB>name` or `name`)."),
        describer: Path = typer.Option(..., help="Describer config YAML (grainclip.config.annotate.DescriberConfig)."),
        out: Path = typer.Option(
            ..., help="Descriptor JSON to write, in the Menon & Vondrick format the evaluator reads."
        ),
        caption: str = typer.Option(
            "a photo of a {}",
            help="Alt-text given to the describer; {} is the class name (an a/an before it is fitted to the name).",
        ),
    ) -> None:
        """Write visual descriptors for class names with any describer (for global+descriptors and grain modes)."""
        from grainclip.annotate.registry import build_describer
        from grainclip.config.annotate import DescriberConfig
        from grainclip.config.base import ConfigError, load_config
        from grainclip.evaluate.datasets import read_class_file
        from grainclip.evaluate.describe_classes import DescribeClassesError, write_descriptors
        from grainclip.evaluate.describe_classes import describe_classes as describe

        if caption.count("{}") != 1:
            raise ConfigError(f"--caption must contain `{{}}` once for the class name, got {caption!r}")
        names = [name for _, name in read_class_file(classes)]
        try:
            descriptors = describe(names, build_describer(load_config(describer, DescriberConfig)), caption)
        except DescribeClassesError as exc:
            typer.secho(f"error: {exc}; nothing written", err=True, fg=typer.colors.RED)
            raise typer.Exit(1) from None
        typer.echo(f"wrote descriptors for {len(descriptors)} classes to {write_descriptors(descriptors, out)}")
