"""Exactly-once resume under real SIGKILLs: the driver of a 1000-image run is killed midway, the rerun has one
of its describe actors killed midway, and the output still holds every input image exactly once. The same for a
grounder swap that reuses an earlier run's descriptions (its ground actor is the one killed).

Simulated PartsWorld annotators keep the run itself cheap; what is under test is Ray, the commit protocol and
the resume bookkeeping. Runs are separate `grainclip pipeline run` processes (each with its embedded Ray), so
a SIGKILL hits a real driver; every process they started is killed by pid at the end. One more run uses the real
tiny vLLM describer with batches in flight and has its engine core killed midway.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from grainclip.partsworld import generate
from grainclip.schema import read_table
from grainclip.testing.runs import PipelineProcess

pytestmark = pytest.mark.slow

N_IMAGES = 1000
ROWS_PER_SHARD = 10


def committed_rows(annotations: Path) -> int:
    if not annotations.is_dir():
        return 0
    total = 0
    for path in annotations.glob("part-*.parquet"):
        try:
            total += pq.read_metadata(path).num_rows
        except OSError:  # renamed into place between glob and read: count it next time
            continue
    return total


def digests(annotations: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in annotations.glob("part-*.parquet")}


def killed_twice(config: Path, out: Path, stage: str, total: int, logs: Path) -> tuple[int, dict[str, str], str]:
    """Attempt 1: SIGKILL the driver once a few shards are committed. Attempt 2 (same config, so it resumes):
    SIGKILL one `stage` actor once it is working, and let the run finish.

    Returns the rows committed when attempt 1 died, their shards' digests, and attempt 2's log.
    """
    annotations = out / "annotations"
    first = PipelineProcess(config, logs / "attempt1.log")
    try:
        first.wait_until(lambda: committed_rows(annotations) >= 5 * ROWS_PER_SHARD)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=30)
    finally:
        first.kill_everything()  # Ray's agents and actors outlive a SIGKILLed driver
    time.sleep(1)
    after_kill = committed_rows(annotations)
    assert 0 < after_kill < total, "the kill must land midway"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"  # the killed attempt never got to close its record
    before = digests(annotations)

    log = run_with_one_kill(config, annotations, logs / "attempt2.log", stage, after_kill + 2 * ROWS_PER_SHARD, total)
    return after_kill, before, log


def run_with_one_kill(
    config: Path, annotations: Path, log_path: Path, process: str, after_rows: int, total: int, start_timeout=240.0
) -> str:
    """Run `config`; once `after_rows` rows are committed, SIGKILL one process whose name or command line holds
    `process`, and let the run finish. Asserts it ended well and that the kill landed before its end; the log."""
    run = PipelineProcess(config, log_path)
    try:
        run.wait_until(lambda: committed_rows(annotations) >= after_rows, timeout=start_timeout)
        found = run.named(process)
        assert found, f"no {process} process found"
        killed_while_running = committed_rows(annotations) < total
        found[0].send_signal(signal.SIGKILL)
        returncode = run.process.wait(timeout=600)
    finally:
        run.kill_everything()
    log = log_path.read_text()
    assert returncode == 0, log[-4000:]
    assert killed_while_running, f"the {process} kill must land before the run ends"
    return log


def assert_exactly_once(out: Path, inputs: list[str], after_kill: int, before: dict[str, str], log: str) -> dict:
    """Every input image once, finished shards not redone; returns the manifest."""
    annotations = out / "annotations"
    table = read_table(annotations, "annotations", columns=["image_id", "status"])
    ids = table.column("image_id").to_pylist()
    assert len(ids) == len(inputs) and len(set(ids)) == len(inputs)
    assert set(ids) == set(inputs)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rows"] == len(inputs)
    assert sum(manifest["counts"].values()) == len(inputs)
    first_attempt, second_attempt = manifest["attempts"]
    assert first_attempt["status"] == "interrupted" and second_attempt["status"] == "complete"
    # Finished shards were not redone: skipped + annotated now == input, and the old files are untouched.
    assert second_attempt["rows_skipped"] == after_kill
    assert second_attempt["rows_skipped"] + second_attempt["rows"] - manifest["duplicates_dropped"] == len(inputs)
    assert {name: digest for name, digest in digests(annotations).items() if name in before} == before
    assert "already committed; they are skipped" in log
    return manifest


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_sigkilled_driver_and_worker_actor_leave_every_image_exactly_once(tmp_path: Path):
    generate(tmp_path / "pw", n=N_IMAGES, seed=3, n_test=1, image_size=32)
    inputs = read_table(tmp_path / "pw" / "train" / "images", "images", columns=["image_id"]).column("image_id")
    assert len(inputs) == N_IMAGES
    out = tmp_path / "run"
    config = write_config(
        tmp_path / "pipeline.yaml",
        {
            "output": str(out),
            "source": {"kind": "partsworld", "path": str(tmp_path / "pw")},
            "describe": {"num_cpus": 0.25, "batch_size": ROWS_PER_SHARD, "max_restarts": 2},
            "ground": {"num_cpus": 0.25, "batch_size": ROWS_PER_SHARD},
            "sink": {"rows_per_shard": ROWS_PER_SHARD},
        },
    )
    after_kill, before, log = killed_twice(config, out, "DescribeStage", N_IMAGES, tmp_path)
    manifest = assert_exactly_once(out, inputs.to_pylist(), after_kill, before, log)
    assert set(manifest["counts"]) <= {"ok", "no_regions"}


def test_a_grounder_swap_reusing_descriptions_resumes_exactly_once_after_kills(tmp_path: Path):
    """The same kills on a run whose source is an earlier run (annotations_run): no describer, same guarantee."""
    n = N_IMAGES // 2
    generate(tmp_path / "pw", n=n, seed=4, n_test=1, image_size=32)
    described = tmp_path / "described"
    first = write_config(
        tmp_path / "described.yaml",
        {
            "output": str(described),
            "source": {"kind": "partsworld", "path": str(tmp_path / "pw")},
            "describe": {"num_cpus": 0.25, "describer": {"name": "partsworld", "options": {"drop_prob": 0.2}}},
            "ground": {"num_cpus": 0.25},
            "sink": {"rows_per_shard": 250},
        },
    )
    done = subprocess.run([sys.executable, "-m", "grainclip.cli", "pipeline", "run", str(first)], capture_output=True)
    assert done.returncode == 0, done.stderr[-3000:]
    earlier = {r["image_id"]: r for r in read_table(described / "annotations", "annotations").to_pylist()}

    out = tmp_path / "reused"
    config = write_config(
        tmp_path / "reuse.yaml",
        {
            "output": str(out),
            "source": {"kind": "annotations_run", "path": str(described)},
            "ground": {
                "num_cpus": 0.25,
                "batch_size": ROWS_PER_SHARD,
                "max_restarts": 2,
                "grounder": {"name": "partsworld", "options": {"jitter": 0.1}},
            },
            "sink": {"rows_per_shard": ROWS_PER_SHARD},
        },
    )
    after_kill, before, log = killed_twice(config, out, "GroundStage", n, tmp_path)
    manifest = assert_exactly_once(out, list(earlier), after_kill, before, log)
    assert manifest["descriptions_from"]["run_id"] == json.loads((described / "manifest.json").read_text())["run_id"]
    assert manifest["throughput"]["describe"]["busy_actor_seconds"] == 0
    for row in read_table(out / "annotations", "annotations").to_pylist():
        assert row["descriptions"] == earlier[row["image_id"]]["descriptions"]
        assert row["status"] == earlier[row["image_id"]]["status"]  # simulated grounder finds every described part


def test_a_killed_vllm_engine_restarts_its_actor_and_every_image_is_written_once(tmp_path: Path, tiny_models):
    """The describe actor keeps 2 batches in flight on the real tiny vLLM engine; its engine core is SIGKILLed
    midway: the in-flight requests raise EngineDeadError, the actor exits, Ray restarts it (a fresh engine) and
    retries its batches, and the run still ends with every image exactly once.

    The engine answers ~20 rows/s once up, and the first shard is committed ~30 s after its process starts: the
    kill comes at the first committed shard, with ~15 s of describing still ahead (at 120 images and a kill at
    the second shard, the engine had sometimes finished and exited before the kill)."""
    n_images = 300
    generate(tmp_path / "pw", n=n_images, seed=4, n_test=1, image_size=32)
    out = tmp_path / "run"
    annotations = out / "annotations"
    describer = {
        "name": "vllm",
        "model": str(tiny_models["llm"]),
        "max_descriptions": 3,
        "max_description_chars": 24,
        "max_caption_chars": 40,
        "sampling": {"max_tokens": 96},
        "engine": {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024},
    }
    config = write_config(
        tmp_path / "pipeline.yaml",
        {
            "output": str(out),
            "source": {"kind": "partsworld", "path": str(tmp_path / "pw")},
            "describe": {
                "describer": describer,
                "batches_in_flight": 2,
                "num_cpus": 0.5,
                "batch_size": ROWS_PER_SHARD,
                "max_restarts": 2,
            },
            "ground": {"num_cpus": 0.25, "batch_size": ROWS_PER_SHARD},
            "sink": {"rows_per_shard": ROWS_PER_SHARD},
            "max_error_fraction": 1.0,  # random weights: quality is not under test, exactly-once is
        },
    )
    # the first shards wait for the engine's start
    log = run_with_one_kill(
        config, annotations, tmp_path / "run.log", "EngineCore", ROWS_PER_SHARD, n_images, start_timeout=900
    )
    assert "exiting so Ray restarts the actor" in log, log[-4000:]

    ids = read_table(annotations, "annotations", columns=["image_id"]).column("image_id").to_pylist()
    assert len(ids) == n_images and len(set(ids)) == n_images
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["rows"] == n_images
    assert manifest["annotators"]["describer"]["name"] == "vllm"
