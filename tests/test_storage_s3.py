"""Object storage end to end against a real S3 API (`moto_server` on loopback, the session's `s3` fixture).

A PartsWorld pipeline with source and output on S3, configured through variables its config names; a SIGKILLed
driver then a rerun, every row exactly once; train and evaluate reading from S3 exactly what they read from local
disk; wrong endpoint, wrong bucket, missing credentials, a named variable missing and a literal secret in config
as one line each. No secret may reach the manifest, stats, shards or logs.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import signal
import time
import uuid
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from grainclip import storage
from grainclip.cli import app
from grainclip.config.pipeline import PipelineConfig
from grainclip.config.storage import StorageConfig
from grainclip.partsworld import generate
from grainclip.schema import parquet_file, read_table
from grainclip.testing.runs import PipelineProcess
from grainclip.testing.s3 import TEST_ENV, free_port, upload

pytestmark = pytest.mark.slow

SECRET = TEST_ENV["AWS_SECRET_ACCESS_KEY"]


@pytest.fixture(scope="module")
def partsworld_on_s3(s3, partsworld_small) -> str:
    """The session's small PartsWorld set copied to s3://grainclip-test/partsworld."""
    uri = s3.uri("partsworld")
    upload(partsworld_small, uri)
    return uri


def committed_rows(annotations: str) -> int:
    """Rows in the committed shards under an S3 prefix (a listing plus each footer)."""
    files = [f for f in storage.list_files(annotations, ".parquet") if storage.name(f).startswith("part-")]
    return sum(parquet_file(f).metadata.num_rows for f in files)


def all_object_bytes(prefix: str) -> bytes:
    return b"".join(storage.read_bytes(path) for path in storage.list_files(prefix))


#: Every standard AWS variable a test of named variables removes, so only the named ones can work.
STANDARD_AWS = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_SHARED_CREDENTIALS_FILE",
)
#: A config's `storage` section naming the TEAM_S3_* variables.
NAMED = {
    "endpoint_url_env": "TEAM_S3_ENDPOINT",
    "access_key_id_env": "TEAM_S3_KEY_ID",
    "secret_access_key_env": "TEAM_S3_SECRET",
}


def reachable_only_through_named_variables(patch: pytest.MonkeyPatch, s3, home: Path) -> str:
    """The loopback server reachable only through the TEAM_S3_* variables; returns their (fresh) secret."""
    secret = f"team-secret-{uuid.uuid4().hex}"
    for key in STANDARD_AWS:
        patch.delenv(key, raising=False)
    # no ~/.aws files either (HOME stays: Ray's processes read their auth token from ~/.ray)
    patch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
    patch.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
    patch.setenv("TEAM_S3_ENDPOINT", s3.endpoint)
    patch.setenv("TEAM_S3_KEY_ID", "team-key-id")
    patch.setenv("TEAM_S3_SECRET", secret)
    return secret


def test_partsworld_pipeline_reads_and_writes_s3(
    s3, partsworld_on_s3, partsworld_small, tmp_path, monkeypatch, caplog, capfd
):
    """Through the variables the config names (the standard ones removed while it runs; the SIGKILL test below
    uses them), with debug logging: no trace of their secret in the logs, the run directory or a pickled
    filesystem."""
    from grainclip.pipelines.runner import run_pipeline

    out = s3.uri("runs", "plain")
    config = PipelineConfig.model_validate(
        {
            "output": out,
            "source": {"kind": "partsworld", "path": partsworld_on_s3},
            "storage": NAMED,
            "describe": {"num_cpus": 0.25, "batch_size": 16},
            "ground": {"num_cpus": 0.25, "batch_size": 16},
            "sink": {"rows_per_shard": 16},
        }
    )
    with monkeypatch.context() as patch, caplog.at_level(logging.DEBUG, logger="grainclip"):
        named_secret = reachable_only_through_named_variables(patch, s3, tmp_path)
        result = run_pipeline(config)
        with storage.configured(config.storage):
            pickled = pickle.dumps(storage.s3_filesystem())  # what a Ray worker is sent: rebuilt there, no key
    assert storage.NAMES_VARIABLE not in os.environ  # the run restored this process's setting
    log = caplog.text + "".join(capfd.readouterr())  # grainclip's records and what Ray's workers printed
    assert "complete: 64 rows" in log and named_secret not in log and SECRET not in log
    assert named_secret.encode() not in pickled

    inputs = read_table(partsworld_small / "train" / "images", "images", columns=["image_id"]).column("image_id")
    table = read_table(storage.join(out, "annotations"), "annotations", columns=["image_id", "status"])
    assert sorted(table.column("image_id").to_pylist()) == sorted(inputs.to_pylist())
    assert result.rows == len(inputs) == 64 and set(result.counts) <= {"ok", "no_regions"}
    manifest = json.loads(storage.read_text(storage.join(out, "manifest.json")))
    assert manifest["status"] == "complete" and manifest["rows"] == 64 and manifest["config"]["output"] == out
    assert StorageConfig.model_validate(manifest["config"]["storage"]).named() == NAMED  # names, never values
    stats = storage.list_files(storage.join(out, "stats"), ".json")
    shards = storage.list_files(storage.join(out, "annotations"), ".parquet")
    assert len(stats) == len(shards) == 4
    report = storage.list_files(storage.join(out, "report"), ".png")
    assert [storage.name(p) for p in report] == sorted(
        ["regions_per_image.png", "region_scores.png", "description_lengths.png", "throughput.png"]
    )
    assert storage.read_bytes(report[0]).startswith(b"\x89PNG")
    assert not Path("s3:").exists()  # nothing was written to a local folder named after the URI
    written = all_object_bytes(out)  # shards, stats, manifest, report
    assert SECRET.encode() not in written and named_secret.encode() not in written

    # The report command reads a run on S3 too.
    reported = CliRunner().invoke(app, ["pipeline", "report", out])
    assert reported.exit_code == 0, reported.output
    assert "complete" in reported.output and SECRET not in reported.output


