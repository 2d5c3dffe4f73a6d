"""Scale figures of the trainer's data loader: images/s and peak RSS (main process and DataLoader workers).

    python benchmarks/scale_loader.py --data PARTSWORLD_DIR [--images 20000] [--batch 64] [--workers 2] [--size 224]

Streams `--images` rows of PARTSWORLD_DIR/train/truth through the trainer's own loader
(`grainclip.train.trainer.LocalBatches`: Parquet row groups -> decode -> box-aware augmentation -> tokenised
captions and descriptions -> collated batches) for the backbone config `--model` (default ViT-B-16: 224 px
input, open_clip tokenizer), with no model step, so the figure is the loader's ceiling. Images/s is counted
from the first batch on (worker start excluded). Prints one JSON record.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scale_pipeline import RssSampler, print_record  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default="ViT-B-16")
    args = parser.parse_args()

    import torch

    from grainclip.config.train import TrainConfig
    from grainclip.train.backbone import build_backbone
    from grainclip.train.trainer import LocalBatches

    torch.set_num_threads(1)
    cfg = TrainConfig.model_validate({
        "output_dir": "/tmp/unused", "backbone": {"model": args.model},
        "data": {"train": str(args.data / "train" / "truth"), "num_workers": args.workers},
        "batch_size": args.batch, "steps": 1,
    })  # fmt: skip
    backbone = build_backbone(cfg.backbone)
    sampler = RssSampler()
    sampler.start()
    load_before = os.getloadavg()
    batches = LocalBatches(cfg, backbone, None)
    first = next(batches)
    seen, started = first.size, time.perf_counter()
    while seen < args.images:
        seen += next(batches).size
    seconds = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()
    mib = 2**20
    print_record(
        load_before,
        images=seen,
        input_size=backbone.image_size,
        batch=args.batch,
        workers=args.workers,
        images_per_s=round((seen - first.size) / seconds, 1),
        main_peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        worker_peak_rss_mib=sorted(round(r / mib, 1) for r, _ in sampler.peak.values()),
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
