"""`grainclip pipeline run/submit/status/logs/report/compare`: drive annotation runs locally or on a Ray cluster.

Only typer and config are imported here; Ray and the pipeline modules load inside the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from grainclip.config.base import parse_overrides
from grainclip.errors import user_errors

pipeline_app = typer.Typer(help="Run, submit and report on annotation pipelines.", no_args_is_help=True)

ADDRESS_HELP = "Ray Jobs API address of the cluster head, e.g. http://HEAD:8265."


def is_disk_full(error: BaseException) -> bool:
    """Whether ENOSPC is behind `error` (Ray wraps a task's OSError; the errno may only survive in the text)."""
    import errno

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if getattr(current, "errno", None) == errno.ENOSPC or "No space left on device" in str(current):
            return True
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return False


def disk_full_message(output: str) -> str:
    return (
        f"no space left on device while writing the run to {output}; the committed shards are kept -- free "
        "space and rerun the same command to resume"
    )


def print_table(rows: list[tuple[str, str]], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for field, value in rows:
        table.add_row(field, value)
    Console().print(table)


@pipeline_app.command()
@user_errors
def run(
    config: Path = typer.Argument(..., help="Pipeline YAML."),
    address: str | None = typer.Option(
        None, help="Ray cluster to attach to (ray://... or HOST:PORT); default: embedded local Ray."
    ),
    force_new_run: bool = typer.Option(
        False, "--force-new-run", help="Move an existing run with a different config to _superseded/ and start over."
    ),
    set_: list[str] = typer.Option([], "--set", help="Override a config key: --set output=runs/x (repeatable)."),
) -> None:
    """Run an annotation pipeline (resumes an interrupted run in the same output directory)."""
    from grainclip.config.base import load_config
    from grainclip.config.pipeline import PipelineConfig
    from grainclip.pipelines.report import summary_rows
    from grainclip.pipelines.runner import PipelineError, run_pipeline

    cfg = load_config(config, PipelineConfig, overrides=parse_overrides(set_))
    try:
        result = run_pipeline(cfg, address=address, force_new_run=force_new_run)
    except PipelineError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        typer.secho(f"error: {disk_full_message(cfg.output)}", err=True, fg=typer.colors.RED)
        raise typer.Exit(1) from None
    print_table(summary_rows(result.manifest), title=f"pipeline run {result.output}")
    for step, outcome in result.steps.items():
        typer.echo(f"step {step}: {outcome}")


@pipeline_app.command()
@user_errors
def submit(
    config: Path = typer.Argument(..., help="Pipeline YAML."),
    address: str = typer.Option(..., help=ADDRESS_HELP),
    force_new_run: bool = typer.Option(False, "--force-new-run", help="Passed to the run on the cluster."),
    wait: bool = typer.Option(False, help="Wait for the job to end, print its log, exit non-zero if it failed."),
) -> None:
    """Submit the pipeline to a Ray cluster as a Ray Job and print its job id."""
    from grainclip.pipelines import jobs

    job_id = jobs.submit(config, address, force_new_run=force_new_run)
    typer.echo(job_id)
    if wait:
        state, message = jobs.wait(job_id, address)
        sys.stdout.write(jobs.logs(job_id, address))
        typer.echo(f"job {job_id}: {state}" + (f" ({message})" if message else ""))
        if state != "SUCCEEDED":
            raise typer.Exit(1)


@pipeline_app.command()
@user_errors
def status(
    job_id: str = typer.Argument(..., help="Job id printed by `submit`."),
    address: str = typer.Option(..., help=ADDRESS_HELP),
) -> None:
    """Print a submitted job's status (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED)."""
    from grainclip.pipelines import jobs

    state, message = jobs.status(job_id, address)
    typer.echo(state + (f": {message}" if message else ""))


@pipeline_app.command()
@user_errors
def logs(
    job_id: str = typer.Argument(..., help="Job id printed by `submit`."),
    address: str = typer.Option(..., help=ADDRESS_HELP),
    follow: bool = typer.Option(False, "--follow", "-f", help="Stream the log until the job ends."),
) -> None:
    """Print a submitted job's log."""
    from grainclip.pipelines import jobs

    if follow:
        jobs.follow_logs(job_id, address, sys.stdout.write)
    else:
        sys.stdout.write(jobs.logs(job_id, address))


@pipeline_app.command()
@user_errors
def report(
    output: str = typer.Argument(..., help="Run directory (the pipeline's `output`), a folder or s3://."),
) -> None:
    """Print a run's table (statuses, throughput, annotators) and write its PNG plots under OUT/report/."""
    from grainclip.pipelines.report import report as make_report

    rows, plots = make_report(output)
    print_table(rows, title=f"pipeline run {output}")
    for path in plots:
        typer.echo(f"wrote {path}")


@pipeline_app.command()
@user_errors
def compare(
    runs: list[Path] = typer.Argument(..., help="RUN_A [RUN_B]: run directories (the pipelines' `output`)."),
    out: Path = typer.Option(..., "--out", help="Folder for compare.json, compare.md and the PNGs."),
    truth: Path | None = typer.Option(
        None, "--truth", help="PartsWorld truth folder, or a COCO-style JSON of phrase + bbox per image_id."
    ),
) -> None:
    """Compare two runs on the image_ids they share (and/or score them against --truth)."""
    from grainclip.pipelines.compare import compare as compare_runs

    result, warnings = compare_runs(runs, out, truth)
    for warning in warnings:
        typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
    typer.echo(f"compared {len(runs)} run(s) on {result['shared']['image_ids']} shared image_ids: {out}/compare.md")


def register(app: typer.Typer) -> None:
    app.add_typer(pipeline_app, name="pipeline")