def test_sigkilled_driver_on_s3_then_rerun_commits_every_row_exactly_once(s3, tmp_path):
    generate(tmp_path / "pw", n=400, seed=5, n_test=1, image_size=32)
    source = s3.uri("partsworld-400")
    upload(tmp_path / "pw", source)
    out = s3.uri("runs", "killed")
    annotations = storage.join(out, "annotations")
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "output": out,
                "source": {"kind": "partsworld", "path": source},
                "describe": {"num_cpus": 0.25, "batch_size": 5},
                "ground": {"num_cpus": 0.25, "batch_size": 5},
                "sink": {"rows_per_shard": 5},
            }
        )
    )

    first = PipelineProcess(config, tmp_path / "attempt1.log")
    try:
        first.wait_until(lambda: committed_rows(annotations) >= 10)
        os.kill(first.process.pid, signal.SIGKILL)
        first.process.wait(timeout=30)
    finally:
        first.kill_everything()
    time.sleep(1)
    after_kill = committed_rows(annotations)
    assert 0 < after_kill < 400, "the kill must land midway"
    assert json.loads(storage.read_text(storage.join(out, "manifest.json")))["status"] == "running"

    second = PipelineProcess(config, tmp_path / "attempt2.log")
    try:
        returncode = second.process.wait(timeout=300)
    finally:
        second.kill_everything()
    log = (tmp_path / "attempt2.log").read_text()
    assert returncode == 0, log[-4000:]
    ids = read_table(annotations, "annotations", columns=["image_id"]).column("image_id").to_pylist()
    inputs = read_table(tmp_path / "pw" / "train" / "images", "images", columns=["image_id"]).column("image_id")
    assert len(ids) == len(set(ids)) == 400 and set(ids) == set(inputs.to_pylist())
    manifest = json.loads(storage.read_text(storage.join(out, "manifest.json")))
    assert manifest["status"] == "complete" and manifest["rows"] == 400
    assert manifest["attempts"][1]["rows_skipped"] == after_kill
    assert "already committed; they are skipped" in log
    assert SECRET not in log + (tmp_path / "attempt1.log").read_text()
    assert SECRET.encode() not in all_object_bytes(out)


