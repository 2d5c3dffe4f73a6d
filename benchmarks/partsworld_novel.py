"""PartsWorld novel-concept benchmark: GRAIN vs CLIP (+ descriptors), equal budgets, several seeds and noise levels.

What it measures (docs/design.md, "PartsWorld"): novel classes re-bind the SAME colours to DIFFERENT parts, and
their names never occur in training, so they can only be recognised from their descriptors ("red crest",
"blue wings", ...). A model that only knows which colours are present is capped at 1/3 on novel classes
(each novel colour set is shared by three classes). The generator's design was fixed before any result.

For each (seed, noise level): generate PartsWorld → annotate the training split with the SIMULATED describer +
grounder at that noise level (they replay the generator's truth through noise; no model weights exist
offline) → train the `clip` baseline and GRAIN with the same backbone, data, steps, batch and seed (the
quickstart's recipe, grainclip.pipelines.quickstart.train_config) → evaluate both once on the held-out TEST
splits (seen and novel classes, every scoring mode, grounding of GRAIN's boxes). The test splits are the
reported result and are never used to choose anything; tune on the val splits instead. "moderate" noise is the
quickstart's setting and the headline; the sweep repeats every seed at the other levels, CLIP retrained too.

    python benchmarks/partsworld_novel.py --out runs/bench-novel            # the recorded configuration
    python benchmarks/partsworld_novel.py --out /tmp/b --seeds 0 --sweep --steps 50 --n 256   # a smoke run

Each noise level's annotation quality is scored against the generator's truth (`grainclip pipeline compare`'s
truth scoring: description precision/recall, box recall at IoU 0.5, images with every part found) and shown
beside the accuracy, with a plot of quality against GRAIN's advantage (quality_vs_advantage.png). Runs finished
before the quality existed get it from their annotations/ folder when the results are read:

    python benchmarks/partsworld_novel.py --out runs/bench-novel --report-only   # tables from finished runs only

Prints markdown tables (mean ± std over seeds, one per noise level, and the sweep) and writes results.json +
results.md under --out; in the recorded configuration (every option at its default but --out) it also records
its headline figures in benchmarks/figures.json. Each (seed, noise) run keeps its result.json, so rerunning the
same command after an interruption skips finished runs (use a new --out after changing settings).
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import pyarrow as pa

from grainclip import schema
from grainclip.annotate import annotate_rows, build_describer, build_grounder
from grainclip.config.annotate import DescriberConfig, GrounderConfig
from grainclip.partsworld import PartsWorldPaths, generate
from grainclip.pipelines.compare import score_annotations
from grainclip.pipelines.quickstart import evaluate_config, grounding_table, top1_table, train_config

sys.path.insert(0, str(Path(__file__).parent))
from figures import is_recorded_configuration, record  # noqa: E402

log = logging.getLogger("partsworld_novel")

# (describer options, grounder options) per noise level. "moderate" is the quickstart's setting.
NOISE = {
    "clean": ({"drop_prob": 0.0, "substitute_prob": 0.0}, {"jitter": 0.0, "miss_prob": 0.0, "spurious_prob": 0.0}),
    "moderate": (
        {"drop_prob": 0.1, "substitute_prob": 0.1},
        {"jitter": 0.05, "miss_prob": 0.05, "spurious_prob": 0.05},
    ),
    "heavy": ({"drop_prob": 0.3, "substitute_prob": 0.3}, {"jitter": 0.15, "miss_prob": 0.2, "spurious_prob": 0.2}),
}

MODES = ("clip", "grain")  # both trained at every (seed, noise): equal budgets
ROWS = [
    ("clip", "global"),
    ("clip", "global+descriptors"),
    ("grain", "global"),
    ("grain", "global+descriptors"),
    ("grain", "grain"),
]
HEADLINE_NOISE = "moderate"
# Novel-class top-1 keys the headline compares.
CLIP_D, GRAIN_D = "clip/test_novel/global+descriptors", "grain/test_novel/global+descriptors"
GRAIN_G = "grain/test_novel/grain"
NOVEL_MEAN_TARGET, NOVEL_SEED_TARGET = 0.60, 0.40  # GRAIN grain: mean over seeds, and every seed above
# Annotation quality against the truth (pipelines.compare.score_against_truth), shown beside the accuracy.
QUALITY = (
    ("description_recall", "description recall"),
    ("description_precision", "description precision"),
    ("box_recall_at_0.5", "box recall@IoU0.5"),
    ("all_parts_found", "images with every part found"),
)


def annotate_split(root: Path, noise: str, seed: int, out: Path) -> Path:
    """Simulated annotation of root/train/images into out/ (annotations schema), in-process, no Ray."""
    describe_opts, ground_opts = NOISE[noise]
    describer = build_describer(
        DescriberConfig(name="partsworld", options={"truth": str(root), "seed": seed, **describe_opts})
    )
    grounder = build_grounder(
        GrounderConfig(name="partsworld", options={"truth": str(root), "seed": seed, **ground_opts})
    )
    out.mkdir(parents=True, exist_ok=True)
    for index, batch in enumerate(schema.iter_batches(root / "train" / "images", batch_size=512)):
        rows = annotate_rows(batch.to_pylist(), describer, grounder, run_id=f"bench-{noise}-{seed}")
        schema.write_shard(pa.Table.from_pylist(rows), out / f"part-{index:05d}.parquet", "annotations")
    return out


def run_seed(args: argparse.Namespace, seed: int, noise: str) -> dict:
    """Both models trained and evaluated on one seed's data annotated at one noise level (resumes per run)."""
    from grainclip.evaluate import evaluate
    from grainclip.train import train

    work = args.out / f"seed{seed}-{noise}"
    done = work / "result.json"
    if done.exists():  # finished by an earlier, interrupted invocation: a long benchmark resumes per run
        return with_quality(json.loads(done.read_text()), work)
    root = work / "partsworld"
    started = time.perf_counter()
    if not (root / "manifest.json").exists():
        generate(root, n=args.n, n_test=args.n_test, seed=seed, image_size=args.image_size)
    annotations = annotate_split(root, noise, seed, work / "annotations")
    models = {}
    for mode in MODES:
        config = train_config(mode, annotations, work / mode, args.steps, args.batch_size, seed, lr=args.lr)
        models[mode] = train(config).model_dir
    results = evaluate(evaluate_config(models, root, work / "eval", grid_images=4))
    elapsed = time.perf_counter() - started
    log.info("seed %d noise %s done in %.0f s", seed, noise, elapsed)
    result = {
        "seed": seed,
        "noise": noise,
        "seconds": elapsed,
        "top1": {"/".join(k): v for k, v in top1_table(results).items()},
        "grounding": {"/".join(k): v for k, v in grounding_table(results).items()},
    }
    done.write_text(json.dumps(result, indent=1))
    return with_quality(result, work)


