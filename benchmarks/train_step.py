"""Training step cost of GRAIN vs the CLIP baseline, and whether the data loader keeps up.

Same open_clip backbone, same batch, same process, same torch thread count:

* step time: forward + losses + backward + AdamW step, GRAIN (decoder, matcher, L_ic + L_box + L_rd,
  descriptions through the text tower) vs `clip` (plain open_clip, L_ic). Batches are prepared up front and
  the two modes alternate step by step, so machine load hits both alike; the ratio uses the medians.
* loader: images/s of the single-process streaming loader (Parquet -> decode -> resize -> tokenise, in
  DataLoader workers) on its own, compared with the images/s a GRAIN step consumes; and, in a real loop
  with the loader feeding GRAIN steps, the fraction of wall time spent waiting for the next batch.

    python benchmarks/train_step.py [--model tiny|small] [--batch 64] [--steps 20] [--workers N] [--threads 1]

`tiny` is the test suite's open_clip config (vision width 64, 2 layers, 64 px, patch 16) with a 2-layer,
d_model 64 decoder; `small` is a vision width 256 / 4 layers / 128 px / patch 16 ViT with a 2-layer,
d_model 128 decoder. Data: a PartsWorld set generated at the model's resolution.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from grainclip.config.train import TrainConfig
from grainclip.partsworld import generate
from grainclip.train.backbone import build_backbone
from grainclip.train.batch import TrainBatch
from grainclip.train.losses import GrainCriterion
from grainclip.train.model import build_model
from grainclip.train.optim import build_optimizer
from grainclip.train.trainer import LocalBatches

sys.path.insert(0, str(Path(__file__).parent))
from figures import is_recorded_configuration, record  # noqa: E402

MODELS = {
    "tiny": (
        {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        },
        {"layers": 2, "d_model": 64, "heads": 4, "ffn_dim": 128, "dropout": 0.0},
    ),
    "small": (
        {
            "embed_dim": 128,
            "vision_cfg": {"image_size": 128, "layers": 4, "width": 256, "head_width": 64, "patch_size": 16},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
        },
        {"layers": 2, "d_model": 128, "heads": 4, "ffn_dim": 512, "dropout": 0.0},
    ),
}


def make_config(args: argparse.Namespace, work: Path, mode: str, workers: int | None = None) -> TrainConfig:
    model_cfg, decoder = MODELS[args.model]
    config_path = work / f"bench-{args.model}.json"
    config_path.write_text(json.dumps(model_cfg))
    return TrainConfig.model_validate(
        {
            "mode": mode,
            "output_dir": str(work / "out"),
            "backbone": {"model": str(config_path)},
            "decoder": decoder,
            "data": {"train": str(work / "data" / "train" / "truth"), "num_workers": workers},
            "batch_size": args.batch,
        }
    )


class Stepper:
    """One mode's model, optimizer and criterion; `step(batch)` runs one full training step."""

    def __init__(self, cfg: TrainConfig) -> None:
        torch.manual_seed(0)
        self.backbone = build_backbone(cfg.backbone)
        self.model = build_model(cfg.mode, self.backbone.model, cfg.decoder, int(self.backbone.model_cfg["embed_dim"]))
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.criterion = GrainCriterion(cfg.loss, cfg.mode)

    def step(self, batch: TrainBatch) -> float:
        out = self.model(
            batch["images"], batch["caption_tokens"], batch.get("unique_description_tokens"), batch.get("boxes")
        )
        loss = self.criterion(out, batch)["total"]
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="Timed steps per mode.")
    parser.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=None,
        help="DataLoader worker counts to measure the loader with (default: the trainer's own, data.num_workers).",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both modes).")
    parser.add_argument("--images", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        size = MODELS[args.model][0]["vision_cfg"]["image_size"]
        generate(work / "data", n=args.images, seed=0, n_test=1, image_size=size)
        grain_cfg, clip_cfg = make_config(args, work, "grain"), make_config(args, work, "clip")
        grain, clip = Stepper(grain_cfg), Stepper(clip_cfg)
        pp = grain.backbone.preprocess_cfg
        mean, std = torch.tensor(pp["mean"]).view(1, 3, 1, 1), torch.tensor(pp["std"]).view(1, 3, 1, 1)

        loader = LocalBatches(grain_cfg, grain.backbone, None)
        batches = [next(loader).to_device(torch.device("cpu"), mean, std) for _ in range(args.steps + 1)]
        del loader

        # Step times, modes alternating over the same prepared batches.
        grain.step(batches[0]), clip.step(batches[0])  # warm-up
        times: dict[str, list[float]] = {"grain": [], "clip": []}
        for batch in batches[1:]:
            for name, stepper in (("grain", grain), ("clip", clip)):
                started = time.perf_counter()
                stepper.step(batch)
                times[name].append(time.perf_counter() - started)
        grain_s, clip_s = statistics.median(times["grain"]), statistics.median(times["clip"])
        step_ips = args.batch / grain_s

        def loader_alone(cfg: TrainConfig, workers: int) -> float:
            """Images/s of a fresh loader once every worker has delivered its first batch (start-up excluded)."""
            loader = LocalBatches(cfg, grain.backbone, None)
            for _ in range(max(workers, 1)):
                next(loader)
            started = time.perf_counter()
            for _ in range(args.steps):
                next(loader)
            return args.steps * args.batch / (time.perf_counter() - started)

        def real_loop(cfg: TrainConfig, workers: int) -> tuple[float, float]:
            """(share of wall time waiting for a batch, images/s) of a fresh loader feeding GRAIN steps."""
            loader = LocalBatches(cfg, grain.backbone, None)
            for _ in range(max(workers, 1)):
                grain.step(next(loader).to_device(torch.device("cpu"), mean, std))
            waited = total = 0.0
            for _ in range(args.steps):
                t0 = time.perf_counter()
                batch = next(loader).to_device(torch.device("cpu"), mean, std)
                t1 = time.perf_counter()
                grain.step(batch)
                waited += t1 - t0
                total += time.perf_counter() - t0
            return waited / total, args.steps * args.batch / total

        # Each worker count twice, the second round in reverse order, so load drifts hit every count alike.
        counts = args.workers or [None]
        configs = {w: make_config(args, work, "grain", w) for w in counts}
        resolved = {w: cfg.data.workers(grain.backbone.image_size) for w, cfg in configs.items()}
        loads: dict[int | None, list[tuple[float, float, float]]] = {w: [] for w in counts}
        for order in (counts, counts[::-1]):
            for w in order:
                loads[w].append((loader_alone(configs[w], resolved[w]), *real_loop(configs[w], resolved[w])))

    unique = statistics.mean(len(b["unique_description_ids"]) for b in batches)
    default = grain_cfg.data.workers(grain.backbone.image_size)
    print(f"model={args.model} batch={args.batch} threads={args.threads} default loader workers={default}")
    print(f"GRAIN step  median {grain_s * 1e3:8.1f} ms   (distinct descriptions per batch: {unique:.1f})")
    print(f"CLIP step   median {clip_s * 1e3:8.1f} ms")
    print(f"GRAIN/CLIP  {grain_s / clip_s:.2f}x   (target <= 1.25x)")
    for w, rounds in loads.items():
        loader_ips, waiting, loop_ips = (statistics.mean(column) for column in zip(*rounds, strict=True))
        print(
            f"workers {resolved[w]}{' (default)' if w is None else ''}: loader alone {loader_ips:8.1f} img/s vs GRAIN "
            f"step consumption {step_ips:8.1f} img/s -> {loader_ips / step_ips:.2f}x; in a real loop "
            f"{100 * waiting:.1f}% of wall time waiting for data, {loop_ips:.1f} img/s (mean of 2 rounds)"
        )
    if is_recorded_configuration(parser, args):
        record("grain_vs_clip_step", grain_s / clip_s, "ratio")  # median GRAIN step time over CLIP's


if __name__ == "__main__":
    main()
