"""Send a pipeline run to a Ray cluster as a Ray Job, and follow it (`grainclip pipeline submit/status/logs`).

`submit` validates the config here first, so a typo fails before anything is sent. The job then runs the same
command a user runs locally, `grainclip pipeline run pipeline.yaml`, on the cluster's head; inside a job
`ray.init()` attaches to that cluster, so the DAG is the same as an attached `run --address`.

What is packaged: a staging folder with the config (`pipeline.yaml`) becomes the job's `working_dir`, and the
config's `job.runtime_env` (pip packages, env vars, py_modules with custom annotator plugins) is added to it.
The cluster must have grainclip installed, or get it through that runtime_env. Paths: the job's working dir
is a temporary copy, so relative paths are made absolute here (`with_absolute_paths`); they must name storage every
node sees (a shared filesystem, or `s3://` object storage), like any multi-node Ray output (docs/cluster.md).
"""

from __future__ import annotations

import asyncio
import logging
import shlex
import tempfile
import time
from pathlib import Path

from grainclip.config.base import dump_config, load_config
from grainclip.config.pipeline import PipelineConfig

log = logging.getLogger(__name__)

CONFIG_NAME = "pipeline.yaml"
AGENT_WAIT_S = 60.0
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _client(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def submit(config_path: Path, address: str, force_new_run: bool = False) -> str:
    """Submit the run as a Ray Job; returns the job's submission id."""
    config = load_config(config_path, PipelineConfig).with_absolute_paths()
    command = ["python", "-m", "grainclip.cli", "pipeline", "run", CONFIG_NAME]
    if force_new_run:
        command.append("--force-new-run")
    entrypoint = job_entrypoint(command)
    client = _client(address)
    with tempfile.TemporaryDirectory(prefix="grainclip-job-") as staging:  # uploaded by submit_job
        (Path(staging) / CONFIG_NAME).write_text(dump_config(config))
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                return client.submit_job(
                    entrypoint=entrypoint,
                    runtime_env={**config.job.runtime_env, "working_dir": staging},
                    entrypoint_num_cpus=config.job.entrypoint_num_cpus,
                    metadata={"grainclip.output": config.output},
                )
            except RuntimeError as exc:
                # A freshly started head answers this until its job agent is up; anything else is real.
                if "No available agent" not in str(exc) or time.monotonic() > deadline:
                    raise
                log.info("the cluster's job agent is not up yet; retrying")
                time.sleep(2.0)


#: What the job prints when the cluster's python has no grainclip (before the run's own command would fail with
#: "No module named 'grainclip'" deep in the job log).
MISSING_GRAINCLIP = (
    "error: grainclip is not installed in the Ray cluster's python ($(command -v python)). Install it on every "
    "node (pip install grainclip), or ship it with the job: set job.runtime_env in the pipeline YAML, e.g. "
    "job: {{runtime_env: {{pip: [grainclip=={version}]}}}} (or py_modules for a local checkout)"
)


def job_entrypoint(command: list[str]) -> str:
    """The job's shell command: check that grainclip imports on the cluster, then run `command`."""
    from importlib.metadata import version

    message = MISSING_GRAINCLIP.format(version=version("grainclip"))
    return f'python -c "import grainclip" 2>/dev/null || {{ echo "{message}" >&2; exit 2; }}; {shlex.join(command)}'


def status(job_id: str, address: str) -> tuple[str, str | None]:
    """(status, message) of a submitted job: PENDING, RUNNING, SUCCEEDED, FAILED or STOPPED."""
    info = _client(address).get_job_info(job_id)
    return str(info.status.value if hasattr(info.status, "value") else info.status), info.message


def logs(job_id: str, address: str) -> str:
    return _client(address).get_job_logs(job_id)


def follow_logs(job_id: str, address: str, write) -> None:
    """Stream the job's log to `write` until the job ends."""

    async def tail() -> None:
        async for chunk in _client(address).tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())


def wait(job_id: str, address: str, timeout_s: float | None = None, poll_s: float = 2.0) -> tuple[str, str | None]:
    """Poll until the job reaches a terminal status (or `timeout_s` passes); returns (status, message)."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        state, message = status(job_id, address)
        if state in TERMINAL or (deadline is not None and time.monotonic() > deadline):
            return state, message
        time.sleep(poll_s)