def with_quality(result: dict, work: Path) -> dict:
    """`result` with the quality of its annotations against the truth, scored (and stored) once if missing."""
    if "quality" in result:
        return result
    annotations, root = work / "annotations", work / "partsworld"
    if not annotations.is_dir() or not (root / "manifest.json").exists():
        log.warning("%s: no annotations/ and partsworld/ to score; its quality is left out", work)
        return result
    result["quality"] = score_annotations(annotations, PartsWorldPaths.at(root).truth("train"))
    (work / "result.json").write_text(json.dumps(result, indent=1))
    return result


def finished_runs(args: argparse.Namespace, noise_levels: list[str]) -> list[dict]:
    """--report-only: the result.json of every (seed, noise) already run, nothing trained."""
    runs = []
    for noise in noise_levels:
        for seed in args.seeds:
            work = args.out / f"seed{seed}-{noise}"
            if (work / "result.json").exists():
                runs.append(with_quality(json.loads((work / "result.json").read_text()), work))
            else:
                log.warning("seed %d noise %s has not finished (no %s): left out", seed, noise, work / "result.json")
    return runs


def values(runs: list[dict], key: str, table: str = "top1") -> list[float]:
    """`key` ('model/split/mode' for top1, 'model/split' for grounding, a QUALITY key) of every run that has it."""
    return [r[table][key] for r in runs if r.get(table, {}).get(key) is not None]


def mean_std(values: list[float], scale: float = 100, digits: int = 1) -> str:
    if not values:
        return "n/a"
    if len(values) == 1:  # one seed has no spread to show
        return f"{scale * values[0]:.{digits}f}"
    return f"{scale * statistics.mean(values):.{digits}f} ± {scale * statistics.stdev(values):.{digits}f}"


