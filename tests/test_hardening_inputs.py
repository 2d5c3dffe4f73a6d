"""The bad-input corpus (grainclip.testing.corpus) through the evaluator CLI: every row evaluated or skipped
with its reason, none lost, no crash (issue 8).

The same corpus through the other readers is tested beside their code and not repeated here:
pipeline -- test_pipeline_run.py (images.parquet row by row against expected.json, folder + Latin-1 CSV);
trainer -- test_train_loop.py::test_bad_annotation_rows_are_skipped_and_counted_not_fatal and
test_train_data.py::test_bad_annotation_rows_are_skipped_by_status_and_reason; decoding -- test_images.py.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from grainclip.cli import app
from grainclip.testing.clip import SMALLEST_CLIP_CONFIG
from grainclip.testing.corpus import write_bad_input_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_bad_input_corpus(tmp_path_factory.mktemp("corpus"))


def test_the_evaluator_accounts_for_every_corpus_row(corpus, tmp_path):
    model = tmp_path / "tiny-clip.json"
    model.write_text(json.dumps(SMALLEST_CLIP_CONFIG))
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({
        "out": str(tmp_path / "report"),
        "models": [{"label": "clip", "type": "open_clip", "name": str(model)}],
        "datasets": [
            {"name": "images", "source": {"kind": "parquet", "path": str(corpus["images"])}, "tasks": ["retrieval"]},
            {"name": "annotations", "source": {"kind": "parquet", "path": str(corpus["annotations"])}, "tasks": ["retrieval"]},
        ],
        "batch_size": 4, "num_workers": 0, "grid_images": 0, "progress": False,
    }))  # fmt: skip
    result = CliRunner().invoke(app, ["evaluate", str(config)])
    assert result.exit_code == 0, result.output
    runs = {r["dataset"]: r for r in json.loads((tmp_path / "report" / "results.json").read_text())["runs"]}

    expected = json.loads(corpus["expected"].read_text())
    images = runs["images"]
    rows = pq.read_table(corpus["images"]).num_rows  # 21: "duplicate" twice (the evaluator scores both)
    assert images["n_rows"] == rows and images["n_evaluated"] + images["skipped_images"]["count"] == rows
    skipped = {e["image_id"]: e["reason"] for e in images["skipped_images"]["examples"]}
    assert skipped.keys() == {i for i, outcome in expected.items() if outcome == "error"}
    assert all(reason for reason in skipped.values())
    assert "not found" in skipped["missing_file"]
    # Captions: the 10 kB one is truncated by the tokenizer, empty/null ones are counted, not errors.
    assert images["retrieval"]["n_images"] + images["retrieval"]["n_without_caption"] == images["n_evaluated"]
    assert images["retrieval"]["n_without_caption"] >= 2

    annotations = runs["annotations"]
    table = pq.read_table(corpus["annotations"])
    assert annotations["n_rows"] == table.num_rows
    assert annotations["n_evaluated"] + annotations["skipped_images"]["count"] == table.num_rows
    assert {e["image_id"] for e in annotations["skipped_images"]["examples"]} == {
        "truncated",
        "zero_bytes",
        "missing_image",
    }
