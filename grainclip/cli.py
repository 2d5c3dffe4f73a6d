"""`grainclip` command line. Each domain contributes its commands from its own `cli` module.

Those modules import only typer and config at import time (heavy libraries are imported inside the
commands), so `grainclip --help` stays fast and an annotation node needs no training stack.
"""

from __future__ import annotations

import logging

import typer

from grainclip import core_cli
from grainclip.evaluate import cli as evaluate_cli
from grainclip.evaluate.hook import zero_shot_hook
from grainclip.pipelines import cli as pipelines_cli
from grainclip.pipelines import quickstart
from grainclip.train import cli as train_cli

app = typer.Typer(
    name="grainclip",
    help="GRAIN at scale: synthetic region annotations, Ray pipelines, grounded CLIP pre-training, evaluation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


core_cli.register(app)
pipelines_cli.register(app)
quickstart.register(app)
train_cli.register(app, make_eval_hook=zero_shot_hook)  # train must not import evaluate: the hook comes in
evaluate_cli.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