def gaps(runs: list[dict], a: str, b: str) -> list[float]:
    """Per run, top1[a] - top1[b] (runs with both)."""
    return [r["top1"][a] - r["top1"][b] for r in runs if a in r["top1"] and b in r["top1"]]


def levels(runs: list[dict]) -> list[str]:
    """The noise levels present, in NOISE's order (clean → heavy)."""
    return [noise for noise in NOISE if any(r["noise"] == noise for r in runs)]


def accuracy_table(runs: list[dict], noise: str) -> list[str]:
    at = [r for r in runs if r["noise"] == noise]
    seeds = sorted(r["seed"] for r in at)
    lines = [
        f"Noise = {noise}: top-1 (%), mean ± std over seeds {seeds}.",
        "",
        "| model | scoring | seen classes | novel classes |",
        "|---|---|---|---|",
    ]
    for model, mode in ROWS:
        seen, novel = values(at, f"{model}/test_seen/{mode}"), values(at, f"{model}/test_novel/{mode}")
        lines.append(f"| {model} | {mode} | {mean_std(seen)} | {mean_std(novel)} |")
    recall = values(at, "grain/test_seen", "grounding")
    lines += ["", f"GRAIN grounding recall@IoU0.5 on test_seen: {mean_std(recall, scale=1, digits=2)}."]
    quality = ", ".join(f"{label} {mean_std(values(at, key, 'quality'), scale=1, digits=3)}" for key, label in QUALITY)
    lines.append(f"Annotation quality against the truth (training split): {quality}.")
    per_seed = [
        f"seed {r['seed']}: {100 * r['top1'][CLIP_D]:.1f} vs {100 * r['top1'][GRAIN_G]:.1f}"
        for r in sorted(at, key=lambda r: r["seed"])
        if CLIP_D in r["top1"] and GRAIN_G in r["top1"]
    ]
    if per_seed:
        lines.append(f"Novel classes per seed, CLIP global+descriptors vs GRAIN grain: {'; '.join(per_seed)}.")
    return lines


def sweep_table(runs: list[dict]) -> list[str]:
    lines = [
        "Noise sweep: novel-class top-1 (%), mean ± std over seeds; both models trained at every level.",
        "",
        "| noise | seeds | CLIP global+descriptors | GRAIN global+descriptors | GRAIN grain | "
        "GRAIN grain − CLIP global+descriptors | GRAIN grounding recall@IoU0.5 (test_seen) | "
        + " | ".join(f"annotation {label}" for _, label in QUALITY)
        + " |",
        "|---|---|---|---|---|---|---|" + "---|" * len(QUALITY),
    ]
    for noise in levels(runs):
        at = [r for r in runs if r["noise"] == noise]
        quality = " | ".join(mean_std(values(at, key, "quality"), scale=1, digits=3) for key, _ in QUALITY)
        lines.append(
            f"| {noise} | {len(at)} | {mean_std(values(at, CLIP_D))} | {mean_std(values(at, GRAIN_D))} | "
            f"{mean_std(values(at, GRAIN_G))} | {mean_std(gaps(at, GRAIN_G, CLIP_D))} | "
            f"{mean_std(values(at, 'grain/test_seen', 'grounding'), scale=1, digits=2)} | {quality} |"
        )
    return lines


