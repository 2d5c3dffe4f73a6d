"""`grainclip evaluate CONFIG` end to end on PartsWorld: a GRAIN model folder written by the trainer's export
and a plain open_clip model, every task; the report files; user mistakes as one-line errors."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from grainclip.cli import app
from grainclip.testing.clip import SMALLEST_CLIP_CONFIG


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny open_clip JSON config and a tiny GRAIN model folder exported by grainclip.train (random weights)."""
    import torch

    from grainclip.config.train import BackboneConfig, DecoderConfig
    from grainclip.train.backbone import build_backbone
    from grainclip.train.export import export_model
    from grainclip.train.model import build_model

    root = tmp_path_factory.mktemp("models")
    config = root / "cli-clip.json"
    config.write_text(json.dumps(SMALLEST_CLIP_CONFIG))
    torch.manual_seed(0)
    backbone = build_backbone(BackboneConfig(model=str(config)))
    decoder = DecoderConfig(layers=1, d_model=32, heads=2, ffn_dim=64, region_queries=3, objectness=True)
    model = build_model("grain", backbone.model, decoder, int(backbone.model_cfg["embed_dim"]))
    export_model(model, backbone, decoder, root / "grain", "tiny-grain")
    return {"clip": config, "grain": root / "grain"}


def _write_config(path, data) -> str:
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_evaluate_command_writes_the_report(models, partsworld_small, tmp_path):
    out = tmp_path / "report"
    datasets = [
        {
            "name": split,
            "source": {"kind": "partsworld", "path": str(partsworld_small), "split": f"test_{split}"},
            "tasks": ["classification", "retrieval", "grounding"],
        }
        for split in ("seen", "novel")
    ]
    config = _write_config(
        tmp_path / "eval.yaml",
        {
            "out": str(tmp_path / "ignored"),
            "models": [
                {"label": "GRAIN", "type": "checkpoint", "path": str(models["grain"])},
                {"label": "CLIP", "type": "open_clip", "name": str(models["clip"])},
            ],
            "datasets": datasets,
            "batch_size": 16,
            "num_workers": 1,
            "grid_images": 4,
            "progress": False,
            "scoring": {"alpha_sweep": [0.0, 0.5, 1.0]},
        },
    )
    result = CliRunner().invoke(app, ["evaluate", config, "--out", str(out), "--set", "batch_size=8"])
    assert result.exit_code == 0, result.output

    results = json.loads((out / "results.json").read_text())
    assert results["config"]["batch_size"] == 8
    runs = {(r["model"], r["dataset"]): r for r in results["runs"]}
    assert set(runs) == {(m, d) for m in ("GRAIN", "CLIP") for d in ("seen", "novel")}
    grain, clip = runs[("GRAIN", "novel")], runs[("CLIP", "novel")]
    assert [c["mode"] for c in grain["classification"]] == ["global", "global+descriptors", "grain"]
    assert all(0.0 <= c["top1"] <= c["top5"] <= 1.0 and c["n_images"] == 32 for c in grain["classification"])
    assert [s["alpha"] for s in grain["alpha_sweep"]] == [0.0, 0.5, 1.0]
    assert grain["grounding"]["n_descriptions"] > 32 and 0.0 <= grain["grounding"]["mean_iou"] <= 1.0
    assert grain["retrieval"]["n_images"] == 32 and "text_to_image_R@10" in grain["retrieval"]
    # The plain CLIP model: region modes and grounding are reported unavailable, not errors.
    assert [c["mode"] for c in clip["classification"]] == ["global", "global+descriptors"]
    assert {u.get("mode") or u.get("task") for u in clip["unavailable"]} == {"grain", "grounding"}
    assert "grounding" not in clip
    assert [m["region_modes"] for m in results["models"]] == [True, False]

    # predictions.parquet: one row per (model, dataset, mode, image); its top-1 agrees with the reported top-1.
    predictions = pq.read_table(out / "predictions.parquet").to_pylist()
    assert results["predictions"] == "predictions.parquet"
    for (model, dataset), run in runs.items():
        for record in run["classification"]:
            rows = [r for r in predictions if (r["model"], r["dataset"], r["mode"]) == (model, dataset, record["mode"])]
            assert len(rows) == record["n_images"] == 32 and len({r["image_id"] for r in rows}) == 32
            assert all(len(r["top5_classes"]) == 5 and r["top5_scores"] == sorted(r["top5_scores"], reverse=True)
                       for r in rows)  # fmt: skip
            assert sum(r["top5_classes"][0] == r["label"] for r in rows) / 32 == pytest.approx(record["top1"])
            assert sum(r["label"] in r["top5_classes"] for r in rows) / 32 == pytest.approx(record["top5"])
        assert run["n_predictions"] == 32 * len(run["classification"])
    assert len(predictions) == sum(run["n_predictions"] for run in runs.values())

    markdown = (out / "results.md").read_text()
    assert "| GRAIN | novel | grain |" in markdown and "grain unavailable: clip model has no region head" in markdown
    for name in ("modes.png", "alpha_sweep.png", "regions_GRAIN_seen.png", "regions_GRAIN_novel.png"):
        with Image.open(out / "plots" / name) as image:
            assert image.size[0] > 300 and image.size[1] > 200
    assert not (out / "plots" / "regions_CLIP_novel.png").exists()
    assert "report:" in result.output


def test_user_mistakes_are_one_line_errors(models, tmp_path):
    (tmp_path / "images" / "owl").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "owl" / "0.png")
    (tmp_path / "descriptors.json").write_text(json.dumps({"eagle": ["sharp beak"]}))
    clip = [{"label": "c", "type": "open_clip", "name": str(models["clip"])}]
    cases = {
        "has no descriptors for 1 of the dataset's 1 classes: 'owl'": {
            "models": clip,
            "datasets": [
                {
                    "name": "d",
                    "source": {"kind": "image_folder", "path": str(tmp_path / "images")},
                    "descriptors": str(tmp_path / "descriptors.json"),
                }
            ],
        },
        "checkpoint not found": {
            "models": [{"label": "g", "type": "checkpoint", "path": str(tmp_path / "nope")}],
            "datasets": [{"name": "d", "source": {"kind": "image_folder", "path": str(tmp_path / "images")}}],
        },
        "expected tags: 'open_clip', 'checkpoint'": {
            "models": [{"label": "x", "type": "timm", "name": "y"}],
            "datasets": [{"name": "d", "source": {"kind": "image_folder", "path": "."}}],
        },
        "each dataset name must be unique": {
            "models": clip,
            "datasets": [
                {"name": "d", "source": {"kind": "image_folder", "path": "a"}},
                {"name": "d", "source": {"kind": "image_folder", "path": "b"}},
            ],
        },
    }
    for expected, data in cases.items():
        data["out"] = str(tmp_path / "out")
        result = CliRunner().invoke(app, ["evaluate", _write_config(tmp_path / "bad.yaml", data)])
        assert result.exit_code == 2, (expected, result.output)
        assert expected in result.output and "Traceback" not in result.output
