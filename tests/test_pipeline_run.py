"""Pipeline runs on an embedded local Ray: every source kind, bad input accounted row by row, the error-fraction
stop, the report, and the CLI refusing to resume into a run made with another config.

The simulated PartsWorld annotators stand in for models here (the cluster test runs the real tiny ones): on
images that are not PartsWorld's they answer `describe_failed`, which is all these tests need to see a row
reach the describe stage rather than fail at decoding.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from grainclip.config.base import parse_config
from grainclip.config.pipeline import PipelineConfig
from grainclip.schema import read_table, validate
from grainclip.testing.corpus import write_bad_input_corpus

pytestmark = pytest.mark.slow
CLI = [sys.executable, "-m", "grainclip.cli", "pipeline"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One embedded Ray for the module; run_pipeline reuses an initialised Ray instead of starting its own."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_bad_input_corpus(tmp_path_factory.mktemp("corpus"))


def config_for(source: dict, output: Path, truth: Path, **extra) -> PipelineConfig:
    data = {
        "output": str(output),
        "source": source,
        "describe": {"describer": {"name": "partsworld", "options": {"truth": str(truth)}}, "num_cpus": 0.25},
        "ground": {"grounder": {"name": "partsworld", "options": {"truth": str(truth)}}, "num_cpus": 0.25},
        "sink": {"rows_per_shard": 8},
        "max_error_fraction": 1.0,
        **extra,
    }
    return parse_config(data, PipelineConfig)


def test_every_bad_input_row_is_accounted_for(corpus, partsworld_small, tmp_path):
    from grainclip.pipelines import run_pipeline

    config = config_for({"kind": "parquet", "path": str(corpus["images"])}, tmp_path / "run", partsworld_small)
    result = run_pipeline(config)

    expected = json.loads(corpus["expected"].read_text())
    table = validate(read_table(result.annotations, "annotations"), "annotations")
    rows = {row["image_id"]: row for row in table.to_pylist()}
    assert len(rows) == table.num_rows  # one row per image_id...
    assert set(rows) == set(expected)  # ...and none lost
    for image_id, outcome in expected.items():
        row = rows[image_id]
        if outcome == "error":
            assert row["status"] == "decode_failed" and row["error"], image_id
        else:  # decoded and handed to the describer (which knows only PartsWorld ids)
            assert row["status"] == "describe_failed" and "not in the PartsWorld truth" in row["error"], image_id
            assert row["width"] > 0 and row["height"] > 0
    assert rows["duplicate"]["caption"] in ("first copy", "second copy")
    assert rows["missing_file"]["error"].startswith("image file not found")

    manifest = result.manifest
    assert manifest.duplicates_dropped == 1 and manifest.rows == len(expected)
    assert manifest.counts == {
        "decode_failed": sum(v == "error" for v in expected.values()),
        "describe_failed": sum(v == "ok" for v in expected.values()),
    }
    assert manifest.simulated is True and manifest.annotators["describer"]["name"] == "partsworld"
    assert manifest.versions["ray"] and manifest.config_hash

    report = subprocess.run([*CLI, "report", str(result.output)], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    assert "decode_failed" in report.stdout and "duplicate ids dropped" in report.stdout
    for name in ("regions_per_image", "region_scores", "description_lengths", "throughput"):
        png = result.output / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_image_folder_with_a_captions_csv(corpus, partsworld_small, tmp_path):
    from grainclip.pipelines import run_pipeline

    source = {"kind": "image_folder", "path": str(corpus["folder"]), "captions_csv": str(corpus["captions"])}
    result = run_pipeline(config_for(source, tmp_path / "run", partsworld_small))

    listed = [line.split(b",")[0].decode() for line in corpus["captions"].read_bytes().splitlines()[1:]]
    table = read_table(result.annotations, "annotations")
    rows = {row["image_id"]: row for row in table.to_pylist()}
    assert sorted(rows) == sorted(set(listed))  # one_pixel.png is listed twice: kept once
    assert result.duplicates_dropped == len(listed) - len(set(listed)) == 1
    assert all(Path(row["image_uri"]).is_absolute() and row["image"] is None for row in rows.values())
    assert rows["wrong_extension.gif"]["status"] == "describe_failed"  # PNG bytes behind a .gif name decode
    assert rows["truncated_jpeg.jpg"]["status"] == "decode_failed"
    # Its second line is Latin-1, not UTF-8: read with U+FFFD in place of the bad bytes, not an error.
    assert rows["one_pixel.png"]["caption"] in ("a photo of one_pixel", "caf\ufffd cr\ufffdme")


def _saved_hugging_face_dataset(images: list[dict]):
    """A real `datasets` Dataset of PartsWorld images: Image() feature, captions and ids under their own names."""
    import datasets

    features = datasets.Features(
        {
            "picture": datasets.Image(),
            "text": datasets.Value("string"),
            "key": datasets.Value("string"),
            "class_name": datasets.Value("string"),
        }
    )
    return datasets.Dataset.from_dict(
        {
            "picture": [{"bytes": r["image"], "path": None} for r in images],
            "text": [r["caption"] for r in images],
            "key": [r["image_id"] for r in images],
            "class_name": [r["class_name"] for r in images],
        },
        features=features,
    )


def test_a_dataset_saved_with_hugging_face_datasets(partsworld_small, tmp_path):
    import datasets

    from grainclip.pipelines import run_pipeline

    images = read_table(partsworld_small / "train" / "images", "images").to_pylist()[:20]
    dataset = _saved_hugging_face_dataset(images)
    dataset.save_to_disk(str(tmp_path / "hf"), num_shards=3)
    source = {
        "kind": "huggingface",
        "path": str(tmp_path / "hf"),
        "image_column": "picture",
        "caption_column": "text",
        "id_column": "key",
        "keep_columns": ["class_name"],
    }
    result = run_pipeline(config_for(source, tmp_path / "run", partsworld_small))
    rows = {
        row["image_id"]: row
        for row in validate(read_table(result.annotations, "annotations"), "annotations").to_pylist()
    }
    assert sorted(rows) == sorted(r["image_id"] for r in images)
    for image in images:
        row = rows[image["image_id"]]
        assert row["status"] in ("ok", "no_regions") and row["descriptions"], row["error"]
        assert (row["image"], row["caption"], row["class_name"]) == (
            image["image"],
            image["caption"],
            image["class_name"],
        )

    # A DatasetDict folder: pick the split; without id_column a row's image_id is its index in the dataset.
    datasets.DatasetDict({"train": dataset.select(range(12)), "test": dataset.select(range(12, 20))}).save_to_disk(
        str(tmp_path / "dict")
    )
    source = {
        "kind": "huggingface",
        "path": str(tmp_path / "dict"),
        "split": "test",
        "image_column": "picture",
        "caption_column": "text",
    }
    result = run_pipeline(config_for(source, tmp_path / "by_index", partsworld_small))
    rows = {row["image_id"]: row for row in read_table(result.annotations, "annotations").to_pylist()}
    assert sorted(rows, key=int) == [str(i) for i in range(8)]
    assert [rows[str(i)]["caption"] for i in range(8)] == [r["caption"] for r in images[12:]]
    assert {row["status"] for row in rows.values()} == {"describe_failed"}  # decoded; ids unknown to the truth


def test_webdataset_tars_and_the_error_fraction_stop(partsworld_small, tmp_path):
    from grainclip.pipelines import ErrorFractionExceeded, run_pipeline
    from grainclip.pipelines.report import read_figures
    from grainclip.pipelines.rundir import RunDir

    images = read_table(partsworld_small / "train" / "images", "images").to_pylist()[:24]
    tar_path = tmp_path / "shard-000.tar"
    with tarfile.open(tar_path, "w") as tar:
        members = [
            (f"{r['image_id']}.{ext}", data)
            for r in images
            for ext, data in (("png", r["image"]), ("txt", r["caption"].encode()))
        ]
        members += [("broken-0001.jpg", b"\xff\xd8\xff\xe0 not a jpeg"), ("broken-0001.txt", b"a broken image")]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

    result = run_pipeline(config_for({"kind": "webdataset", "path": str(tar_path)}, tmp_path / "wds", partsworld_small))
    table = read_table(result.annotations, "annotations")
    rows = {row["image_id"]: row for row in table.to_pylist()}
    assert sorted(rows) == sorted([r["image_id"] for r in images] + ["broken-0001"])
    assert rows["broken-0001"]["status"] == "decode_failed" and rows["broken-0001"]["caption"] == "a broken image"
    for image in images:
        row = rows[image["image_id"]]
        assert row["status"] in ("ok", "no_regions") and row["caption"] == image["caption"] and row["descriptions"]
    assert sum(len(r["regions"]) for r in rows.values()) > 0
    # The report's histograms, added batch by batch, count what the rows hold.
    figures = read_figures(RunDir(result.output))
    described = [r for r in rows.values() if r["status"] in ("ok", "no_regions")]
    words = [len(d.split()) for r in described for d in r["descriptions"]]
    scores = [region["score"] for r in described for region in r["regions"]]
    assert figures.regions_per_image.counts.tolist() == np.bincount([len(r["regions"]) for r in described]).tolist()
    assert (
        figures.descriptions_per_image.counts.tolist()
        == np.bincount([len(r["descriptions"]) for r in described]).tolist()
    )
    assert figures.words_per_description.counts.tolist() == np.bincount(words).tolist()
    assert figures.region_scores.counts.tolist() == np.histogram(scores, bins=np.linspace(0, 1, 21))[0].tolist()
    assert figures.region_scores.mean == pytest.approx(np.mean(scores))

    # The same tar against truth that knows none of its images: every row fails and the run stops early.
    stopping = config_for(
        {"kind": "webdataset", "path": str(tar_path)},
        tmp_path / "stopped",
        partsworld_small / "test_novel" / "truth",
        max_error_fraction=0.2,
        error_check_min_rows=8,
    )
    with pytest.raises(ErrorFractionExceeded) as error:
        run_pipeline(stopping)
    assert "describe_failed" in str(error.value) and "not in the PartsWorld truth" in str(error.value)
    manifest = json.loads((tmp_path / "stopped" / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and "max_error_fraction" in manifest["message"]


def test_the_read_ahead_bound_reaches_ray_data_and_warns_when_too_small(partsworld_small, tmp_path, caplog):
    """`object_store_mib` is the executor's object-store limit; the run still ends with every row, and a bound
    that holds fewer than 16 of the run's blocks is named in one warning with the value to set."""
    import ray

    from grainclip.pipelines import run_pipeline
    from grainclip.pipelines.rundir import RunDir
    from grainclip.pipelines.runner import build_plan

    source = {"kind": "partsworld", "path": str(partsworld_small)}
    config = config_for(source, tmp_path / "run", partsworld_small, object_store_mib=4)
    plan = build_plan(config, RunDir(config.output), "bounded", ray.put(np.array([], dtype="S1")))
    assert plan.context.execution_options.resource_limits.object_store_memory == 4 * 2**20
    unbounded = build_plan(config.model_copy(update={"object_store_mib": None}), RunDir(config.output), "x", None)
    assert unbounded.context.execution_options.resource_limits.object_store_memory == float("inf")

    with caplog.at_level("WARNING", logger="grainclip.pipelines.runner"):
        result = run_pipeline(config.model_copy(update={"sink": config.sink.model_copy(update={"rows_per_shard": 64})}))
    ids = read_table(result.annotations, "annotations").column("image_id").to_pylist()
    expected = read_table(partsworld_small / "train" / "images", "images").column("image_id").to_pylist()
    assert sorted(ids) == sorted(expected)
    assert set(result.counts) <= {"ok", "no_regions"} and result.counts.get("ok")
    block = RunDir(result.output).read_shard_stats()[0]["block_bytes"]
    assert 16 * block > 4 * 2**20 > 8 * block  # one 64-row block of 64-px PNGs: 1/16 to 1/8 of the bound
    warnings = [r.getMessage() for r in caplog.records if "object_store_mib" in r.getMessage()]
    assert len(warnings) == 1 and f"at least {math.ceil(16 * block / 2**20)}" in warnings[0]


def test_cli_refuses_to_resume_a_run_made_with_another_config(partsworld_small, tmp_path):
    """No Ray needed: the run directory is checked before anything starts."""
    out = tmp_path / "run"
    config = {"output": str(out), "source": {"kind": "partsworld", "path": str(partsworld_small)}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    out.mkdir()
    (out / "manifest.json").write_text(
        json.dumps(
            {
                "run_id": "old-run",
                "config_hash": "0",
                "resume_config": {
                    "source": {"kind": "partsworld", "path": str(partsworld_small), "split": "test_seen"}
                },
            }
        )
    )
    (out / "annotations").mkdir()  # a run that committed something is protected; one that committed nothing is not
    pq.write_table(pa.table({"image_id": ["img-0"]}), out / "annotations" / "part-00000.parquet")
    refused = subprocess.run([*CLI, "run", str(path)], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert "refusing to resume" in refused.stderr and "source.split: 'test_seen' -> 'train'" in refused.stderr
    assert "--force-new-run" in refused.stderr and "Traceback" not in refused.stderr
