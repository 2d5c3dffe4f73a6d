"""Zero-shot evaluation throughput: the evaluator vs a straightforward loop, same model, data and text.

Both compute CLIP zero-shot top-1 (`global` mode) on a PartsWorld test split stored as Parquet:

* reference: the plain loop a user would write: read the Parquet rows, decode and preprocess each image in
  the main process, encode a batch, normalise, argmax against class embeddings encoded once up front;
* evaluator: `grainclip.evaluate.evaluate_split` (DataLoader workers decode and preprocess while the main
  process encodes; class text from the cache, encoded once).

Runs alternate (reference, then the evaluator with each `--workers` count, in rotating order) so machine load
hits every side alike; each ratio uses the medians. Without `--workers` the evaluator runs with its default
(`grainclip.devices.loader_workers` for the model's input size), and a run with every option at its default
records that ratio as `eval_default_workers_vs_loop`. Images/s counts images from the first batch to the last
prediction, text encoding and model loading excluded for all. Top-1 of every side must agree (checked). All use
the same torch intra-op thread count (`--threads`); on a small, busy machine that count matters more than anything
else here.

    python benchmarks/eval_zero_shot.py [--images 512] [--image-size 128] [--model small] [--repeats 3] [--threads N]
                                         [--workers W ...]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

from grainclip.config.evaluate import EvalDataset
from grainclip.devices import loader_workers
from grainclip.evaluate import class_text
from grainclip.evaluate.datasets import load_split
from grainclip.evaluate.models import load_open_clip
from grainclip.evaluate.runner import PassSettings, evaluate_split
from grainclip.partsworld import generate
from grainclip.schema import parquet_files

sys.path.insert(0, str(Path(__file__).parent))
from figures import alternate, is_recorded_configuration, record  # noqa: E402

MODELS = {
    # Test-suite size: decoding dominates.
    "tiny": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    },
    # A small ViT where the image tower costs about as much as decoding on this CPU.
    "small": {
        "embed_dim": 128,
        "vision_cfg": {"image_size": 128, "layers": 4, "width": 256, "patch_size": 16, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
    },
}


def reference_loop(
    loaded, truth: Path, classnames: list[str], text: torch.Tensor, batch_size: int
) -> tuple[float, float]:
    """(images/s, top-1) of the plain loop."""
    index = {name: i for i, name in enumerate(classnames)}
    start = time.perf_counter()
    correct = total = 0
    with torch.no_grad():
        for file in parquet_files(truth):
            for batch in pq.ParquetFile(file).iter_batches(batch_size, columns=["image", "class_name"]):
                rows = batch.to_pylist()
                pixels = torch.stack(
                    [loaded.preprocess(Image.open(io.BytesIO(r["image"])).convert("RGB")) for r in rows]
                )
                predictions = (F.normalize(loaded.model.encode_image(pixels), dim=-1) @ text.T).argmax(1)
                labels = torch.tensor([index[r["class_name"]] for r in rows])
                correct += int((predictions == labels).sum())
                total += len(rows)
    return total / (time.perf_counter() - start), correct / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--model", choices=sorted(MODELS), default="small")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--workers",
        type=int,
        nargs="*",
        default=None,
        help="Evaluator worker counts, each a side of its own (default: the evaluator's own default only).",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for both (default: torch's).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        run(parser, args, Path(tmp))


def run(parser: argparse.ArgumentParser, args: argparse.Namespace, work: Path) -> None:
    generate(work / "pw", n=1, n_test=args.images, n_val=1, seed=0, image_size=args.image_size)
    config = work / f"bench-{args.model}.json"
    config.write_text(json.dumps(MODELS[args.model]))
    torch.manual_seed(0)
    loaded = load_open_clip(str(config), None, torch.device("cpu"))
    split = load_split(
        EvalDataset(name="novel", source={"kind": "partsworld", "path": work / "pw", "split": "test_novel"})
    )
    templates = class_text.DEFAULT_TEMPLATES
    text = class_text.class_embeddings(
        loaded, split.classnames, templates, "cpu"
    )  # once, shared with the evaluator's cache
    encoded_before = class_text.TEXT_CACHE.encoded_texts

    counts = args.workers if args.workers else [loader_workers(image_size=loaded.image_size)]
    truth = work / "pw" / "test_novel" / "truth"

    def run_reference() -> tuple[float, float]:
        return reference_loop(loaded, truth, split.classnames, text, args.batch_size)

    def run_evaluator(workers: int) -> tuple[float, float]:
        settings = PassSettings(modes=["global"], templates=templates, batch_size=args.batch_size, num_workers=workers)
        results, _ = evaluate_split(loaded, split, ["classification"], settings, torch.device("cpu"))
        return results["images_per_second"], results["classification"][0]["top1"]

    sides = {"reference": run_reference, **{f"workers={w}": (lambda w=w: run_evaluator(w)) for w in counts}}
    runs = alternate(sides, args.repeats)
    speeds = {side: [speed for speed, _ in done] for side, done in runs.items()}
    top1 = {side: done[-1][1] for side, done in runs.items()}
    assert len({round(v, 9) for v in top1.values()}) == 1, top1
    assert class_text.TEXT_CACHE.encoded_texts == encoded_before, "the evaluator re-encoded class text"

    median = {side: statistics.median(values) for side, values in speeds.items()}
    default = loader_workers(image_size=loaded.image_size)
    print(
        f"model={args.model} images={args.images} image_size={args.image_size} batch={args.batch_size} "
        f"default workers={default} torch_threads={torch.get_num_threads()} top1={top1['reference']:.4f}"
    )
    for side, values in speeds.items():
        print(f"{side:10s} images/s: {', '.join(f'{v:.1f}' for v in values)}  (median {median[side]:.1f})")
    for side in list(sides)[1:]:
        print(f"ratio evaluator {side} / reference: {median[side] / median['reference']:.2f}x")
    print(
        f"class text encoded once: {len(split.classnames) * len(templates)} prompts, "
        f"0 re-encoded in {args.repeats} evaluator runs per side"
    )
    if is_recorded_configuration(parser, args):
        record("eval_default_workers_vs_loop", median[f"workers={default}"] / median["reference"], "ratio")


if __name__ == "__main__":
    main()