@pytest.mark.usefixtures("one_thread")
def test_train_and_evaluate_read_s3_exactly_as_local_disk(
    s3, partsworld_on_s3, partsworld_small, tiny_models, tmp_path
):
    from grainclip.config.evaluate import EvaluateConfig
    from grainclip.config.train import TrainConfig
    from grainclip.evaluate import evaluate
    from grainclip.train import train
    from grainclip.train.metrics import read_metrics

    def train_on(annotations: str | Path, out: Path):
        return train(
            TrainConfig.model_validate(
                {
                    "output_dir": str(out),
                    "backbone": {"model": str(tiny_models["clip"])},
                    "decoder": {"layers": 1, "d_model": 32, "heads": 2, "ffn_dim": 64, "dropout": 0.0},
                    "data": {"train": str(annotations), "num_workers": 0},
                    "batch_size": 8,
                    "steps": 2,
                    "log_every": 1,
                }
            )
        )

    local = train_on(partsworld_small / "train" / "truth", tmp_path / "local")
    remote = train_on(f"{partsworld_on_s3}/train/truth", tmp_path / "remote")
    losses = [[row["loss/total"] for row in read_metrics(r.output_dir)] for r in (local, remote)]
    assert len(losses[1]) == 2 and losses[0] == losses[1]

    def evaluate_on(root: str | Path, out: Path) -> dict:
        evaluate(
            EvaluateConfig.model_validate(
                {
                    "out": str(out),
                    "models": [{"label": "GRAIN", "type": "checkpoint", "path": str(remote.model_dir)}],
                    "datasets": [
                        {
                            "name": "novel",
                            "source": {"kind": "partsworld", "path": str(root), "split": "test_novel"},
                            "tasks": ["classification", "grounding"],
                        }
                    ],
                    "batch_size": 16,
                    "num_workers": 0,
                    "grid_images": 0,
                    "progress": False,
                }
            )
        )
        (run,) = json.loads((out / "results.json").read_text())["runs"]
        return {"classification": run["classification"], "grounding": run["grounding"]}

    from_local = evaluate_on(partsworld_small, tmp_path / "eval-local")
    from_s3 = evaluate_on(partsworld_on_s3, tmp_path / "eval-s3")
    assert from_s3["classification"][0]["n_images"] == 32
    assert from_s3 == from_local


def _pipeline_error(tmp_path: Path, source: str, output: str) -> str:
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({"output": output, "source": {"kind": "partsworld", "path": source}}))
    result = CliRunner().invoke(app, ["pipeline", "run", str(config)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert SECRET not in result.output
    return lines[0]


def test_wrong_endpoint_bucket_or_missing_credentials_are_one_line_each(s3, partsworld_on_s3, tmp_path, monkeypatch):
    good_out = s3.uri("runs", "never")
    line = _pipeline_error(tmp_path, partsworld_on_s3.replace(s3.bucket, "no-such-bucket"), good_out)
    assert "bucket 'no-such-bucket' does not exist" in line
    line = _pipeline_error(tmp_path, partsworld_on_s3, "s3://no-such-bucket/run")
    assert "s3://no-such-bucket/run: bucket 'no-such-bucket' does not exist" in line

    with monkeypatch.context() as patch:
        patch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
        line = _pipeline_error(tmp_path, partsworld_on_s3, good_out)
        assert "cannot reach the S3 endpoint http://127.0.0.1:" in line

    with monkeypatch.context() as patch:
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE"):
            patch.delenv(key, raising=False)
        patch.setenv("HOME", str(tmp_path))  # no ~/.aws/credentials either
        line = _pipeline_error(tmp_path, partsworld_on_s3, good_out)
        assert "no AWS credentials" in line and "AWS_ACCESS_KEY_ID" in line
    assert not storage.exists(good_out)  # refused before anything was written


def test_a_named_variable_missing_or_a_literal_secret_in_config_is_one_line(
    s3, partsworld_on_s3, tmp_path, monkeypatch
):
    named_secret = reachable_only_through_named_variables(monkeypatch, s3, tmp_path)

    def run(storage_section: dict) -> str:
        config = tmp_path / "pipeline.yaml"
        config.write_text(
            yaml.safe_dump(
                {"output": s3.uri("runs", "never"), "source": {"kind": "partsworld", "path": partsworld_on_s3}}
                | {"storage": storage_section}
            )
        )
        result = CliRunner().invoke(app, ["pipeline", "run", str(config)])
        assert result.exit_code == 2, result.output
        assert named_secret not in result.output and "traceback" not in result.output.lower()
        return result.output

    with monkeypatch.context() as patch:
        patch.delenv("TEAM_S3_SECRET")
        output = run(NAMED)
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), output
    assert "storage.secret_access_key_env names the environment variable TEAM_S3_SECRET, which is not set" in output

    literal = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    for section in (
        {**NAMED, "secret_access_key_env": literal},
        {**NAMED, "access_key_id_env": "AKIAIOSFODNN7EXAMPLE"},
    ):
        output = run(section)
        assert "must be the NAME of an environment variable" in output, output
        assert literal not in output and "AKIAIOSFODNN7EXAMPLE" not in output
        assert [line.split(":")[0].strip() for line in output.splitlines()[1:]] in (
            ["storage.secret_access_key_env"],
            ["storage.access_key_id_env"],
        )
    with storage.configured(StorageConfig.model_validate(NAMED)):
        assert not storage.exists(s3.uri("runs", "never"))  # refused before anything was written
