"""Run an annotation pipeline: compile the config into a Ray Data plan, execute it, account for every row.

The plan is one streaming Ray Data pipeline:

    read source -> prepare_images (tasks) -> DescribeStage (actor pool) -> GroundStage (actor pool)
                -> commit_shard (tasks) -> one summary row per shard, streamed to this driver

(A source that carries an earlier run's descriptions replaces DescribeStage by `reuse.keep_descriptions`.)

The driver consumes the summaries as shards commit: it logs progress and stops the run when the failed
fraction of this attempt's rows exceeds `max_error_fraction`. Ray Data's own progress bars show each stage
while it runs. When the stream ends, duplicates are removed
(see `rundir`), counts are taken from the committed shards themselves, the manifest is finalised and the
report written. Then the optional train/evaluate steps run on the same Ray cluster.

Ray: with no address an embedded local instance is started (inside a Ray Job, RAY_ADDRESS points at the job's
cluster and the run attaches to it); with an address it attaches to that cluster. An already initialised Ray (a
test cluster, the quickstart) is reused and left running.
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from grainclip.config.pipeline import PipelineConfig, StageConfig
from grainclip.errors import USER_ERRORS
from grainclip.pipelines.manifest import Attempt, RunManifest, RunStatus
from grainclip.pipelines.preflight import check_resources, preflight, preflight_resources
from grainclip.pipelines.prepare import prepare_images
from grainclip.pipelines.rundir import RunDir, config_hash, resume_view
from grainclip.pipelines.sink import FAILED_STATUSES, commit_shard
from grainclip.pipelines.stages import DescribeStage, GroundStage
from grainclip.pipelines.steps import import_training_stack, plan_steps, run_steps

if TYPE_CHECKING:
    import ray
    import ray.data

log = logging.getLogger(__name__)

PROGRESS_LOG_SECONDS = 10.0


class PipelineError(RuntimeError):
    """The run could not finish; the message says why and what to do. Committed shards are kept for resume."""


class ErrorFractionExceeded(PipelineError):
    """Too many rows failed; the run stopped early so a broken annotator does not burn the whole budget."""


@dataclass
class RunResult:
    """What a finished annotation run produced (the manifest has the full record)."""

    output: Path | str
    run_id: str
    rows: int
    counts: dict[str, int]
    rows_this_attempt: int
    rows_skipped: int
    duplicates_dropped: int
    manifest: RunManifest
    steps: dict[str, str] = field(default_factory=dict)

    @property
    def annotations(self) -> Path | str:
        return RunDir(self.output).annotations


@dataclass
class AttemptProgress:
    """Running totals of this attempt, fed by the shard summaries as they arrive."""

    started: float = field(default_factory=time.monotonic)
    rows: int = 0
    shards: int = 0
    counts: Counter = field(default_factory=Counter)
    error_examples: dict[str, str] = field(default_factory=dict)
    last_log: float = field(default_factory=time.monotonic)

    def add(self, stats: dict[str, Any]) -> None:
        self.rows += stats["rows"]
        self.shards += 1
        self.counts.update(stats["statuses"])
        for status, example in stats["error_examples"].items():
            self.error_examples.setdefault(status, example)

    @property
    def failed(self) -> int:
        return sum(n for status, n in self.counts.items() if status in FAILED_STATUSES)

    def check_errors(self, max_fraction: float, min_rows: int, final: bool = False) -> None:
        """Raise ErrorFractionExceeded when the failed fraction is over the limit (after `min_rows` rows)."""
        if not self.rows or (self.rows < min_rows and not final):
            return
        fraction = self.failed / self.rows
        if fraction <= max_fraction:
            return
        detail = "; ".join(
            f"{status}: {self.counts[status]} (e.g. {self.error_examples.get(status) or 'no message'!r})"
            for status in sorted(FAILED_STATUSES)
            if self.counts.get(status)
        )
        raise ErrorFractionExceeded(
            f"stopped: {self.failed} of {self.rows} rows failed ({fraction:.1%} > max_error_fraction "
            f"{max_fraction:.1%}). {detail}. Committed shards are kept; fix the cause and rerun to resume."
        )

    def log_progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_log < PROGRESS_LOG_SECONDS:
            return
        self.last_log = now
        elapsed = max(now - self.started, 1e-9)
        counts = ", ".join(f"{status} {n}" for status, n in sorted(self.counts.items()))
        log.info(
            "committed %d shard(s), %d rows (%s), %.1f rows/s", self.shards, self.rows, counts, self.rows / elapsed
        )


def run_pipeline(config: PipelineConfig, address: str | None = None, force_new_run: bool = False) -> RunResult:
    """Annotate `config.source` into `config.output` (resuming a killed run), then run the configured steps."""
    import ray

    config = config.with_absolute_paths()
    preflight(config, address)
    run = RunDir(config.output)
    run_id, previous = run.open(config, force_new_run)
    preflight_resources(config, address)
    view = resume_view(config)
    manifest = previous or RunManifest.new(run_id, view, config_hash(view))
    if config.source.carries_descriptions:  # an earlier run's descriptions are kept (grainclip.pipelines.reuse)
        from grainclip.pipelines.reuse import check_unchanged

        if previous is not None:
            check_unchanged(config.source, previous)
        manifest.descriptions_from = config.source.provenance()
    log.info("%s run %s in %s", "resuming" if previous else "starting", run_id, run.root)
    steps = plan_steps(config, run)  # a mistake in a step's config fails now, not after the annotation
    if steps is not None:
        import_training_stack()

    started_ray = not ray.is_initialized()
    embedded = started_ray and address is None and not os.environ.get("RAY_ADDRESS")
    if started_ray:
        # "local" forces a new embedded instance: a bare ray.init() would attach to whatever cluster this
        # machine last started with `ray start`.
        # An embedded Ray gets at least the CPUs the train step needs, or its data pipeline never starts on
        # a small machine (Ray's CPU count is a scheduling token, not a thread count).
        num_cpus = max(os.cpu_count() or 1, steps.min_cpus) if embedded and steps is not None else None
        ray.init(address="local" if embedded else address, num_cpus=num_cpus, log_to_driver=True)
    try:
        result = run_attempt(config, run, manifest, address or ("local" if embedded else "attached"), embedded)
        if steps is not None:
            result.steps = run_steps(steps, manifest, run)
        return result
    finally:
        if started_ray:
            ray.shutdown()


def run_attempt(
    config: PipelineConfig, run: RunDir, manifest: RunManifest, ray_address: str, embedded: bool
) -> RunResult:
    """One attempt of the annotation plan on the connected Ray, recorded in the manifest whatever happens."""
    import ray

    attempt = manifest.start_attempt(config, ray_address)
    run.write_manifest(manifest)
    progress = AttemptProgress()
    try:
        stale = run.remove_stale_temp_files()
        if stale:
            log.info("removed %d temp file(s) left by a killed attempt", stale)
        check_resources(config, ray.cluster_resources(), autoscaling=not embedded)
        done = run.committed_ids()
        attempt.rows_skipped = len(done)
        if len(done):
            log.info("%d image(s) already committed; they are skipped", len(done))
        summaries = build_plan(config, run, manifest.run_id, ray.put(done))
        for batch in summaries.iter_batches(batch_size=None, batch_format="pyarrow"):
            for line in batch.column("stats").to_pylist():
                progress.add(json.loads(line))
                progress.log_progress()
                progress.check_errors(config.max_error_fraction, config.error_check_min_rows)
        progress.log_progress(force=True)
        progress.check_errors(config.max_error_fraction, config.error_check_min_rows, final=True)
        duplicates = run.drop_duplicate_ids(config.sink.compression)
    except ErrorFractionExceeded as exc:
        _close_attempt(manifest, attempt, progress, "stopped", str(exc), run, config)
        raise
    except BaseException as exc:
        user_error = find_user_error(exc)
        _close_attempt(manifest, attempt, progress, "failed", f"{type(exc).__name__}: {user_error or exc}", run, config)
        if user_error is not None:
            raise user_error from None
        raise

    manifest.duplicates_dropped += duplicates
    _close_attempt(manifest, attempt, progress, "complete", None, run, config)
    _write_report(run)
    log.info(
        "run %s complete: %d rows in %s (%s)",
        manifest.run_id,
        manifest.rows,
        run.annotations,
        ", ".join(f"{k} {v}" for k, v in manifest.counts.items()),
    )
    return RunResult(
        output=run.root,
        run_id=manifest.run_id,
        rows=manifest.rows,
        counts=manifest.counts,
        rows_this_attempt=progress.rows,
        rows_skipped=attempt.rows_skipped,
        duplicates_dropped=manifest.duplicates_dropped,
        manifest=manifest,
    )


def build_plan(config: PipelineConfig, run: RunDir, run_id: str, done_ids: ray.ObjectRef) -> ray.data.Dataset:
    """The lazy Ray Data plan; nothing runs until the caller iterates it."""
    from grainclip.annotate.registry import describer_class, grounder_class

    dataset = config.source.read()
    dataset = dataset.map_batches(_prepare, batch_format="pyarrow", fn_kwargs={"done_ids": done_ids})
    stages = (
        (DescribeStage, config.describe, config.describe.describer, describer_class),
        (GroundStage, config.ground, config.ground.grounder, grounder_class),
    )
    if config.source.carries_descriptions:  # no describer is built: the rows keep an earlier run's descriptions
        from grainclip.pipelines.reuse import keep_descriptions, reuse_kwargs

        kwargs = reuse_kwargs(config.source)
        dataset = dataset.map_batches(keep_descriptions, batch_format="pyarrow", fn_kwargs=kwargs)
        stages = stages[1:]
    # Blocks of one shard's rows: each flows through the stages as a unit and is committed as soon as it is
    # grounded, so progress streams and a kill loses at most the shards in flight. (Readers otherwise make
    # blocks of up to 128 MiB, i.e. thousands of images that would all commit at the very end.)
    dataset = dataset.repartition(target_num_rows_per_block=config.sink.rows_per_shard)
    for stage, stage_config, annotator, annotator_class in stages:
        runtime_env = annotator_class(annotator.name).runtime_env
        dataset = _actor_stage(dataset, stage, {"config": annotator}, config, stage_config, runtime_env)
    return dataset.map_batches(
        commit_shard,
        batch_format="pyarrow",
        batch_size=config.sink.rows_per_shard,
        fn_kwargs={"output": str(run.root), "run_id": run_id, "compression": config.sink.compression},
    )


def _prepare(batch: pa.Table, done_ids: ray.ObjectRef) -> pa.Table:
    import ray

    committed: np.ndarray = ray.get(done_ids)
    return prepare_images(batch, committed)


def _actor_stage(
    dataset: ray.data.Dataset,
    stage_class: type,
    annotator: dict[str, Any],
    config: PipelineConfig,
    stage: StageConfig,
    annotator_env: dict[str, Any] | None,
) -> ray.data.Dataset:
    with warnings.catch_warnings():
        # Ray 2.60 has no named map_batches parameter for max_restarts/max_task_retries; they go through
        # **ray_remote_args, which warns that the catch-all is deprecated.
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
        return dataset.map_batches(
            stage_class,
            fn_constructor_kwargs={**annotator, "max_pixels": config.max_pixels},
            batch_format="pyarrow",
            batch_size=stage.batch_size,
            **actor_pool_options(stage, annotator_env),
        )


def actor_pool_options(stage: StageConfig, annotator_env: dict[str, Any] | None) -> dict[str, Any]:
    """map_batches keyword arguments for a model stage: actor pool, resources, restarts, runtime_env.

    The actors run in the annotator's own runtime_env (e.g. groundingdino-py's pip list) unless the stage
    sets one, which replaces it (e.g. a prebuilt environment via py_executable; `{}` = the main environment).
    """
    import ray.data

    options: dict[str, Any] = {
        "compute": ray.data.ActorPoolStrategy(min_size=stage.min_actors, max_size=stage.max_actors or stage.min_actors),
        "num_cpus": stage.num_cpus,
        # Bounded, unlike Ray Data's default (restart forever): a backend that keeps crashing fails the run.
        "max_restarts": stage.max_restarts,
        "max_task_retries": stage.max_task_retries,
    }
    if stage.num_gpus:
        options["num_gpus"] = stage.num_gpus
    if stage.resources:
        options["resources"] = stage.resources
    env = annotator_env if stage.runtime_env is None else stage.runtime_env
    if env:
        options["runtime_env"] = env
    return options


def find_user_error(error: BaseException) -> BaseException | None:
    """The user mistake (bad config, bad source, missing file) behind an error Ray raised, if any.

    Ray wraps an exception from a task or actor constructor in its own types; the original is on the
    `cause` attribute or the `__cause__` chain.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, USER_ERRORS) and type(current).__module__.startswith(("grainclip", "builtins")):
            return current
        current = getattr(current, "cause", None) or current.__cause__
    return None


def _close_attempt(
    manifest: RunManifest,
    attempt: Attempt,
    progress: AttemptProgress,
    status: RunStatus,
    message: str | None,
    run: RunDir,
    config: PipelineConfig,
) -> None:
    """Close the attempt and rewrite the manifest from what is committed on disk."""
    seconds = time.monotonic() - progress.started
    manifest.close_attempt(
        attempt, status, message, progress.rows, seconds, run.status_counts(), run.read_shard_stats(), config
    )
    run.write_manifest(manifest)


def _write_report(run: RunDir) -> None:
    from grainclip.pipelines.report import write_plots

    try:
        write_plots(run)
    except Exception:  # noqa: BLE001 -- the annotations are done; a plotting problem must not fail the run
        log.exception("could not write the report plots under %s", run.report_dir)