def plot_quality_vs_advantage(runs: list[dict], path: Path) -> Path | None:
    """One point per run: annotation quality (x) against GRAIN grain − CLIP global+descriptors on novel classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [r for r in runs if r.get("quality") and GRAIN_G in r["top1"] and CLIP_D in r["top1"]]
    if not scored:
        return None
    shown = QUALITY[0], QUALITY[2]  # description recall, box recall
    fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.8), sharey=True)
    for ax, (key, label) in zip(axes, shown):
        for noise in levels(scored):
            at = [r for r in scored if r["noise"] == noise and r["quality"].get(key) is not None]
            ax.scatter(
                [r["quality"][key] for r in at],
                [100 * (r["top1"][GRAIN_G] - r["top1"][CLIP_D]) for r in at],
                label=noise,
            )
        ax.set_xlabel(f"annotation {label} (training split vs truth)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("novel top-1: GRAIN grain − CLIP+descriptors (points)")
    axes[0].legend(title="noise")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def headline_figures(runs: list[dict]) -> dict[str, float]:
    """figures.json names -> fractions, over the seeds at the headline noise level (those with every value)."""
    at = [r for r in runs if r["noise"] == HEADLINE_NOISE]
    grain, clip, grain_d = values(at, GRAIN_G), values(at, CLIP_D), values(at, GRAIN_D)
    if not (grain and clip and grain_d):
        return {}
    return {
        "novel_grain_top1_mean": statistics.mean(grain),
        "novel_grain_top1_min_seed": min(grain),
        "novel_clip_descriptors_top1_mean": statistics.mean(clip),
        "novel_grain_global_descriptors_top1_mean": statistics.mean(grain_d),
    }


def targets_table(figures: dict[str, float]) -> list[str]:
    """Which of the benchmark's targets hold at the headline noise level."""
    if not figures:
        return [f"Targets: not checked (no complete run at noise = {HEADLINE_NOISE})."]
    checks = [
        (
            f"GRAIN grain novel top-1 mean >= {100 * NOVEL_MEAN_TARGET:g}%",
            figures["novel_grain_top1_mean"],
            figures["novel_grain_top1_mean"] >= NOVEL_MEAN_TARGET,
        ),
        (
            f"every seed's GRAIN grain novel top-1 > {100 * NOVEL_SEED_TARGET:g}%",
            figures["novel_grain_top1_min_seed"],
            figures["novel_grain_top1_min_seed"] > NOVEL_SEED_TARGET,
        ),
        (
            "GRAIN global+descriptors >= CLIP global+descriptors on novel classes (means)",
            figures["novel_grain_global_descriptors_top1_mean"],
            figures["novel_grain_global_descriptors_top1_mean"] >= figures["novel_clip_descriptors_top1_mean"],
        ),
    ]
    lines = [
        f"Targets at noise = {HEADLINE_NOISE}: {sum(holds for *_, holds in checks)} of {len(checks)} hold.",
        "",
        "| target | measured (%) | holds |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {100 * value:.1f} | {'yes' if holds else '**no**'} |" for name, value, holds in checks]
    return lines


def markdown(runs: list[dict]) -> str:
    noise_levels = levels(runs)
    order = [HEADLINE_NOISE] * (HEADLINE_NOISE in noise_levels) + [n for n in noise_levels if n != HEADLINE_NOISE]
    lines = [*targets_table(headline_figures(runs)), ""]
    for noise in order:
        lines += [*accuracy_table(runs, noise), ""]
    return "\n".join(lines + sweep_table(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-novel"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=2048, help="training images per seed")
    parser.add_argument("--n-test", type=int, default=360, help="images per test split")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument(
        "--steps",
        type=int,
        default=300,
        help="per model; 3 seeds x 3 noise levels x 2 models fit in about an hour on 2 cores",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: tables, quality and plot from the (seed, noise) runs already finished under --out",
    )
    parser.add_argument(
        "--sweep",
        nargs="*",
        default=["clean", "heavy"],
        choices=list(NOISE),
        help=f"noise levels besides {HEADLINE_NOISE}, each run for every seed with both models",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args.out.mkdir(parents=True, exist_ok=True)

    noise_levels = [HEADLINE_NOISE, *(noise for noise in dict.fromkeys(args.sweep) if noise != HEADLINE_NOISE)]
    if args.report_only:
        runs = finished_runs(args, noise_levels)
    else:
        runs = [run_seed(args, seed, noise) for noise in noise_levels for seed in args.seeds]
    table = markdown(runs)
    plot = plot_quality_vs_advantage(runs, args.out / "quality_vs_advantage.png")
    if plot is not None:
        log.info("wrote %s", plot)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    (args.out / "results.json").write_text(json.dumps({"settings": settings, "runs": runs}, indent=1))
    (args.out / "results.md").write_text(table + "\n")
    if is_recorded_configuration(parser, args, ignore=("out", "report_only")):
        for name, value in headline_figures(runs).items():
            record(name, value, "fraction")
    else:
        log.info("not the recorded configuration (options other than --out changed): figures.json left as it is")
    print(table)


if __name__ == "__main__":
    main()
