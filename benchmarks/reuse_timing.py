"""Stage reuse vs a full rerun: what swapping only the grounder saves when the descriptions are reused.

    python benchmarks/reuse_timing.py --images 5000 [--describer vllm|partsworld] [--grounder owlv2|partsworld]

Generates N PartsWorld images, then on one embedded local Ray (started once, so neither run pays for it):
1. the full run: describer + grounder over every image (what a grounder swap cost before stage reuse);
2. the reuse run: source `annotations_run` of run 1, the same grounder, no describer built.
Both are timed around `run_pipeline`; the manifests give each stage's busy seconds. `--describer vllm` uses the
tiny random chat LLM (the offline stand-in for the expensive stage; on CPU), `partsworld` the simulated one.
Prints one JSON record and, with --record, stores the ratio in benchmarks/figures.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from figures import record  # noqa: E402
from scale_pipeline import print_record  # noqa: E402


def describer(kind: str, models: dict[str, Path] | None) -> dict:
    if kind == "partsworld":
        return {"name": "partsworld"}
    return {
        "name": "vllm",
        "model": str(models["llm"]),
        "max_descriptions": 3,
        "max_description_chars": 20,
        "max_caption_chars": 40,  # schema-bounded: the random model's answers finish inside max_tokens
        "sampling": {"max_tokens": 160},
        "engine": {"dtype": "float32", "enforce_eager": True, "max_model_len": 1024},
    }


def grounder(kind: str, models: dict[str, Path] | None) -> dict:
    if kind == "partsworld":
        return {"name": "partsworld"}
    return {"name": "owlv2", "model": str(models["owlv2"]), "box_threshold": 0.0, "device": "cpu", "batch_size": 16}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--describer", choices=("vllm", "partsworld"), default="vllm")
    parser.add_argument("--grounder", choices=("owlv2", "partsworld"), default="owlv2")
    parser.add_argument("--rows-per-shard", type=int, default=500)
    parser.add_argument(
        "--work", type=Path, default=None, help="Folder for the data and both runs (default: a temp dir)."
    )
    parser.add_argument("--record", action="store_true", help="Store the figures in benchmarks/figures.json.")
    args = parser.parse_args()

    import ray

    from grainclip.config.base import parse_config
    from grainclip.config.pipeline import PipelineConfig
    from grainclip.partsworld import generate
    from grainclip.pipelines import run_pipeline
    from grainclip.testing import build_tiny_models, default_cache_dir

    work = args.work or Path(tempfile.mkdtemp(prefix="reuse-timing-"))
    data = work / "partsworld"
    if not (data / "manifest.json").exists():
        generate(data, n=args.images, n_test=8, seed=0, image_size=args.image_size)
    needs_models = args.describer == "vllm" or args.grounder == "owlv2"
    models = build_tiny_models(default_cache_dir() / "tiny-models") if needs_models else None
    ground = {"grounder": grounder(args.grounder, models), "num_cpus": 0.5, "batch_size": 64}
    sink = {"rows_per_shard": args.rows_per_shard}
    full = parse_config({
        "output": str(work / "full"),
        "source": {"kind": "partsworld", "path": str(data)},
        "describe": {"describer": describer(args.describer, models), "num_cpus": 0.5, "batch_size": 256},
        "ground": ground,
        "sink": sink,
    }, PipelineConfig)  # fmt: skip
    reuse = parse_config({
        "output": str(work / "reuse"),
        "source": {"kind": "annotations_run", "path": str(work / "full")},
        "ground": ground,
        "sink": sink,
    }, PipelineConfig)  # fmt: skip

    load_before = os.getloadavg()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        seconds, manifests = {}, {}
        for name, config in (("full", full), ("reuse", reuse)):
            started = time.perf_counter()
            result = run_pipeline(config, force_new_run=True)
            seconds[name], manifests[name] = time.perf_counter() - started, result.manifest
    finally:
        ray.shutdown()

    def stage(name: str, which: str) -> float | None:
        return getattr(manifests[name].throughput, which).busy_actor_seconds

    ratio = seconds["reuse"] / seconds["full"]
    print_record(
        load_before,
        images=args.images,
        describer=args.describer,
        grounder=args.grounder,
        rows={name: m.rows for name, m in manifests.items()},
        counts={name: m.counts for name, m in manifests.items()},
        full_rerun_wall_s=round(seconds["full"], 1),
        reuse_wall_s=round(seconds["reuse"], 1),
        reuse_vs_full_wall=round(ratio, 3),
        describe_busy_s={name: stage(name, "describe") for name in manifests},
        ground_busy_s={name: stage(name, "ground") for name in manifests},
    )
    if args.record:
        record("reuse_vs_full_rerun_wall", ratio, "ratio")
        record("reuse_run_describe_busy_s", stage("reuse", "describe"), "s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
