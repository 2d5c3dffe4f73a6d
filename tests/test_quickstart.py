"""End to end: a small quickstart through the real CLI, then every artefact checked."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from grainclip import schema
from grainclip.partsworld import load_classes


def run_cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "grainclip.cli", *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_small_quickstart_writes_every_artefact(tmp_path):
    out = tmp_path / "qs"
    result = run_cli("quickstart", "--out", str(out), "--n", "48", "--n-test", "18", "--steps", "3", "--batch-size", "16")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"report: {out / 'report.md'}" in result.stdout

    annotations = schema.read_table(out / "pipeline" / "annotations", "annotations")
    schema.validate(annotations, "annotations")
    assert annotations.num_rows == 48
    assert len(set(annotations.column("image_id").to_pylist())) == 48
    manifest = json.loads((out / "pipeline" / "manifest.json").read_text())
    assert sum(manifest["counts"].values()) == 48

    for mode in ("grain", "clip"):
        assert (out / mode / "model").is_dir()
        assert (out / mode / "metrics.jsonl").read_text().strip()
    results = json.loads((out / "evaluate" / "results.json").read_text())
    assert {run["model"] for run in results["runs"]} == {"grain", "clip"}

    report = json.loads((out / "report.json").read_text())
    n_classes = len(load_classes(out / "partsworld")["novel"])
    expected_keys = {f"{model}/{split}/{mode}" for model in ("grain", "clip") for split in ("test_seen", "test_novel")
                     for mode in ("global", "global+descriptors")} | {"grain/test_seen/grain", "grain/test_novel/grain"}
    assert expected_keys <= set(report["top1"])
    for value in report["top1"].values():
        assert 0.0 <= value <= 1.0
        assert value * 18 == pytest.approx(round(value * 18), abs=1e-6), "top-1 over 18 images is a multiple of 1/18"
    assert n_classes == 18
    text = (out / "report.md").read_text()
    assert "Simulated annotators" in text and "| grain | grain |" in text
    for png in ("annotations.png", "training_curves.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quickstart_refuses_bad_arguments(tmp_path):
    result = run_cli("quickstart", "--out", str(tmp_path / "qs"), "--steps", "0")
    assert result.returncode == 2
    assert "must all be at least 1" in result.stderr
    assert "Traceback" not in result.stderr
