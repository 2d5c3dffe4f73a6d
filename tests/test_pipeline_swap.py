"""Swapping annotators: two describers on the same images, a grounder swap that reuses the descriptions
(annotations_run source, no describer built), `grainclip pipeline compare` between them, and truth scoring.

One embedded Ray for the module; runs S and R go through run_pipeline on it, `compare` through the real CLI.
Runs: S = simulated describer (drop_prob P) + tiny Grounding DINO; R = S's descriptions reused + tiny OWLv2;
V = tiny vLLM on the same images with the simulated grounder, which costs nothing to load (the session's
`tiny_vllm_run`, a CLI run in its own process that the first-contact tests check too).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from grainclip.config.base import ConfigError, parse_config
from grainclip.config.pipeline import PipelineConfig
from grainclip.schema import read_table, write_shard

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "grainclip.cli", "pipeline"]
P = 0.3  # the simulated describer's drop_prob


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def stage_actors(stage: str) -> int:
    """Actors Ray Data started for a stage class in this Ray session, alive or dead (from the GCS actor table:
    ray.util.state would need the dashboard, which this module does not start)."""
    from ray._private.state import actors

    return sum(stage in info["ActorClassName"] for info in actors().values())


def grounder(name: str, tiny_models) -> dict:
    return {
        "name": name,
        "model": str(tiny_models[name]),
        "box_threshold": 0.0,
        "text_threshold": 0.0,
        "device": "cpu",
        "batch_size": 16,
    }


def run(data: dict):
    from grainclip.pipelines import run_pipeline

    return run_pipeline(parse_config({"sink": {"rows_per_shard": 16}, **data}, PipelineConfig))


def compare(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "compare", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def simulated(partsworld_small, tiny_models, tmp_path_factory):
    """Run S: the simulated describer at drop_prob P, tiny Grounding DINO."""
    source = {"kind": "partsworld", "path": str(partsworld_small)}
    return run(
        {
            "output": str(tmp_path_factory.mktemp("s") / "run"),
            "source": source,
            "describe": {"describer": {"name": "partsworld", "options": {"drop_prob": P}}, "num_cpus": 0.25},
            "ground": {"grounder": grounder("grounding-dino", tiny_models), "num_cpus": 0.5},
        }
    )


def test_grounder_swap_reuses_the_descriptions_and_builds_no_describer(simulated, tiny_models, tmp_path):
    describe_actors = stage_actors("DescribeStage")
    assert describe_actors >= 1  # run S built one, so the count below can tell
    reused = run(
        {
            "output": str(tmp_path / "reused"),
            "source": {"kind": "annotations_run", "path": str(simulated.output)},
            "ground": {"grounder": grounder("owlv2", tiny_models), "num_cpus": 0.5},
        }
    )
    assert stage_actors("DescribeStage") == describe_actors, "a describer was built in the reuse run"
    assert stage_actors("GroundStage") >= 2

    before = {r["image_id"]: r for r in read_table(simulated.annotations, "annotations").to_pylist()}
    after = {r["image_id"]: r for r in read_table(reused.annotations, "annotations").to_pylist()}
    assert sorted(after) == sorted(before)
    for image_id, row in after.items():
        old = before[image_id]
        assert (row["llm_caption"], row["descriptions"]) == (old["llm_caption"], old["descriptions"])
        if old["status"] == "describe_failed":  # every description dropped: kept as it was, not grounded
            assert row["status"] == "describe_failed" and row["error"] == old["error"] and not row["regions"]
        else:
            assert row["status"] in ("ok", "no_regions") and row["run_id"] == reused.run_id

    manifest = reused.manifest
    assert manifest.descriptions_from.run_id == simulated.run_id == manifest.descriptions_from.origin_run_id
    assert manifest.annotators["describer"]["name"] == "partsworld"  # who wrote the descriptions
    assert manifest.annotators["grounder"]["name"] == "owlv2"
    assert manifest.throughput.describe.busy_actor_seconds == 0 and manifest.throughput.ground.busy_actor_seconds > 0
    stats = [json.loads(p.read_text()) for p in (reused.output / "stats").glob("*.json")]
    assert stats and all(s["descriptions_from"]["run_id"] == simulated.run_id for s in stats)
    assert all(s["describe_seconds"] == 0 and s["describer"]["name"] == "partsworld" for s in stats)

    done = compare(str(simulated.output), str(reused.output), "--out", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert result["shared"]["image_ids"] == len(before)
    assert result["agreement"]["description_jaccard"] == 1.0 and result["agreement"]["descriptions_identical"] == 1.0
    assert result["runs"]["B"]["descriptions_from"]["run_id"] == simulated.run_id
    assert result["runs"]["B"]["throughput"]["describe_busy_seconds_per_1k"] == 0
    assert result["runs"]["A"]["throughput"]["ground_busy_seconds_per_1k"] > 0
    for png in ("grid.png", "histograms.png"):
        assert (tmp_path / "cmp" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A describer set beside a reused run is refused in one line: it would never run.
    with pytest.raises(ConfigError, match="no describer runs"):
        parse_config(
            {
                "output": str(tmp_path / "x"),
                "source": {"kind": "annotations_run", "path": str(simulated.output)},
                "describe": {"describer": {"name": "vllm", "model": "m"}},
            },
            PipelineConfig,
        )


def test_two_describers_on_the_same_images(simulated, tiny_vllm_run, tmp_path):
    assert tiny_vllm_run.returncode == 0, tiny_vllm_run.stderr[-3000:]
    llm = tiny_vllm_run
    done = compare(str(simulated.output), str(llm.output), "--out", str(tmp_path / "cmp"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    a, b = result["runs"]["A"], result["runs"]["B"]
    assert result["shared"] == {"image_ids": 64, "only_a": 0, "only_b": 0}
    assert a["annotators"]["describer"]["name"] == "partsworld" and b["annotators"]["describer"]["name"] == "vllm"
    assert sum(a["statuses_shared"].values()) == sum(b["statuses_shared"].values()) == 64
    # Random tiny weights describe nothing PartsWorld knows: the agreement is measured, and it is low.
    agreement = result["agreement"]
    assert agreement["images_with_descriptions"] >= 60 and agreement["description_jaccard"] < 0.5
    assert b["throughput"]["output_tokens_per_describe_second"] > 0 and b["throughput"]["rows_per_second"] > 0
    assert b["throughput"]["describe_busy_seconds_per_1k"] > 0
    assert not a["throughput"]["output_tokens_per_describe_second"]  # the simulated describer generates nothing
    text = (tmp_path / "cmp" / "compare.md").read_text()
    assert "vllm" in text and "description jaccard" in text


def coco_truth(partsworld: Path, path: Path, extra_annotations: list[dict]) -> int:
    """The PartsWorld train truth as a COCO-style JSON (pixel xywh), plus `extra_annotations`; returns #parts."""
    rows = read_table(partsworld / "train" / "truth", "annotations").to_pylist()
    images = [{"id": r["image_id"], "width": r["width"], "height": r["height"]} for r in rows]
    annotations = [
        {
            "image_id": r["image_id"],
            "phrase": region["text"],
            "bbox": [
                region["box"][0] * r["width"],
                region["box"][1] * r["height"],
                (region["box"][2] - region["box"][0]) * r["width"],
                (region["box"][3] - region["box"][1]) * r["height"],
            ],
        }
        for r in rows
        for region in r["regions"]
    ]
    path.write_text(json.dumps({"images": images, "annotations": annotations + extra_annotations}))
    return len(annotations)


