"""Run an annotation pipeline: compile the config into a Ray Data plan, execute it, account for every row.

The plan is one streaming Ray Data pipeline:

    read source -> prepare_images (tasks) -> DescribeStage (actor pool) -> GroundStage (actor pool)
                -> commit_shard (tasks) -> one summary row per shard, streamed to this driver

(A source that carries an earlier run's descriptions replaces DescribeStage by `reuse.keep_descriptions`.)
With `describe.batches_in_flight` > 1 (the default for describers that serve batches concurrently: vllm, openai)
the describe actors are async (`InflightDescribeStage`) and work on that many batches at once.

The driver consumes the summaries as shards commit: it logs progress and stops the run when the failed
fraction of this attempt's rows exceeds `max_error_fraction`. Ray Data's own progress bars show each stage
while it runs. When an attempt ends, however it ends, duplicates are removed
(see `rundir`), counts are taken from the committed shards themselves, the manifest is finalised and the
report written. Then the optional train/evaluate steps run on the same Ray cluster.

Ray: with no address an embedded local instance is started (inside a Ray Job, RAY_ADDRESS points at the job's
cluster and the run attaches to it); with an address it attaches to that cluster. An already initialised Ray (a
test cluster, the quickstart) is reused and left running.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from grainclip import storage
from grainclip.config.pipeline import PipelineConfig, StageConfig
from grainclip.errors import USER_ERRORS
from grainclip.pipelines.manifest import Attempt, RunManifest, RunStatus
from grainclip.pipelines.preflight import check_resources, preflight, preflight_resources
from grainclip.pipelines.prepare import prepare_images
from grainclip.pipelines.rundir import RunDir, config_hash, resume_view
from grainclip.pipelines.sink import FAILED_STATUSES, commit_shard
from grainclip.pipelines.stages import DescribeStage, GroundStage, InflightDescribeStage
from grainclip.pipelines.steps import import_training_stack, plan_steps, run_steps

if TYPE_CHECKING:
    import ray
    import ray.data

log = logging.getLogger(__name__)

PROGRESS_LOG_SECONDS = 10.0
#: Blocks `object_store_mib` should hold at least (Ray Data shares it among the stages).
READ_AHEAD_MIN_BLOCKS = 16


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
    committed_before: Counter = field(default_factory=Counter)  # rows per status of earlier attempts
    error_examples: dict[str, str] = field(default_factory=dict)
    last_log: float = field(default_factory=time.monotonic)
    warned_read_ahead: bool = False

    def add(self, stats: dict[str, Any]) -> None:
        self.rows += stats["rows"]
        self.shards += 1
        self.counts.update(stats["statuses"])
        for status, example in stats["error_examples"].items():
            self.error_examples.setdefault(status, example)

    def check_errors(self, max_fraction: float, min_rows: int) -> None:
        """While the run goes on: stop it when the failed fraction of the run's rows is over the limit.

        The rows are the run's, not the attempt's: those committed before it (`committed_before`) and its own,
        as in the end-of-run check (`check_final_errors`). Checked only once `min_rows` rows are in, so one bad
        first shard does not stop a run.
        """
        counts = self.committed_before + self.counts
        rows = sum(counts.values())
        if rows < min_rows:
            return
        problem = error_fraction_problem(counts, self.error_examples, max_fraction)
        if problem is not None:
            raise ErrorFractionExceeded(
                f"stopped after {rows} rows: {problem}. Committed shards are kept; fix the cause and rerun to resume."
            )

    def check_read_ahead(self, block_bytes: int, object_store_mib: float | None) -> None:
        """Warn once when the read-ahead bound holds fewer than READ_AHEAD_MIN_BLOCKS of this run's blocks.

        Ray Data splits the bound between the stages; with room for only a few blocks each, a stage with input
        queued waits for budget instead of working, and the run crawls (seen at ~8 blocks).
        """
        if self.warned_read_ahead or object_store_mib is None:
            return
        needed = READ_AHEAD_MIN_BLOCKS * block_bytes / 2**20
        if needed > object_store_mib:
            self.warned_read_ahead = True
            log.warning(
                "blocks of %.1f MiB: object_store_mib %g holds fewer than %d of them, so the stages may wait on each "
                "other; set object_store_mib to at least %d (or lower sink.rows_per_shard)",
                block_bytes / 2**20, object_store_mib, READ_AHEAD_MIN_BLOCKS, math.ceil(needed),
            )  # fmt: skip

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


def error_fraction_problem(counts: dict[str, int], examples: dict[str, str], max_fraction: float) -> str | None:
    """'N failed rows (x% > max_error_fraction y%); status: n (e.g. ...)' when over the limit, else None.

    The one meaning of max_error_fraction: failed rows (FAILED_STATUSES) over all rows counted, mid-run and at
    the end alike.
    """
    rows = sum(counts.values())
    failed = sum(n for status, n in counts.items() if status in FAILED_STATUSES)
    if not rows or failed / rows <= max_fraction:
        return None
    detail = "; ".join(
        f"{status}: {counts[status]} (e.g. {examples.get(status) or 'no message'!r})"
        for status in sorted(FAILED_STATUSES)
        if counts.get(status)
    )
    return f"{failed} failed rows ({failed / rows:.1%} > max_error_fraction {max_fraction:.1%}); {detail}"


def check_final_errors(manifest: RunManifest, run: RunDir, max_fraction: float) -> None:
    """After a run has committed every row: the same fraction over all its committed rows, every attempt's.

    A rerun of a complete run with the same failures therefore gives the same answer (and exit status).
    """
    examples: dict[str, str] = {}
    for stats in run.read_shard_stats():
        for status, example in stats["error_examples"].items():
            examples.setdefault(status, example)
    problem = error_fraction_problem(manifest.counts, examples, max_fraction)
    if problem is not None:
        raise ErrorFractionExceeded(
            f"completed with {problem}. Every row is written (the failed ones with their error); fix the cause "
            "and rerun with --force-new-run, or raise max_error_fraction to accept them."
        )


def run_pipeline(config: PipelineConfig, address: str | None = None, force_new_run: bool = False) -> RunResult:
    """Annotate `config.source` into `config.output` (resuming a killed run), then run the configured steps.

    Storage (`config.storage`) is configured for the whole run, so the train and evaluate steps keep it."""
    import ray

    config = config.with_absolute_paths()
    with storage.configured(config.storage):  # the run's workers read the variables it names
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
            if embedded:
                end_leftover_ray(run)
            ray.init(
                address="local" if embedded else address,
                num_cpus=num_cpus,
                include_dashboard=config.dashboard if embedded else None,
                log_to_driver=True,
                # An embedded Ray's workers inherit this environment; an attached cluster's get the names here.
                runtime_env=None if embedded else storage.ray_runtime_env(),
            )
            if embedded:
                record_ray_processes(run)
        try:
            result = run_attempt(config, run, manifest, address or ("local" if embedded else "attached"), embedded)
            if steps is not None:
                result.steps = run_steps(steps, manifest, run)
            return result
        finally:
            if started_ray:
                ray.shutdown()
                storage.delete(run.ray_processes_path)


def record_ray_processes(run: RunDir) -> None:
    """Write the embedded Ray's processes (this driver's descendants) into the run directory.

    A driver killed with SIGKILL cannot shut its Ray down; the next run of the same directory ends exactly
    these processes (`end_leftover_ray`), never another Ray on the machine.
    """
    import psutil

    processes = [
        {"pid": p.pid, "name": p.name(), "create_time": p.create_time()}
        for p in psutil.Process().children(recursive=True)
    ]
    record = {"host": socket.gethostname(), "driver_pid": os.getpid(), "processes": processes}
    storage.write_text(run.ray_processes_path, json.dumps(record, indent=2))


def end_leftover_ray(run: RunDir) -> int:
    """End the recorded Ray processes of a dead driver of this run, and their children; returns how many.

    A recorded PID is only ended when its start time matches the record (no reused PIDs) and the driver that
    recorded it is gone; a record from another machine is left alone.
    """
    import psutil

    if not storage.exists(run.ray_processes_path):
        return 0
    record = json.loads(storage.read_text(run.ray_processes_path))
    if record.get("host") != socket.gethostname() or psutil.pid_exists(record.get("driver_pid", -1)):
        return 0
    leftovers = []
    for entry in record.get("processes", []):
        try:
            process = psutil.Process(entry["pid"])
            if abs(process.create_time() - entry["create_time"]) < 1.0:
                leftovers += [process, *process.children(recursive=True)]
        except psutil.Error:
            continue
    for process in leftovers:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, alive = psutil.wait_procs(leftovers, timeout=10)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    if leftovers:
        log.warning("ended %d Ray process(es) a killed run of %s left behind", len(set(leftovers)), run.root)
    storage.delete(run.ray_processes_path)
    return len(set(leftovers))


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
        manifest.duplicates_dropped += run.drop_duplicate_ids(config.sink.compression)  # a killed attempt's
        check_resources(config, ray.cluster_resources(), autoscaling=not embedded)
        done = run.committed_ids()
        attempt.rows_skipped = len(done)
        progress.committed_before = Counter(run.status_counts())
        if len(done):
            log.info("%d image(s) already committed; they are skipped", len(done))
        summaries = build_plan(config, run, manifest.run_id, ray.put(done))
        # Closed on the way out, so a stopped run's executor ends before its duplicates are dropped.
        with contextlib.closing(iter(summaries.iter_batches(batch_size=None, batch_format="pyarrow"))) as batches:
            for batch in batches:
                for line in batch.column("stats").to_pylist():
                    stats = json.loads(line)
                    progress.add(stats)
                    progress.check_read_ahead(stats["block_bytes"], config.object_store_mib)
                    progress.log_progress()
                    progress.check_errors(config.max_error_fraction, config.error_check_min_rows)
        progress.log_progress(force=True)
    except ErrorFractionExceeded as exc:
        _close_attempt(manifest, attempt, progress, "stopped", str(exc), run, config)
        raise
    except BaseException as exc:
        user_error = find_user_error(exc)
        _close_attempt(manifest, attempt, progress, "failed", f"{type(exc).__name__}: {user_error or exc}", run, config)
        if user_error is not None:
            raise user_error from None
        raise

    _close_attempt(manifest, attempt, progress, "complete", None, run, config)
    _write_report(run)
    try:
        check_final_errors(manifest, run, config.max_error_fraction)
    except ErrorFractionExceeded as exc:
        manifest.message = str(exc)
        run.write_manifest(manifest)
        raise
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
    import ray.data

    from grainclip.annotate.registry import describer_class, grounder_class

    dataset = config.source.read()
    dataset = dataset.map_batches(_prepare, batch_format="pyarrow", fn_kwargs={"done_ids": done_ids})
    in_flight = batches_in_flight(config)
    describe_stage = InflightDescribeStage if in_flight > 1 else DescribeStage
    stages = (
        (describe_stage, config.describe, config.describe.describer, describer_class, in_flight),
        (GroundStage, config.ground, config.ground.grounder, grounder_class, 1),
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
    for stage, stage_config, annotator, annotator_class, concurrency in stages:
        runtime_env = annotator_class(annotator.name).runtime_env
        kwargs = {"config": annotator, **({"batches_in_flight": concurrency} if concurrency > 1 else {})}
        dataset = _actor_stage(dataset, stage, kwargs, config, stage_config, runtime_env, concurrency)
    # No CPU slot for the commits (a bounded pool instead): Ray Data reserves CPUs for the stages in plan order, so
    # where the read and the actor pools take every slot (2 cores: read 1, describe 0.5, ground 0.5) a commit that
    # needs one waits until the read has finished -- at a million images, every annotated row held in the object
    # store, nothing committed for a kill to keep, no progress.
    summaries = dataset.map_batches(
        commit_shard,
        batch_format="pyarrow",
        batch_size=config.sink.rows_per_shard,
        fn_kwargs={"output": str(run.root), "run_id": run_id, "compression": config.sink.compression},
        num_cpus=0,
        compute=ray.data.TaskPoolStrategy(size=config.sink.commit_tasks),
    )
    if config.object_store_mib is not None:
        # Without a bound the read runs ahead until it fills half the object store: at a million 32-px images that
        # is the whole source, and the pages its workers wrote stay in their memory (benchmarks/RESULTS.md).
        context = summaries.context
        limits = context.execution_options.resource_limits
        context.execution_options.resource_limits = limits.copy(object_store_memory=config.object_store_mib * 2**20)
    return summaries


def _prepare(batch: pa.Table, done_ids: ray.ObjectRef) -> pa.Table:
    import ray

    committed: np.ndarray = ray.get(done_ids)
    return prepare_images(batch, committed)


def batches_in_flight(config: PipelineConfig) -> int:
    """Batches each describe actor works on at once: the stage config's, else the describer's default."""
    from grainclip.annotate.registry import describer_class

    return (
        config.describe.batches_in_flight or describer_class(config.describe.describer.name).default_batches_in_flight
    )


def _actor_stage(
    dataset: ray.data.Dataset,
    stage_class: type,
    annotator: dict[str, Any],
    config: PipelineConfig,
    stage: StageConfig,
    annotator_env: dict[str, Any] | None,
    concurrency: int,
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
            **actor_pool_options(stage, annotator_env, concurrency),
        )


def actor_pool_options(
    stage: StageConfig, annotator_env: dict[str, Any] | None, concurrency: int = 1
) -> dict[str, Any]:
    """map_batches keyword arguments for a model stage: actor pool, resources, restarts, runtime_env.

    `concurrency` > 1: calls each (async) actor runs at once, so that many batches can be in flight in it.

    The actors run in the annotator's own runtime_env (e.g. groundingdino-py's pip list) unless the stage
    sets one, which replaces it (e.g. a prebuilt environment via py_executable; `{}` = the main environment).
    """
    import ray.data

    options: dict[str, Any] = {
        "compute": ray.data.ActorPoolStrategy(
            min_size=stage.min_actors,
            max_size=stage.max_actors or stage.min_actors,
            max_concurrent_calls_per_actor=concurrency if concurrency > 1 else None,
        ),
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
    """Close the attempt and rewrite the manifest from what is committed on disk.

    Duplicate ids are dropped first, whatever the outcome: committed shards never keep two rows for one id,
    even in a run that stopped or failed (a killed attempt's are dropped when the next one starts).
    """
    seconds = time.monotonic() - progress.started
    manifest.duplicates_dropped += run.drop_duplicate_ids(config.sink.compression)
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
