"""GRAIN recipe ablation on PartsWorld's VALIDATION splits: one training per variant, same data and budget.

Each variant is the quickstart's small-model recipe (grainclip.pipelines.quickstart.train_config) with some
config keys overridden; it is trained once and evaluated on val_seen / val_novel (never on the test splits,
which are kept for reporting). The data (PartsWorld at one seed, annotated by the simulated describer and
grounder at the benchmark's moderate noise) is made once and shared by every variant.

    python benchmarks/grain_ablation.py --out runs/ablation --runs clip base roi      # named VARIANTS
    python benchmarks/grain_ablation.py --out runs/ablation --name lr2e3 --set optim.lr=2e-3

Every run keeps out/<name>/result.json, so rerunning skips finished runs (use a new --out after changing
--n, --steps or --seed). After each run the table of all finished runs is rewritten as out/results.md and
out/results.json: val top-1 per scoring mode, the best alpha of the sweep, grounding recall@IoU 0.5 on
val_seen, the caption loss along training, and wall-clock seconds of the training.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from partsworld_novel import annotate_split  # noqa: E402

from grainclip.config.base import parse_config  # noqa: E402
from grainclip.config.train import TrainConfig  # noqa: E402
from grainclip.partsworld import generate  # noqa: E402
from grainclip.pipelines.quickstart import GRAIN_ALPHA, VAL_SPLITS, evaluate_config, train_config  # noqa: E402

log = logging.getLogger("grain_ablation")

# Named variants: config overrides (dotted keys) on top of the quickstart recipe. "mode" picks grain or clip.
# Each one switches ONE recipe option against the shipped defaults, so the table reads as on/off per lever.
VARIANTS: dict[str, dict[str, Any]] = {
    "clip": {"mode": "clip"},
    "recipe": {},
    "paper": {
        "decoder.global_embedding": "query",
        "decoder.region_embedding": "query",
        "decoder.region_temperature": "shared",
    },
    "global_query": {"decoder.global_embedding": "query"},
    "region_query": {"decoder.region_embedding": "query"},
    "roi_plus_query": {"decoder.region_embedding": "roi+query"},
    "roi_predicted_boxes": {"decoder.roi_train_boxes": "predicted"},
    "shared_temperature": {"decoder.region_temperature": "shared"},
    "objectness": {"decoder.objectness": True},
    "detr_box_weights": {"loss.box_l1_weight": 5.0, "loss.box_giou_weight": 2.0},
}


def deep_set(config: dict[str, Any], key: str, value: Any) -> None:
    node = config
    *parents, leaf = key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def make_data(args: argparse.Namespace) -> tuple[Path, Path]:
    root, annotations = args.out / "data" / "partsworld", args.out / "data" / "annotations"
    if not (root / "manifest.json").exists():
        generate(root, n=args.n, n_test=1, n_val=args.n_val, seed=args.seed, image_size=64)
    if not annotations.exists():
        annotate_split(root, "moderate", args.seed, annotations)
    return root, annotations


def run_variant(args: argparse.Namespace, name: str, overrides: dict[str, Any], root: Path, annotations: Path) -> dict:
    from grainclip.evaluate import evaluate
    from grainclip.train import train

    work = args.out / name
    done = work / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    mode = overrides.get("mode", "grain")
    steps = int(overrides.get("steps", args.steps))
    base = train_config(mode, annotations, work / "train", steps, args.batch_size, args.seed)
    config = base.model_dump(mode="json")
    for key, value in overrides.items():
        deep_set(config, key, value)
    config = parse_config(config, TrainConfig)
    started = time.perf_counter()
    trained = train(config)
    train_seconds = time.perf_counter() - started
    results = evaluate(
        evaluate_config({mode: trained.model_dir}, root, work / "eval", grid_images=4, splits=VAL_SPLITS)
    )
    curve = [json.loads(line) for line in (work / "train" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result: dict[str, Any] = {
        "name": name,
        "mode": mode,
        "overrides": overrides,
        "steps": steps,
        "train_seconds": round(train_seconds, 1),
        "caption_loss": {r["step"]: round(r["loss/caption"], 3) for r in curve},
        "final_losses": {k: round(v, 4) for k, v in curve[-1].items() if k.startswith("loss/")},
    }
    for run in results["runs"]:
        for row in run.get("classification", []):
            result[f"{run['dataset']}/{row['mode']}"] = row["top1"]
        if run.get("alpha_sweep"):
            result[f"{run['dataset']}/alpha_sweep"] = {str(item["alpha"]): item["top1"] for item in run["alpha_sweep"]}
        if "grounding" in run:
            result[f"{run['dataset']}/grounding"] = run["grounding"]["recall@iou0.5"]
    done.write_text(json.dumps(result, indent=1))
    log.info("%s: %s", name, json.dumps({k: v for k, v in result.items() if "/" in k}))
    return result


def pct(value: Any) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def sweep_mean(result: dict, alpha: str) -> float | None:
    """Mean of val_seen and val_novel grain top-1 at one alpha: the criterion that chose GRAIN_ALPHA."""
    values = [result.get(f"{split}/alpha_sweep", {}).get(alpha) for split in VAL_SPLITS]
    return None if None in values else sum(values) / len(values)


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    lines = [
        f"PartsWorld {args.n} training images (seed {args.seed}, moderate noise), {args.n_val} images per "
        f"validation split, batch {args.batch_size}; top-1 (%) on val_seen / val_novel; grain scoring at "
        f"alpha {GRAIN_ALPHA:g}; best alpha = the sweep's best mean of seen and novel grain top-1.",
        "",
        "| run | overrides | steps | train s | caption loss (end) | seen global | seen +desc | seen grain | "
        "novel global | novel +desc | novel grain | novel region only | best alpha (mean) | "
        "grounding R@0.5 (seen) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        losses = r["caption_loss"]
        last = losses[max(losses, key=int)] if losses else None
        cells = []
        for split in VAL_SPLITS:
            sweep = r.get(f"{split}/alpha_sweep", {})
            cells += [
                pct(r.get(f"{split}/global")),
                pct(r.get(f"{split}/global+descriptors")),
                pct(sweep.get(str(GRAIN_ALPHA))),
            ]
        cells.append(pct(r.get("val_novel/alpha_sweep", {}).get("0.0")))
        alphas = r.get("val_seen/alpha_sweep", {})
        best = max(alphas, key=lambda a: sweep_mean(r, a)) if alphas else None
        cells.append("n/a" if best is None else f"{float(best):g} ({pct(sweep_mean(r, best))})")
        cells.append(pct(r.get("val_seen/grounding")))
        lines.append(
            f"| {r['name']} | `{json.dumps(r['overrides'])}` | {r['steps']} | {r['train_seconds']:.0f} | {last} | "
            + " | ".join(cells)
            + " |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--runs", nargs="*", default=[], choices=list(VARIANTS), help="named variants to run")
    parser.add_argument("--name", help="name of an ad-hoc run built from --set overrides")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="dotted config overrides (JSON values)"
    )
    parser.add_argument("--n", type=int, default=1024, help="training images")
    parser.add_argument("--n-val", type=int, default=180, help="images per validation split")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)
    root, annotations = make_data(args)

    todo = [(name, VARIANTS[name]) for name in args.runs]
    if args.name:
        todo.append((args.name, {key: parse_value(value) for key, value in (item.split("=", 1) for item in args.set)}))
    for name, overrides in todo:
        run_variant(args, name, overrides, root, annotations)
    results = [json.loads(path.read_text()) for path in args.out.glob("*/result.json")]
    results.sort(key=lambda r: (r["name"] != "clip", r["name"] != "recipe", r["name"] != "paper", r["name"]))
    table = markdown(results, args)
    (args.out / "results.json").write_text(
        json.dumps({"settings": {k: str(v) for k, v in vars(args).items()}, "runs": results}, indent=1)
    )
    (args.out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
