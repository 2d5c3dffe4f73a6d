"""Ray Train: 2 DDP workers (gloo, CPU) fed by Ray Data give the single-process losses and weights."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray
import torch

from grainclip.config.train import TrainConfig
from grainclip.train import load_model, train
from grainclip.train.metrics import read_metrics

LOSSES = ("loss/total", "loss/caption", "loss/box_l1", "loss/box_giou", "loss/region")


def config(clip: Path, annotations: Path, out: Path, **values) -> TrainConfig:
    base = {
        "output_dir": str(out),
        "backbone": {"model": str(clip)},
        "decoder": {"layers": 2, "d_model": 64, "heads": 4, "ffn_dim": 128, "dropout": 0.0},
        # Crop, flip and caption sampling on: the same row must become the same sample on either side.
        "data": {"train": str(annotations), "random_resized_crop": True, "hflip": True, "num_workers": 1},
        "steps": 2,
        "log_every": 1,
    }
    return TrainConfig.model_validate({**base, **values, "data": {**base["data"], **values.pop("data", {})}})


@pytest.fixture
def local_ray():
    """A small local Ray instance (no dashboard): 2 training workers plus the data actor and read tasks."""
    ray.init(num_cpus=4, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
def test_two_ray_train_workers_equal_one_process_on_the_concatenated_batch(tiny_models, partsworld_small, tmp_path):
    annotations = tmp_path / "eight.parquet"  # one global batch: each step is one pass over the data
    pq.write_table(pq.read_table(partsworld_small / "train" / "truth").slice(0, 8), annotations)

    single = train(config(tiny_models["clip"], annotations, tmp_path / "single", batch_size=8, data={"num_workers": 0}))
    distributed = train(config(tiny_models["clip"], annotations, tmp_path / "ray", batch_size=4, workers=2))

    expected, got = read_metrics(single.output_dir), read_metrics(distributed.output_dir)
    assert [m["step"] for m in got] == [1, 2]
    for step in (0, 1):  # step 2's loss is computed with the weights after the first synchronised update
        for key in LOSSES:
            assert got[step][key] == pytest.approx(expected[step][key], abs=1e-5), (step + 1, key)
    assert distributed.metrics["loss/total"] == pytest.approx(expected[-1]["loss/total"], abs=1e-5)

    one, two = load_model(single.model_dir).model.state_dict(), load_model(distributed.model_dir).model.state_dict()
    assert one.keys() == two.keys()
    assert max((one[k] - two[k]).abs().max().item() for k in one if one[k].is_floating_point()) < 1e-4
    assert not torch.equal(one["queries"], load_model_initial_queries(tiny_models["clip"], tmp_path))


def load_model_initial_queries(clip: Path, tmp_path: Path) -> torch.Tensor:
    """The decoder queries before any step (same seed), to show the runs above did update the model."""
    from grainclip.train.backbone import build_backbone
    from grainclip.train.model import build_model

    cfg = config(clip, tmp_path / "eight.parquet", tmp_path / "init")
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.backbone)
    return build_model("grain", backbone.model, cfg.decoder, 32).state_dict()["queries"]
