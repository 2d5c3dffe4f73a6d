"""Config mistakes are refused by the CLI before any work: exit code != 0, a readable `error: ...`, no
traceback, and for the pipeline nothing written to the output directory and no Ray started.

Cases already covered elsewhere are not repeated: train unknown keys / missing data / untrainable rows
(test_train_loop.py::test_cli_errors_are_one_line), evaluate model/dataset mistakes
(test_evaluate_cli.py::test_user_mistakes_are_one_line_errors), resuming with another config
(test_pipeline_run.py::test_cli_refuses_to_resume_a_run_made_with_another_config).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

CLI = [sys.executable, "-m", "grainclip.cli"]


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def refused(args: list[str], cwd: Path) -> tuple[str, float]:
    started = time.monotonic()
    run = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    seconds = time.monotonic() - started
    assert run.returncode != 0, (args, run.stdout, run.stderr)
    assert "Traceback" not in run.stderr + run.stdout, run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, run.stderr
    return run.stderr.strip(), seconds


def pipeline_config(tmp_path: Path, source: Path, **changes) -> dict:
    truth = {"truth": str(source)}
    config = {
        "output": str(tmp_path / "out"),
        "source": {"kind": "partsworld", "path": str(source)},
        "describe": {"describer": {"name": "partsworld", "options": truth}, "num_cpus": 0.25},
        "ground": {"grounder": {"name": "partsworld", "options": truth}, "num_cpus": 0.25},
    }
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = config
        for key in parents:
            node = node[key]
        node[leaf] = value
    return config


CASES = {
    "unknown describer": ({"describe.describer.name": "gpt-99"}, ["unknown describer 'gpt-99'", "partsworld"]),
    "unknown grounder": ({"ground.grounder.name": "yolo"}, ["unknown grounder 'yolo'"]),
    "bad source path": ({"source.path": "/no/such/dataset"}, ["not found", "/no/such/dataset"]),
    "negative batch size": ({"describe.batch_size": -4}, ["describe.batch_size", "greater than 0"]),
    "gpu on a cpu machine": ({"describe.num_gpus": 1}, ["need 1 GPU", "has 0", "num_gpus"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pipeline_config_mistakes_are_refused_before_any_work(case, partsworld_small, tmp_path):
    if case == "gpu on a cpu machine" and has_cuda():
        pytest.skip("this machine has a GPU")
    changes, needles = CASES[case]
    config = pipeline_config(tmp_path, partsworld_small, **changes)
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    stderr, seconds = refused(["pipeline", "run", str(path)], tmp_path)
    for needle in needles:
        assert needle in stderr, stderr
    assert not (tmp_path / "out").exists(), "the run directory was created for a config that cannot run"
    assert "Started a local Ray instance" not in stderr
    assert seconds < 60  # no Ray start (a minute or more on a busy machine)


def refused_in_process(args: list[str]) -> str:
    """Same checks through typer's runner: train/evaluate import torch once for the module, not per case."""
    from typer.testing import CliRunner

    from grainclip.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code not in (0, 1) and isinstance(result.exception, SystemExit), (args, result.output)
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    return result.stderr


def train_config(tmp_path: Path, partsworld: Path, **values) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(
        yaml.safe_dump(
            {"output_dir": str(tmp_path / "train"), "data": {"train": str(partsworld / "train" / "truth")}, **values}
        )
    )
    return path


def test_train_negative_batch_size_and_gpu_on_a_cpu_machine(partsworld_small, tmp_path):
    stderr = refused_in_process(["train", str(train_config(tmp_path, partsworld_small, batch_size=-8))])
    assert "batch_size" in stderr and "greater than 0" in stderr
    if not has_cuda():
        stderr = refused_in_process(["train", str(train_config(tmp_path, partsworld_small, steps=1)), "--gpu"])
        assert "no CUDA device" in stderr
    assert not (tmp_path / "train").exists()


def test_evaluate_cuda_on_a_cpu_machine_and_negative_batch_size(partsworld_small, tmp_path):
    path = tmp_path / "eval.yaml"
    base = {
        "out": str(tmp_path / "eval"),
        "models": [{"label": "c", "type": "open_clip", "name": "ViT-B-32"}],
        "datasets": [{"name": "d", "source": {"kind": "partsworld", "path": str(partsworld_small)}}],
    }
    path.write_text(yaml.safe_dump({**base, "batch_size": -1}))
    stderr = refused_in_process(["evaluate", str(path)])
    assert "batch_size" in stderr
    if not has_cuda():
        path.write_text(yaml.safe_dump({**base, "device": "cuda"}))
        stderr = refused_in_process(["evaluate", str(path)])
        assert "CUDA is not available" in stderr
    assert not (tmp_path / "eval" / "results.json").exists()
