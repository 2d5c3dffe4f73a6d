"""The pipeline on a real multi-node Ray cluster (head + 2 worker nodes on this machine) with real tiny models,
and `grainclip pipeline submit/status/logs` through the same head's Jobs API.

The cluster lives in a private temp dir (RAY_TMPDIR), so neither its address file nor its sessions are seen by
other Ray users of this machine, and it is torn down by the fixture's finalizer.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest
import yaml

from grainclip.config.base import parse_config
from grainclip.config.pipeline import PipelineConfig
from grainclip.schema import read_table, validate

pytestmark = pytest.mark.slow

LLM_NODE, DETECTOR_NODE = "llm_node", "detector_node"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    private_tmp = tempfile.mkdtemp(prefix="gcray-", dir="/tmp")  # short: Ray's unix socket paths must fit
    previous = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = private_tmp
    # Other Ray instances on this machine may hold the default dashboard (8265) and job agent (52365) ports.
    dashboard_port, agent_port = free_port(), free_port()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": True,
            "dashboard_port": dashboard_port,
            "dashboard_agent_listen_port": agent_port,
        },
    )
    try:
        cluster.add_node(num_cpus=1, resources={LLM_NODE: 1})
        cluster.add_node(num_cpus=1, resources={DETECTOR_NODE: 1})
        ray.init(address=cluster.address)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(private_tmp, ignore_errors=True)
        if previous is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = previous


def test_vllm_and_groundingdino_py_stages_run_on_separate_nodes_in_their_own_environments(
    cluster, tiny_models, partsworld_small, tmp_path
):
    """Multi-node DAG with the real tiny vLLM describer and the groundingdino-py grounder, whose stage runs in
    its own environment (transformers 4.57) next to the vLLM stage (transformers 5)."""
    import ray
    from ray.util.state import list_actors

    from grainclip.envs import groundingdino_local_runtime_env
    from grainclip.pipelines import run_pipeline
    from grainclip.testing import default_cache_dir

    config = parse_config(
        {
            "output": str(tmp_path / "run"),
            "source": {"kind": "partsworld", "path": str(partsworld_small)},
            "describe": {
                "describer": {
                    "name": "vllm",
                    "model": str(tiny_models["vlm"]),
                    "max_descriptions": 3,
                    "max_description_chars": 24,
                    "max_caption_chars": 40,
                    "sampling": {"max_tokens": 128},
                    "engine": {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024},
                },
                "num_cpus": 0.5,
                "resources": {LLM_NODE: 1},
                "batch_size": 32,
            },
            "ground": {
                "grounder": {
                    "name": "groundingdino-py",
                    "model": str(tiny_models["groundingdino-py"]),
                    "box_threshold": 0.0,
                    "text_threshold": 0.0,
                    "device": "cpu",
                    "options": {"image_size": 64},
                },
                "num_cpus": 0.5,
                "resources": {DETECTOR_NODE: 1},
                "runtime_env": groundingdino_local_runtime_env(default_cache_dir() / "envs"),
                "batch_size": 16,
            },
            "sink": {"rows_per_shard": 16},
        },
        PipelineConfig,
    )
    result = run_pipeline(config)

    inputs = read_table(partsworld_small / "train" / "images", "images").column("image_id").to_pylist()
    table = validate(read_table(result.annotations, "annotations"), "annotations")
    ids = table.column("image_id").to_pylist()
    assert sorted(ids) == sorted(inputs) and len(set(ids)) == len(ids)
    statuses = table.column("status").to_pylist()
    assert statuses.count("ok") >= len(inputs) // 2, result.counts  # random weights, constrained JSON
    assert sum(len(r) for r in table.column("regions").to_pylist()) > 0
    assert set(table.column("run_id").to_pylist()) == {result.run_id}

    # Each stage ran on its own worker node...
    node_resources = {node["NodeID"]: node["Resources"] for node in ray.nodes()}
    placed = {}  # Ray Data names its actors MapWorker(MapBatches(<stage class>))
    for actor in list_actors(detail=True, raise_on_missing_output=False):
        for stage in ("DescribeStage", "GroundStage"):
            if stage in actor.class_name:
                placed.setdefault(stage, set()).update(node_resources[actor.node_id])
    assert LLM_NODE in placed["DescribeStage"] and DETECTOR_NODE not in placed["DescribeStage"], placed
    assert DETECTOR_NODE in placed["GroundStage"] and LLM_NODE not in placed["GroundStage"], placed
    # ...and in its own Python environment: the manifest records each stage's package versions.
    annotators = result.manifest.annotators
    assert annotators["describer"]["environment"]["transformers"].startswith("5.")
    assert annotators["grounder"]["environment"]["transformers"] == "4.57.6"
    assert annotators["describer"]["model"] == str(tiny_models["vlm"]) and not result.manifest.simulated
    assert result.manifest.throughput.describe.output_tokens > 0


def test_submitted_job_goes_from_images_to_a_trained_and_evaluated_model(
    cluster, tiny_models, partsworld_small, tmp_path
):
    """`pipeline submit` through the head's Jobs API, with train (Ray Train) and evaluate steps in the same job."""
    dashboard = f"http://{cluster.webui_url}"
    train_yaml, evaluate_yaml, config = tmp_path / "train.yaml", tmp_path / "evaluate.yaml", tmp_path / "pipeline.yaml"
    train_yaml.write_text(
        yaml.safe_dump(
            {
                "backbone": {"model": str(tiny_models["clip"])},
                "decoder": {"layers": 2, "d_model": 64, "heads": 4, "ffn_dim": 128, "dropout": 0.0},
                "data": {"num_workers": 0},
                "batch_size": 8,
                "steps": 3,
                "log_every": 1,
            }
        )
    )
    evaluate_yaml.write_text(
        yaml.safe_dump(
            {
                "datasets": [
                    {
                        "name": "novel",
                        "source": {"kind": "partsworld", "path": str(partsworld_small), "split": "test_novel"},
                        "tasks": ["classification"],
                        "limit": 16,
                    }
                ],
                "batch_size": 16,
                "num_workers": 0,
                "device": "cpu",
                "progress": False,
                "grid_images": 0,
            }
        )
    )
    out = tmp_path / "submitted"
    config.write_text(
        yaml.safe_dump(
            {
                "output": str(out),
                "source": {"kind": "partsworld", "path": str(partsworld_small)},
                "describe": {"num_cpus": 0.25},
                "ground": {"num_cpus": 0.25},
                "sink": {"rows_per_shard": 32},
                "train": {"config": str(train_yaml)},
                "evaluate": {"config": str(evaluate_yaml), "num_cpus": 0.5},
            }
        )
    )
    cli = [sys.executable, "-m", "grainclip.cli", "pipeline"]
    submitted = subprocess.run(
        [*cli, "submit", str(config), "--address", dashboard, "--wait"], capture_output=True, text=True, timeout=540
    )
    assert submitted.returncode == 0, submitted.stdout[-3000:] + submitted.stderr[-3000:]
    job_id = submitted.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert f"job {job_id}: SUCCEEDED" in submitted.stdout

    status = subprocess.run([*cli, "status", job_id, "--address", dashboard], capture_output=True, text=True)
    assert status.returncode == 0 and status.stdout.startswith("SUCCEEDED")
    logs = subprocess.run([*cli, "logs", job_id, "--address", dashboard], capture_output=True, text=True)
    assert "complete: 64 rows" in logs.stdout

    table = read_table(out / "annotations", "annotations")
    inputs = read_table(partsworld_small / "train" / "images", "images").column("image_id").to_pylist()
    assert sorted(table.column("image_id").to_pylist()) == sorted(inputs)
    assert set(table.column("status").to_pylist()) <= {"ok", "no_regions"}
    # The steps ran in the same job, on the same cluster, and wrote where the manifest says.
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["steps"]["train"].startswith("trained 3 steps with Ray Train")
    assert manifest["steps"]["evaluate"].startswith("evaluated")
    assert (out / "train" / "model" / "grain_model.json").exists()
    results = json.loads((out / "evaluate" / "results.json").read_text())
    assert [m["label"] for m in results["models"]] == ["pipeline-grain"]
    assert results["runs"] and results["runs"][0]["dataset"] == "novel"

    missing = subprocess.run(
        [*cli, "submit", str(tmp_path / "nope.yaml"), "--address", dashboard], capture_output=True, text=True
    )
    assert missing.returncode == 2 and "config file not found" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
