"""`grainclip evaluate` command (heavy imports happen inside the command)."""

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
        set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set batch_size=32 (YAML value)."),
    ) -> None:
        """Zero-shot classification, retrieval and grounding metrics, with a markdown report and plots."""
        import yaml

        from grainclip.config.base import ConfigError, load_config
        from grainclip.config.evaluate import EvaluateConfig

        overrides = {}
        for item in set_:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
            overrides[key] = yaml.safe_load(value)
        if out is not None:
            overrides["out"] = str(out)
        cfg = load_config(config, EvaluateConfig, overrides)

        from grainclip.evaluate import evaluate as run_evaluation
        from grainclip.evaluate.report import markdown

        results = run_evaluation(cfg)
        typer.echo(markdown(results))
        typer.echo(f"report: {cfg.out / 'results.md'}")
