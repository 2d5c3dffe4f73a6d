"""Config models for annotation pipeline runs: source -> describe -> ground -> Parquet, then optional steps.

A pipeline YAML names where images come from (`source`), which annotators run and how Ray places them
(`describe`, `ground`), how output shards are written (`sink`) and where the run directory is (`output`).
Model choices live in the annotator configs (`grainclip.config.annotate`); everything about *where and how
fast* they run (actors, GPUs, batch size, runtime_env) lives in the stage config, so moving a run from a laptop
to a GPU cluster never touches the annotator settings that decide the output (see `RESUME_FIELDS`).

Relative paths are resolved against the current working directory when a run starts or is submitted
(`PipelineConfig.with_absolute_paths`); the manifest records the absolute ones. The source kinds, each with its
own fields, are in `grainclip.sources` (docs/sources.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from grainclip import storage
from grainclip.config.annotate import DescriberConfig, GrounderConfig
from grainclip.config.base import ConfigModel
from grainclip.config.storage import StorageConfig
from grainclip.sources import SourceField

#: The parts of a pipeline config that decide what the output rows contain. A rerun into an existing run
#: directory must match them exactly to resume; the other fields (resources, shard size, steps) may change.
RESUME_FIELDS: tuple[str, ...] = ("source", "describe.describer", "ground.grounder", "max_pixels")
#: Settings inside RESUME_FIELDS that only change speed or placement, never the rows: free to change on resume.
RESUME_IGNORED: tuple[str, ...] = (
    "describe.describer.batch_size",
    "describe.describer.engine.tensor_parallel_size",
    "describe.describer.engine.gpu_memory_utilization",
    "describe.describer.engine.kv_cache_memory_bytes",
    "describe.describer.engine.enforce_eager",
    "describe.describer.engine.max_num_seqs",
    "ground.grounder.batch_size",
    "ground.grounder.device",
)


class StageConfig(ConfigModel):
    """How one model stage runs on Ray: an actor pool, resources per actor, rows per call, environment.

    `batch_size` is rows per call into the stage (Ray Data batch); the annotator may split it further into
    engine calls (its own `batch_size`). For vLLM a large stage batch lets the engine schedule many
    sequences at once -- set `describer.batch_size` to the same value, or each engine call sees only that
    many. `runtime_env`, when set, replaces the annotator's own (e.g. groundingdino-py's pip list) -- point
    it at a prebuilt environment, or `{}` for the main one.
    """

    min_actors: int = Field(1, ge=1, description="Actors started (and kept) for this stage.")
    max_actors: int | None = Field(None, ge=1, description="Autoscale up to this many actors; None: min_actors.")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs per actor.")
    num_cpus: float = Field(1.0, ge=0.0, description="CPUs per actor.")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources per actor, e.g. {node_type_a100: 1} to pin a stage."
    )
    batch_size: int = Field(32, gt=0, description="Rows per call into the stage.")
    runtime_env: dict[str, Any] | None = Field(
        None, description="Ray runtime_env for this stage's actors; None: the annotator's own."
    )
    max_restarts: int = Field(3, ge=0, description="Crash restarts per actor before the run fails.")
    max_task_retries: int = Field(3, ge=0, description="Retries of a batch whose actor died.")

    @model_validator(mode="after")
    def _pool_bounds(self) -> StageConfig:
        if self.max_actors is not None and self.max_actors < self.min_actors:
            raise ValueError(f"max_actors ({self.max_actors}) is below min_actors ({self.min_actors})")
        return self


class DescribeStageConfig(StageConfig):
    describer: DescriberConfig = Field(default_factory=DescriberConfig)
    batches_in_flight: int | None = Field(
        None,
        gt=0,
        description="Batches each describe actor works on at once, so the engine (vllm) or endpoint pool (openai) "
        "never waits for the slowest answer of one batch before the next arrives; > 1 needs a describer with "
        "describe_async. None: the describer's default (vllm, openai 32; 1 for the others).",
    )


class GroundStageConfig(StageConfig):
    grounder: GrounderConfig = Field(default_factory=GrounderConfig)


class SinkConfig(ConfigModel):
    """Output shards: at most `rows_per_shard` rows each, committed atomically one file at a time."""

    rows_per_shard: int = Field(1000, gt=0, description="Most rows per output shard.")
    compression: Literal["zstd", "snappy", "gzip", "lz4", "brotli", "none"] = Field(
        "zstd", description="Parquet compression codec."
    )
    commit_tasks: int = Field(
        2,
        ge=1,
        description="Commit tasks running at once. They hold no CPU slot: Ray Data makes a task that cannot get its "
        "CPU wait until the stages above it finish, so commits would wait for the whole source to be read.",
    )


class JobConfig(ConfigModel):
    """What `grainclip pipeline submit` adds to the Ray Job (the cluster must have grainclip installed)."""

    runtime_env: dict[str, Any] = Field(
        default_factory=dict, description="Job-level runtime_env (pip, env_vars, ...); working_dir is set by submit."
    )
    entrypoint_num_cpus: float = Field(0.0, ge=0.0, description="CPUs reserved for the job's driver.")


class TrainStep(ConfigModel):
    """Train after annotation (Ray Train, on the same cluster) on this run's annotations.

    `data.train` is set to OUT/annotations and `output_dir` defaults to OUT/train; workers and GPUs come from
    the train YAML. Skipped on rerun once the exported model exists (see grainclip.pipelines.steps).
    """

    config: str = Field(..., description="Path of a train YAML (grainclip.config.train.TrainConfig).")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted-key overrides of that config.")


class EvaluateStep(ConfigModel):
    """Evaluate the trained model (added to the YAML's `models`) as a Ray task on the cluster.

    `out` defaults to OUT/evaluate. Skipped on rerun once its results.json exists.
    """

    config: str = Field(..., description="Path of an evaluate YAML (grainclip.config.evaluate.EvaluateConfig).")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Dotted-key overrides of that config.")
    num_cpus: float = Field(1.0, ge=0.0, description="CPUs of the evaluation task.")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs of the evaluation task.")


class PipelineConfig(ConfigModel):
    """One annotation run: read `source`, describe, ground, write `output`/annotations; then optional steps."""

    output: str = Field(
        ..., description="Run directory (a folder or s3://bucket/prefix): annotations/, manifest.json, report/."
    )
    source: SourceField = Field(..., description="Where the images come from: `kind` plus that kind's fields.")
    describe: DescribeStageConfig = Field(
        default_factory=DescribeStageConfig, description="The describe stage: its Ray actors and its describer (LLM)."
    )
    ground: GroundStageConfig = Field(
        default_factory=GroundStageConfig, description="The ground stage: its Ray actors and its grounder (detector)."
    )
    sink: SinkConfig = Field(default_factory=SinkConfig)
    max_pixels: int | None = Field(
        None, gt=0, description="Decode limit per image; None: grainclip.images.DEFAULT_MAX_PIXELS."
    )
    object_store_mib: float | None = Field(
        256,
        gt=0,
        description="Most MiB of Ray's object store this run's blocks hold at once, over the whole cluster (Ray "
        "Data's resource limit). It bounds how far the read runs ahead of the annotators, so memory does not grow "
        "with the source's size; null: Ray Data's default, half the object store. Give it at least 16 blocks of "
        "sink.rows_per_shard rows (the run warns when it holds fewer; sizing in docs/cluster.md).",
    )
    max_error_fraction: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Stop when more than this fraction of rows failed (any *_failed/invalid status).",
    )
    error_check_min_rows: int = Field(
        200, gt=0, description="Rows processed before the error fraction is checked (avoids stopping on one bad shard)."
    )
    dashboard: bool = Field(
        False,
        description="Start Ray's dashboard with an embedded Ray (an attached cluster has its own). It costs ~300 MiB "
        "in a dozen processes, and its memory grows with the tasks run.",
    )
    storage: StorageConfig = Field(
        default_factory=StorageConfig,
        description="Object storage (s3://): the environment variables holding its endpoint and credentials (names "
        "only); unset: the standard AWS variables.",
    )
    job: JobConfig = Field(default_factory=JobConfig)
    train: TrainStep | None = None
    evaluate: EvaluateStep | None = None

    @model_validator(mode="after")
    def _reused_descriptions_need_no_describer(self) -> PipelineConfig:
        """A source that carries descriptions (annotations_run) runs no describer: one set in YAML is a mistake."""
        if self.source.carries_descriptions and self.describe.describer != DescriberConfig():
            raise ValueError(
                f"source kind {self.source.kind!r} keeps that run's descriptions, so no describer runs: remove "
                "`describe.describer` (a describer change re-runs both stages: use that run's own source)"
            )
        return self

    @model_validator(mode="after")
    def _partsworld_annotators_read_the_source_truth(self) -> PipelineConfig:
        """The simulated annotators need the generator's truth; default it to the one the source comes with."""
        truth = self.source.annotator_truth()
        if truth is not None:
            annotators = (self.ground.grounder,) if self.source.carries_descriptions else ()
            for annotator in annotators or (self.describe.describer, self.ground.grounder):
                if annotator.name == "partsworld" and "truth" not in annotator.options:
                    annotator.options = {**annotator.options, "truth": truth}
        return self

    @model_validator(mode="after")
    def _evaluate_needs_a_trained_model(self) -> PipelineConfig:
        if self.evaluate is not None and self.train is None:
            raise ValueError("an `evaluate` step needs a `train` step before it (it evaluates that model)")
        return self

    def with_absolute_paths(self, base: Path | None = None) -> PipelineConfig:
        """This config with relative paths resolved against `base` (default: the current directory).

        Runs record absolute paths, so the resume hash does not depend on where a run was started from and a
        submitted job (which runs in a temporary working dir) finds the same files. Fields that are always
        paths are resolved; free-form strings (annotator `model`, `options` values) only when they name
        something that exists here, so hub ids such as `Qwen/Qwen2.5-VL-7B-Instruct` stay ids.
        """
        base = (base or Path.cwd()).resolve()

        def resolve(value: str) -> str:
            return value if Path(value).is_absolute() else str(base / value)

        def resolve_if_local(value: Any) -> Any:
            if isinstance(value, str) and value and not Path(value).is_absolute() and (base / value).exists():
                return str(base / value)
            return value

        data = self.model_dump(mode="json")
        data["output"] = data["output"] if storage.is_uri(data["output"]) else resolve(data["output"])
        data["source"] = self.source.with_base(base).model_dump(mode="json")
        for stage, key in (("describe", "describer"), ("ground", "grounder")):
            annotator = data[stage][key]
            annotator["model"] = resolve_if_local(annotator["model"])
            annotator["options"] = {k: resolve_if_local(v) for k, v in annotator["options"].items()}
        for step in ("train", "evaluate"):
            if data.get(step):
                data[step]["config"] = resolve(data[step]["config"])
        return PipelineConfig.model_validate(data)