def test_truth_scoring_recall_is_one_minus_drop_prob(simulated, partsworld_small, tmp_path):
    done = compare(str(simulated.output), "--truth", str(partsworld_small / "train" / "truth"), "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr
    scores = json.loads((tmp_path / "compare.json").read_text())["runs"]["A"]["truth"]
    # Each true description is dropped independently with probability P, so recall is a binomial proportion
    # over N true descriptions: 3.5 standard errors fail a correct describer about once in 2000 seeds.
    n = scores["true_descriptions"]
    assert n >= 200 and scores["images"] == 64
    assert abs(scores["description_recall"] - (1 - P)) <= 3.5 * math.sqrt(P * (1 - P) / n), scores
    assert scores["description_precision"] == 1.0  # no substitutions: every kept description is true
    assert 0 <= scores["box_recall_at_0.5"] <= scores["description_recall"]  # a box is found by its text

    # The same truth as COCO-style JSON, plus an annotation of an unknown image and two malformed boxes.
    coco = tmp_path / "truth.json"
    first = read_table(partsworld_small / "train" / "truth", "annotations", columns=["image_id"])[0][0].as_py()
    parts = coco_truth(
        partsworld_small,
        coco,
        [
            {"image_id": "not-an-image", "phrase": "red crest", "bbox": [0, 0, 4, 4]},
            {"image_id": first, "phrase": "red crest", "bbox": [0, 0, -4, 4]},
            {"image_id": first, "phrase": "red crest", "bbox": "x"},
        ],
    )
    done = compare(str(simulated.output), "--truth", str(coco), "--out", str(tmp_path / "coco"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "coco" / "compare.json").read_text())
    assert result["truth"]["problems"] == {"unknown_image_ids": 1, "malformed_boxes": 2, "malformed_images": 0}
    assert "1 unknown image ids, 2 malformed boxes" in done.stderr and "Traceback" not in done.stderr
    coco_scores = result["runs"]["A"]["truth"]
    assert coco_scores["true_parts"] == parts
    for key in ("description_recall", "description_precision", "box_recall_at_0.5"):
        assert coco_scores[key] == pytest.approx(scores[key], abs=1e-3), key


def test_bad_input_is_one_line_or_a_count(simulated, partsworld_small, tmp_path):
    def one_line_error(done: subprocess.CompletedProcess) -> str:
        assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]  # log lines may precede
        assert len(errors) == 1, done.stderr
        return errors[0]

    out = str(tmp_path / "out")
    assert "is not a pipeline run directory" in one_line_error(
        compare(str(partsworld_small), str(simulated.output), "--out", out)
    )
    assert "needs two runs, or one run and --truth" in one_line_error(compare(str(simulated.output), "--out", out))

    # A copy of run S keeping one shard shares few ids; with that shard's ids renamed it shares none.
    few = tmp_path / "few"
    shutil.copytree(simulated.output, few)
    shards = sorted((few / "annotations").glob("part-*.parquet"))
    for shard in shards[1:]:
        shard.unlink()
    kept = read_table(shards[0], "annotations").num_rows
    done = compare(str(simulated.output), str(few), "--out", out)
    assert done.returncode == 0 and f"share only {kept} image_id(s) (A has 64, B has {kept})" in done.stderr
    table = read_table(shards[0], "annotations")
    renamed = table.set_column(0, "image_id", pa.array([f"other-{i}" for i in range(kept)]))
    write_shard(renamed, shards[0], "annotations")
    assert f"share no image_id (A has 64, B has {kept})" in one_line_error(
        compare(str(simulated.output), str(few), "--out", out)
    )
    done = compare(str(few), "--truth", str(partsworld_small / "train" / "truth"), "--out", out)
    assert "no image_id of the run" in one_line_error(done)
