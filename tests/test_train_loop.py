"""The trainer end to end on tiny models: overfitting, exact resume after a kill, export formats, the CLIP
baseline, bad input, the eval hook, and the optimizer's parameter groups and schedule."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_iou
from typer.testing import CliRunner

from grainclip.cli import app
from grainclip.config.train import DecoderConfig, OptimConfig, TrainConfig
from grainclip.evaluate.hook import zero_shot_hook
from grainclip.images import decode_image
from grainclip.model_api import RegionModel, ZeroShotModel
from grainclip.testing.corpus import write_bad_input_corpus
from grainclip.train import load_model, train
from grainclip.train.backbone import build_backbone
from grainclip.train.metrics import read_metrics
from grainclip.train.model import build_model
from grainclip.train.optim import WarmupCosine, build_optimizer
from grainclip.train.trainer import Trainer, WorkerContext

REPO = Path(__file__).resolve().parents[1]
TINY_DECODER = {"layers": 2, "d_model": 64, "heads": 4, "ffn_dim": 128, "dropout": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def clip_folder(tiny_models) -> Path:
    return tiny_models["clip"]


@pytest.fixture(scope="module")
def thirty_two_images(partsworld_small, tmp_path_factory) -> Path:
    table = pq.read_table(partsworld_small / "train" / "truth")
    out = tmp_path_factory.mktemp("overfit") / "part.parquet"
    pq.write_table(table.slice(0, 32), out)
    return out


def tiny_config(clip_folder: Path, annotations: Path | str, out: Path, **overrides) -> TrainConfig:
    values = {
        "output_dir": str(out),
        "backbone": {"model": str(clip_folder)},
        "decoder": TINY_DECODER,
        "data": {"train": str(annotations), "num_workers": 0},
        "batch_size": 8,
        "steps": 4,
        "log_every": 1,
    }
    for key, value in overrides.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) and key in values else value
    return TrainConfig.model_validate(values)


def matched_ious(loaded, rows: list[dict]) -> np.ndarray:
    images = torch.stack([loaded.preprocess(decode_image(row["image"])) for row in rows])
    with torch.no_grad():
        boxes = loaded.model.encode_regions(images).boxes
    ious = []
    for predicted, row in zip(boxes, rows):
        iou = box_iou(predicted, torch.tensor([region["box"] for region in row["regions"]]))
        rows_, cols = linear_sum_assignment(-iou.numpy())
        ious += iou[rows_, cols].tolist()
    return np.asarray(ious)


@pytest.mark.slow
def test_overfits_32_partsworld_images_and_exports_a_loadable_model(clip_folder, thirty_two_images, tmp_path):
    cfg = tiny_config(
        clip_folder, thirty_two_images, tmp_path / "run",
        data={"llm_caption_prob": 1.0},  # rich captions: few identical strings, so L_ic can approach 0
        loss={"box_l1_weight": 5.0, "box_giou_weight": 2.0},  # DETR's weights: boxes converge in fewer steps
        optim={"lr": 2e-3, "warmup_steps": 10},
        batch_size=32, steps=150, log_every=1, checkpoint_every=1000,
    )  # fmt: skip
    result = train(cfg)
    metrics = read_metrics(result.output_dir)
    first, last = metrics[0], metrics[-1]
    assert first["step"] == 1 and last["step"] == 150 == result.steps
    for loss in ("loss/caption", "loss/box", "loss/region"):
        assert last[loss] <= 0.2 * first[loss], (loss, first[loss], last[loss])

    loaded = load_model(result.model_dir)
    assert loaded.kind == "grain" and isinstance(loaded.model, RegionModel)
    rows = pq.read_table(thirty_two_images).to_pylist()
    assert matched_ious(loaded, rows).mean() > 0.5

    # The backbone folder is a plain open_clip checkpoint: open_clip loads it and embeds text identically.
    backbone, _, _ = open_clip.create_model_and_transforms(f"local-dir:{result.model_dir / 'backbone'}")
    tokens = loaded.tokenizer(["red crest", "a photo of a savrin"])
    with torch.no_grad():
        assert torch.allclose(backbone.encode_text(tokens), loaded.model.encode_text(tokens), atol=1e-6)
        images = torch.rand(2, 3, 64, 64)
        region = loaded.model.encode_regions(images, normalize=True)
        image = loaded.model.encode_image(images, normalize=True)
    assert region.embeddings.shape == (2, 5, 32) and region.objectness is None
    assert torch.allclose(region.embeddings.norm(dim=-1), torch.ones(2, 5), atol=1e-5)
    # The evaluator takes the global embedding from the region pass instead of running the model twice.
    assert torch.allclose(region.image, image, atol=1e-6)


def write_yaml(cfg: TrainConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "grainclip.cli", *args]


def single_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_uninterrupted_losses(clip_folder, partsworld_small, tmp_path):
    # Augmentation, caption sampling, dropout, two loader workers and gradient accumulation are all on:
    # each is a source of randomness or order that a resumed run must continue exactly.
    overrides = dict(
        data={"num_workers": 2, "random_resized_crop": True, "hflip": True, "shuffle_row_groups": 1},
        decoder={"dropout": 0.1},
        optim={"grad_accum_steps": 2, "warmup_steps": 3},
        steps=20, checkpoint_every=10,
    )  # fmt: skip
    reference = train(
        tiny_config(clip_folder, partsworld_small / "train" / "truth", tmp_path / "reference", **overrides)
    )
    expected = read_metrics(reference.output_dir)

    config = write_yaml(
        tiny_config(clip_folder, partsworld_small / "train" / "truth", tmp_path / "run", **overrides),
        tmp_path / "c.yaml",
    )
    checkpoint = tmp_path / "run" / "checkpoints" / "step_000010" / "trainer_state.json"
    process = subprocess.Popen(cli("train", str(config)), env=single_thread_env(), cwd=REPO, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert checkpoint.exists(), process.stderr.read().decode()[-3000:]
    assert not (tmp_path / "run" / "model").exists(), "the run finished before it could be killed"
    assert read_metrics(tmp_path / "run")[-1]["step"] < 20

    resumed = subprocess.run(cli("train", str(config), "--resume", "latest"), env=single_thread_env(), cwd=REPO,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = read_metrics(tmp_path / "run")
    assert [m["step"] for m in got] == list(range(1, 21))
    for step in (11, 15, 20):
        for key in ("loss/total", "loss/caption", "loss/box", "loss/region", "lr"):
            assert got[step - 1][key] == pytest.approx(expected[step - 1][key], abs=1e-5), (step, key)
    assert load_model(tmp_path / "run" / "model").kind == "grain"


def test_clip_baseline_trains_through_the_same_loop_with_the_eval_hook(clip_folder, partsworld_small, tmp_path):
    cfg = tiny_config(
        clip_folder, partsworld_small / "train" / "truth", tmp_path / "clip", mode="clip", steps=2,
        eval={"every": 2, "datasets": [{"name": "novel", "limit": 8, "source": {
            "kind": "partsworld", "path": str(partsworld_small), "split": "test_novel"}}]},
    )  # fmt: skip
    result = train(cfg, eval_hook=zero_shot_hook(cfg))  # the caller builds the hook: train does not import evaluate
    metrics = read_metrics(result.output_dir)
    assert set(k for k in metrics[-1] if k.startswith("loss/")) == {"loss/caption", "loss/total"}
    assert 0.0 <= metrics[-1]["eval/novel/global/top1"] <= 1.0
    loaded = load_model(result.model_dir)
    assert loaded.kind == "clip" and isinstance(loaded.model, ZeroShotModel)
    assert not isinstance(loaded.model, RegionModel)
    assert not (result.model_dir / "grain_heads.safetensors").exists()


def test_train_step_returns_detached_losses_and_the_host_reads_them_only_when_logged(
    clip_folder, partsworld_small, tmp_path, monkeypatch
):
    cfg = tiny_config(
        clip_folder, partsworld_small / "train" / "truth", tmp_path / "step", optim={"grad_accum_steps": 2}
    )
    trainer = Trainer(cfg, WorkerContext())
    reads = []  # host reads of loss values: tensors still in the autograd graph, or the float64 step losses
    real_item, real_tolist = torch.Tensor.item, torch.Tensor.tolist

    def recorded(real):
        def read(self):
            if self.grad_fn is not None or self.dtype == torch.float64:
                reads.append(tuple(self.shape))
            return real(self)

        return read

    monkeypatch.setattr(torch.Tensor, "item", recorded(real_item))
    monkeypatch.setattr(torch.Tensor, "tolist", recorded(real_tolist))
    result = trainer.train_step()
    assert reads == [], "a micro-batch synced a loss to the host"
    assert {"caption", "box", "region", "total"} <= set(result.losses)
    assert all(not v.requires_grad and v.dtype == torch.float64 for v in result.losses.values())
    assert trainer.telemetry.images == 2 * cfg.batch_size and trainer.telemetry.totals["skipped_image"] == 0

    trainer.step = 1
    metrics = trainer.log(result, last=False)
    assert reads, "logging reads the step's losses back"
    assert metrics["loss/total"] == pytest.approx(real_item(result.losses["total"]))
    assert metrics["images_per_s"] > 0 and trainer.telemetry.images == 0  # a new interval starts


def test_objectness_head_trains_and_scores_regions(clip_folder, partsworld_small, tmp_path):
    cfg = tiny_config(
        clip_folder, partsworld_small / "train" / "truth", tmp_path / "obj", decoder={"objectness": True}, steps=2
    )
    result = train(cfg)
    assert "loss/objectness" in read_metrics(result.output_dir)[-1]
    loaded = load_model(result.model_dir)
    with torch.no_grad():
        objectness = loaded.model.encode_regions(torch.zeros(2, 3, 64, 64)).objectness
    assert objectness.shape == (2, 5) and bool(((objectness > 0) & (objectness < 1)).all())


def test_gradient_checkpointing_changes_memory_not_results(clip_folder, partsworld_small, tmp_path, monkeypatch):
    import grainclip.train.model as model_module

    calls = []

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return torch.utils.checkpoint.checkpoint(*args, **kwargs)

    data = partsworld_small / "train" / "truth"
    plain = train(tiny_config(clip_folder, data, tmp_path / "plain", steps=2))
    monkeypatch.setattr(model_module, "checkpoint", counting_checkpoint)
    checkpointed = train(tiny_config(clip_folder, data, tmp_path / "ckpt", steps=2, grad_checkpointing=True))
    assert len(calls) == 2 * 2  # two decoder layers recomputed in each of the two steps
    for a, b in zip(read_metrics(plain.output_dir), read_metrics(checkpointed.output_dir), strict=True):
        assert a["loss/total"] == pytest.approx(b["loss/total"], abs=1e-5)


def test_bf16_autocast_path_trains(clip_folder, partsworld_small, tmp_path):
    """The GPU default (bf16 autocast), exercised on the CPU: losses stay finite and the model exports."""
    result = train(
        tiny_config(clip_folder, partsworld_small / "train" / "truth", tmp_path / "bf16", steps=2, precision="bf16")
    )
    assert all(np.isfinite(v) for k, v in read_metrics(result.output_dir)[-1].items() if k.startswith("loss/"))
    assert load_model(result.model_dir).kind == "grain"


def test_bad_annotation_rows_are_skipped_and_counted_not_fatal(clip_folder, tmp_path):
    corpus = write_bad_input_corpus(tmp_path / "corpus")
    cfg = tiny_config(clip_folder, corpus["annotations"], tmp_path / "bad", batch_size=2, steps=6)
    result = train(cfg)
    last = read_metrics(result.output_dir)[-1]
    # 9 rows, 5 trainable; 12 samples read more than two passes over the file.
    assert last["data/skipped_status"] >= 2  # describe_failed
    assert last["data/skipped_image"] >= 6  # zero bytes, truncated JPEG, missing file
    assert last["data/regions_dropped"] >= 4  # degenerate and NaN boxes, with their descriptions
    assert last["data/skipped_caption"] == 0
    assert np.isfinite(last["loss/total"])


def test_cli_errors_are_one_line(clip_folder, tmp_path):
    corpus = write_bad_input_corpus(tmp_path / "corpus")
    failed_only = tmp_path / "failed.parquet"
    table = pq.read_table(corpus["annotations"])
    pq.write_table(
        table.filter(table.column("status").to_numpy(zero_copy_only=False) == "describe_failed"), failed_only
    )
    cases = {
        "unknown key": ({"data": {"train": str(corpus["annotations"])}, "stepz": 3}, "stepz"),
        "regions vs queries": ({"data": {"train": "x", "max_regions": 9}}, "max_regions"),
        "missing data": ({"data": {"train": str(tmp_path / "nowhere")}, "backbone": {"model": str(clip_folder)}}, "nowhere"),
        "no trainable row": ({"data": {"train": str(failed_only)}, "backbone": {"model": str(clip_folder)}, "decoder": TINY_DECODER}, "trainable status"),
    }  # fmt: skip
    runner = CliRunner()
    for name, (values, needle) in cases.items():
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "out"), **values}))
        run = runner.invoke(app, ["train", str(path)])
        assert run.exit_code == 2, (name, run.output, run.exception)
        assert needle in run.stderr and "Traceback" not in run.output, (name, run.stderr)


def test_weight_decay_skips_norms_biases_embeddings_queries_and_logit_scale(clip_folder):
    backbone_config = TrainConfig(data={"train": "x"}, backbone={"model": str(clip_folder)}).backbone
    model = build_model("grain", build_backbone(backbone_config).model, DecoderConfig(**TINY_DECODER), 32)
    decay, no_decay = build_optimizer(model, OptimConfig(weight_decay=0.1)).param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert {"queries", "backbone.logit_scale", "backbone.token_embedding.weight", "backbone.positional_embedding",
            "backbone.visual.positional_embedding", "backbone.visual.class_embedding", "norm.weight",
            "box_head.0.bias", "backbone.ln_final.weight", "region_logit_scale"} <= skipped  # fmt: skip
    assert {"memory_proj.weight", "roi_proj.weight", "box_head.0.weight", "backbone.text_projection",
            "backbone.visual.proj"} <= decayed  # fmt: skip
    # The paper's global query replaces (and freezes) open_clip's pooled projection; its regions use region_proj.
    paper_decoder = DecoderConfig(**TINY_DECODER, global_embedding="query", region_embedding="query")
    paper = build_model("grain", build_backbone(backbone_config).model, paper_decoder, 32)
    decay, no_decay = build_optimizer(paper, OptimConfig(weight_decay=0.1)).param_groups
    names = {id(p): n for n, p in paper.named_parameters()}
    assert "region_proj.weight" in {names[id(p)] for p in decay["params"]}
    assert "backbone.visual.proj" not in {names[id(p)] for p in decay["params"] + no_decay["params"]}  # frozen


def test_warmup_then_cosine():
    schedule = WarmupCosine(warmup=4, total=14, min_ratio=0.1)
    assert [round(schedule(s), 4) for s in range(4)] == [0.2, 0.4, 0.6, 0.8]
    assert schedule(4) == pytest.approx(1.0)
    assert schedule(9) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule(14) == pytest.approx(0.1) and schedule(100) == pytest.approx(0.1)
