"""PartsWorld novel-concept benchmark: GRAIN vs CLIP (+ descriptors) under equal budgets, several seeds.

What it measures (docs/design.md, "PartsWorld"): novel classes re-bind the SAME colours to DIFFERENT parts, and
their names never occur in training, so they can only be recognised from their descriptors ("red crest",
"blue wings", ...). A model that only knows which colours are present is capped at 1/3 on novel classes
(each novel colour set is shared by three classes). The generator's design was fixed before any result.

For each seed: generate PartsWorld → annotate the training split with the SIMULATED describer + grounder
(they replay the generator's truth through noise; no model weights exist offline) → train the `clip`
baseline and GRAIN with the same backbone, data, steps, batch and seed (the quickstart's recipe,
grainclip.pipelines.quickstart.train_config) → evaluate both on held-out seen
images and on novel classes in every scoring mode. Then the noise sweep: GRAIN on seed 0 at other noise
levels (the CLIP baseline does not read descriptions or boxes, so the seed-0 CLIP run is its reference).

    python benchmarks/partsworld_novel.py --out runs/bench-novel            # the recorded configuration
    python benchmarks/partsworld_novel.py --out /tmp/b --seeds 0 --steps 50 --n 256   # a smoke run

Prints a markdown table (mean ± std over seeds) and writes results.json + results.md under --out. Each
(seed, noise) run keeps its result.json, so rerunning the same command after an interruption skips finished runs
(use a new --out after changing settings).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import pyarrow as pa

from grainclip import schema
from grainclip.annotate import annotate_rows, build_describer, build_grounder
from grainclip.config.annotate import DescriberConfig, GrounderConfig
from grainclip.partsworld import generate
from grainclip.pipelines.quickstart import evaluate_config, top1_table, train_config

log = logging.getLogger("partsworld_novel")

# (describer options, grounder options) per noise level. "moderate" is the quickstart's setting.
NOISE = {
    "clean": ({"drop_prob": 0.0, "substitute_prob": 0.0}, {"jitter": 0.0, "miss_prob": 0.0, "spurious_prob": 0.0}),
    "moderate": ({"drop_prob": 0.1, "substitute_prob": 0.1}, {"jitter": 0.05, "miss_prob": 0.05, "spurious_prob": 0.05}),
    "heavy": ({"drop_prob": 0.3, "substitute_prob": 0.3}, {"jitter": 0.15, "miss_prob": 0.2, "spurious_prob": 0.2}),
}


def annotate_split(root: Path, noise: str, seed: int, out: Path) -> Path:
    """Simulated annotation of root/train/images into out/ (annotations schema), in-process, no Ray."""
    describe_opts, ground_opts = NOISE[noise]
    describer = build_describer(DescriberConfig(name="partsworld", options={"truth": str(root), "seed": seed, **describe_opts}))
    grounder = build_grounder(GrounderConfig(name="partsworld", options={"truth": str(root), "seed": seed, **ground_opts}))
    out.mkdir(parents=True, exist_ok=True)
    for index, batch in enumerate(schema.iter_batches(root / "train" / "images", batch_size=512)):
        rows = annotate_rows(batch.to_pylist(), describer, grounder, run_id=f"bench-{noise}-{seed}")
        schema.write_shard(pa.Table.from_pylist(rows), out / f"part-{index:05d}.parquet", "annotations")
    return out


def run_seed(args: argparse.Namespace, seed: int, noise: str, modes: tuple[str, ...]) -> dict:
    from grainclip.evaluate import evaluate
    from grainclip.train import train

    work = args.out / f"seed{seed}-{noise}"
    done = work / "result.json"
    if done.exists():  # finished by an earlier, interrupted invocation: a long benchmark resumes per run
        return json.loads(done.read_text())
    root = work / "partsworld"
    started = time.perf_counter()
    if not (root / "manifest.json").exists():
        generate(root, n=args.n, n_test=args.n_test, seed=seed, image_size=args.image_size)
    annotations = annotate_split(root, noise, seed, work / "annotations")
    models = {}
    for mode in modes:
        config = train_config(mode, annotations, work / mode, args.steps, args.batch_size, seed, lr=args.lr)
        models[mode] = train(config).checkpoint
    results = evaluate(evaluate_config(models, root, work / "eval", grid_images=4))
    elapsed = time.perf_counter() - started
    log.info("seed %d noise %s done in %.0f s", seed, noise, elapsed)
    result = {"seed": seed, "noise": noise, "seconds": elapsed,
              "top1": {"/".join(k): v for k, v in top1_table(results).items()}}
    done.write_text(json.dumps(result, indent=1))
    return result


def mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * statistics.mean(values):.1f} ± {100 * std:.1f}"


def markdown(runs: list[dict], seeds: list[int]) -> str:
    main = [r for r in runs if r["noise"] == "moderate"]
    rows = [("clip", "global"), ("clip", "global+descriptors"), ("grain", "global"),
            ("grain", "global+descriptors"), ("grain", "grain")]
    lines = [f"Top-1 (%) mean ± std over seeds {seeds}; noise = moderate.", "",
             "| model | scoring | seen classes | novel classes |", "|---|---|---|---|"]
    for model, mode in rows:
        seen = [r["top1"][f"{model}/test_seen/{mode}"] for r in main if f"{model}/test_seen/{mode}" in r["top1"]]
        novel = [r["top1"][f"{model}/test_novel/{mode}"] for r in main if f"{model}/test_novel/{mode}" in r["top1"]]
        lines.append(f"| {model} | {mode} | {mean_std(seen)} | {mean_std(novel)} |")
    sweep = sorted((r for r in runs if r["seed"] == seeds[0]), key=lambda r: list(NOISE).index(r["noise"]))
    clip_ref = next((r["top1"].get("clip/test_novel/global+descriptors") for r in main if r["seed"] == seeds[0]), None)
    lines += ["", f"Noise sweep (seed {seeds[0]}): novel-class top-1 (%); CLIP+descriptors reference "
              f"{'n/a' if clip_ref is None else f'{100 * clip_ref:.1f}'} (it reads no descriptions or boxes).", "",
              "| noise | GRAIN global+descriptors | GRAIN grain | grain − CLIP+descriptors |", "|---|---|---|---|"]
    for r in sweep:
        gd, gg = r["top1"].get("grain/test_novel/global+descriptors"), r["top1"].get("grain/test_novel/grain")
        gap = "n/a" if gg is None or clip_ref is None else f"{100 * (gg - clip_ref):+.1f}"
        lines.append(f"| {r['noise']} | {'n/a' if gd is None else f'{100 * gd:.1f}'} | "
                     f"{'n/a' if gg is None else f'{100 * gg:.1f}'} | {gap} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-novel"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=2048, help="training images per seed")
    parser.add_argument("--n-test", type=int, default=360, help="images per test split")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300,
                        help="per model; 3 seeds x 3 noise levels x 2 models fit in about an hour on 2 cores")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--sweep", nargs="*", default=["clean", "heavy"], choices=list(NOISE),
                        help="extra noise levels for GRAIN on the first seed")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)

    runs = [run_seed(args, seed, "moderate", ("clip", "grain")) for seed in args.seeds]
    runs += [run_seed(args, args.seeds[0], noise, ("grain",)) for noise in args.sweep if noise != "moderate"]
    table = markdown(runs, args.seeds)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "runs": runs}, indent=1))
    (args.out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
