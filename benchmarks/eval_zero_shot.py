"""Zero-shot evaluation throughput: the evaluator vs a straightforward loop, same model, data and text.

Both compute CLIP zero-shot top-1 (`global` mode) on a PartsWorld test split stored as Parquet:

* reference: the plain loop a user would write: read the Parquet rows, decode and preprocess each image in
  the main process, encode a batch, normalise, argmax against class embeddings encoded once up front;
* evaluator: `grainclip.evaluate.evaluate_split` (DataLoader workers decode and preprocess while the main
  process encodes; class text from the cache, encoded once).

Runs alternate (reference, evaluator, reference, ...) so machine load hits both alike; the ratio uses the
median of each. Images/s counts images from the first batch to the last prediction, text encoding and
model loading excluded for both. Top-1 of the two must agree (checked). Both use the same torch intra-op
thread count (`--threads`); on a small, busy machine that count matters more than anything else here.

    python benchmarks/eval_zero_shot.py [--images 512] [--image-size 128] [--model small] [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
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
    parser.add_argument("--workers", type=int, default=None, help="Evaluator workers (default: the evaluator's own).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads for both (default: torch's).")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="eval-bench-") as tmp:
        run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
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
    settings = PassSettings(modes=["global"], templates=templates, batch_size=args.batch_size, num_workers=args.workers)

    reference, evaluator = [], []
    for _ in range(args.repeats):
        speed, reference_top1 = reference_loop(
            loaded, work / "pw" / "test_novel" / "truth", split.classnames, text, args.batch_size
        )
        reference.append(speed)
        results, _ = evaluate_split(loaded, split, ["classification"], settings, torch.device("cpu"))
        evaluator.append(results["images_per_second"])
        evaluator_top1 = results["classification"][0]["top1"]
        assert abs(evaluator_top1 - reference_top1) < 1e-9, (evaluator_top1, reference_top1)
    assert class_text.TEXT_CACHE.encoded_texts == encoded_before, "the evaluator re-encoded class text"

    ratio = statistics.median(evaluator) / statistics.median(reference)
    workers = loader_workers() if args.workers is None else args.workers
    print(
        f"model={args.model} images={args.images} image_size={args.image_size} batch={args.batch_size} "
        f"workers={workers} torch_threads={torch.get_num_threads()} top1={evaluator_top1:.4f}"
    )
    print(
        "reference images/s: "
        + ", ".join(f"{v:.1f}" for v in reference)
        + f"  (median {statistics.median(reference):.1f})"
    )
    print(
        "evaluator images/s: "
        + ", ".join(f"{v:.1f}" for v in evaluator)
        + f"  (median {statistics.median(evaluator):.1f})"
    )
    print(f"ratio evaluator / reference: {ratio:.2f}x")
    print(
        f"class text encoded once: {len(split.classnames) * len(templates)} prompts, 0 re-encoded in {args.repeats} evaluator runs"
    )


if __name__ == "__main__":
    main()
