"""Benchmark: the ground stage, with and without its CPU work overlapping the detector, vs the bare forward loop.

One process, the tiny offline detectors (`grounding-dino` and `owlv2`, random weights, processors resizing to 64 px)
on the CPU, PartsWorld images (`--image-size` px PNG) each with the same five descriptions. Sides, run in rotating
order on the same Arrow batches of `--batch` rows, grounder batch `--grounder-batch`:
- `forward` (the reference): every image decoded, fitted (`max_image_side`) and prepared (`_prepare`: processor
  call and tokenising) up front, untimed; timed is only `_run` per grounder batch: `model(**inputs)`, the copy of
  its outputs to numpy and the grounder's post-processing (token-to-description assignment, threshold, NMS, top-k,
  frame conversion);
- `serial`: `GroundStage` called as a Ray actor calls it (one Arrow batch per call, output columns built), with
  `prefetch_batches: 0`: decode, resize, processor, forward, post-processing one after the other;
- `overlap`: the same stage with `prefetch_batches: 1` (the default): the next grounder batch is resized and
  prepared on the prefetch thread while the model runs the current one.
Both stages must write the same rows (checked). `--threads` sets torch's intra-op threads (default 1: Ray gives an
actor with `num_cpus: 1` OMP_NUM_THREADS=1); the prefetch thread is extra. Ratios are the stage's images/s over the
reference's, of the medians over `--repeats` passes.

    python benchmarks/ground_stage.py [--images 256] [--image-size 256] [--batch 32] [--grounder-batch 8]
                                      [--repeats 3] [--threads 1] [--detectors grounding-dino owlv2]

A run with the defaults records `ground_stage_vs_forward` (the overlapping stage, the worse of the two detectors)
and `ground_stage_serial_vs_forward` (the serial stage, likewise).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))
from figures import alternate, is_recorded_configuration, record  # noqa: E402

DESCRIPTIONS = ["red crest", "blue striped wings", "long tail", "round black wheel", "pointed ears"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=256, help="PartsWorld image side in pixels.")
    parser.add_argument("--batch", type=int, default=32, help="Rows per stage call (the pipeline's default).")
    parser.add_argument("--grounder-batch", type=int, default=8, help="Images per forward (the grounder default).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads.")
    parser.add_argument("--detectors", nargs="+", default=["grounding-dino", "owlv2"])
    args = parser.parse_args()

    import pyarrow as pa
    import torch

    from grainclip.images import decode_image
    from grainclip.partsworld import generate
    from grainclip.schema import Status, read_table
    from grainclip.testing import build_tiny_models, default_cache_dir

    torch.set_num_threads(args.threads)
    models = build_tiny_models(default_cache_dir() / "tiny-models", names=args.detectors)
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), n=args.images, seed=0, n_test=1, image_size=args.image_size)
        images = read_table(Path(tmp) / "train" / "images", "images", columns=["image_id", "image", "image_uri"])
    n = images.num_rows
    images = images.append_column("descriptions", pa.array([DESCRIPTIONS] * n, pa.list_(pa.string())))
    images = images.append_column("status", pa.array([Status.OK.value] * n, pa.string()))
    images = images.append_column("error", pa.array([None] * n, pa.string()))
    started = time.perf_counter()
    decoded = [decode_image(image) for image in images.column("image").to_pylist()]
    decoding = time.perf_counter() - started

    print(
        f"images: {n} ({args.image_size} px PNG, {len(DESCRIPTIONS)} descriptions each), stage batch {args.batch}, "
        f"grounder batch {args.grounder_batch}, torch threads {torch.get_num_threads()}, repeats {args.repeats}, "
        f"load average {os.getloadavg()[0]:.1f}; decode {1000 * decoding / n:.2f} ms/image"
    )
    ratios = {name: measure(name, models[name], images, decoded, args) for name in args.detectors}
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    if is_recorded_configuration(parser, args):
        record("ground_stage_vs_forward", min(r["overlap"] for r in ratios.values()), "ratio")
        record("ground_stage_serial_vs_forward", min(r["serial"] for r in ratios.values()), "ratio")


def measure(name: str, model: Path, images, decoded: list, args: argparse.Namespace) -> dict[str, float]:
    """Time the three sides on one detector; print them; return the stages' images/s over the reference's."""
    import pyarrow as pa

    from grainclip.annotate.registry import build_grounder
    from grainclip.annotate.types import GroundRequest
    from grainclip.config.annotate import GrounderConfig
    from grainclip.pipelines.stages import GROUND_SECONDS, GroundStage

    n = images.num_rows
    batches = [images.slice(start, args.batch) for start in range(0, n, args.batch)]
    grounders = {
        ahead: build_grounder(
            GrounderConfig(name=name, model=str(model), batch_size=args.grounder_batch, prefetch_batches=ahead)
        )
        for ahead in (0, 1)
    }
    reference = grounders[0]
    started = time.perf_counter()
    requests = [
        reference._fit(GroundRequest(image_id, image, DESCRIPTIONS))
        for image_id, image in zip(images.column("image_id").to_pylist(), decoded, strict=True)
    ]
    work = [requests[start : start + args.grounder_batch] for start in range(0, n, args.grounder_batch)]
    prepared = [reference._prepare(batch) for batch in work]
    preparing = time.perf_counter() - started

    def run_forward() -> tuple[float, object]:
        started = time.perf_counter()
        results = [r for batch, inputs in zip(work, prepared, strict=True) for r in reference._run(batch, inputs)]
        return time.perf_counter() - started, results

    def run_stage(ahead: int) -> tuple[float, object]:
        stage = GroundStage(grounders[ahead].config, annotator=grounders[ahead])
        started = time.perf_counter()
        outputs = [stage(batch) for batch in batches]
        return time.perf_counter() - started, pa.concat_tables(outputs).drop_columns([GROUND_SECONDS])

    sides = {"forward": run_forward, "serial": lambda: run_stage(0), "overlap": lambda: run_stage(1)}
    for side in sides.values():  # warm-up: first-call allocations are start-up, not throughput
        side()
    runs = alternate(sides, args.repeats)
    seconds = {side: [elapsed for elapsed, _ in done] for side, done in runs.items()}
    last = {side: done[-1][1] for side, done in runs.items()}
    for grounder in grounders.values():
        grounder.close()
    assert last["overlap"].equals(last["serial"]), f"{name}: the overlapping stage wrote different rows"
    statuses = last["serial"].column("status").to_pylist()
    median = {side: statistics.median(times) for side, times in seconds.items()}
    ratios = {side: median["forward"] / median[side] for side in ("serial", "overlap")}
    print(
        f"{name}: resize + prepare {1000 * preparing / n:.2f} ms/image (once, untimed), "
        f"statuses {', '.join(f'{s} {statuses.count(s)}' for s in sorted(set(statuses)))}"
    )
    for side, times in seconds.items():
        print(
            f"  {side:8s}: median {median[side]:6.2f} s = {n / median[side]:7.1f} images/s  "
            f"(runs: {', '.join(f'{t:.2f}' for t in times)})"
        )
    print(
        f"  ratio to forward: serial {ratios['serial']:.3f}, overlap {ratios['overlap']:.3f}; "
        f"overlap / serial {median['serial'] / median['overlap']:.3f}"
    )
    return ratios


if __name__ == "__main__":
    main()
