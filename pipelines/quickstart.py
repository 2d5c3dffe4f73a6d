"""`grainclip quickstart`: the whole flow, offline, in minutes on a laptop.

PartsWorld images → the annotation pipeline on the embedded local Ray (simulated describer + grounder by
default, since no weights are reachable offline; `--describer vllm --model ...` swaps in real models) →
GRAIN and the CLIP baseline trained with the same backbone, data, steps and seed → both evaluated on seen
and novel classes in every scoring mode → one markdown report with training curves, the accuracy table and
example images. Each step's output is reused when it already exists, so a rerun finishes what is missing.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import typer

from grainclip.config.base import ConfigError, load_config, parse_config
from grainclip.errors import user_errors

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).resolve().parent / "configs"
BACKBONE = CONFIGS / "partsworld-vit.json"
SPLITS = ("test_seen", "test_novel")
VAL_SPLITS = ("val_seen", "val_novel")  # for choosing a recipe, alpha or a step count; SPLITS are for reporting
# grain = alpha * global + (1 - alpha) * region for this small recipe: the alpha of the sweep with the best mean
# of val_seen and val_novel top-1 (benchmarks/grain_ablation.py, RESULTS.md "GRAIN recipe ablation").
GRAIN_ALPHA = 0.1


@dataclass
class QuickstartSettings:
    out: Path
    n: int = 1024
    n_test: int = 180
    image_size: int = 64
    steps: int = 300
    batch_size: int = 64
    seed: int = 0
    describer: str | None = None
    grounder: str | None = None
    model: str | None = None
    detector: str | None = None


def train_config(mode: str, data: Path, out: Path, steps: int, batch_size: int, seed: int, lr: float = 1e-3) -> Any:
    """The small-model recipe shared by the quickstart and benchmarks/partsworld_novel.py.

    A 4-layer ViT on 64-px inputs with a 2-layer decoder; sin-cos memory positions stay on (docs/design.md:
    box regression did not start without them on small models). GRAIN's recipe options (pooled global
    embedding, teacher-forced RoI region embeddings, separate L_rd temperature) are TrainConfig's
    defaults, chosen on PartsWorld's validation splits by benchmarks/grain_ablation.py.
    """
    from grainclip.config.train import TrainConfig

    return parse_config(
        {
            "mode": mode,
            "output_dir": str(out),
            "backbone": {"model": str(BACKBONE)},
            "decoder": {"layers": 2, "d_model": 128, "heads": 4, "ffn_dim": 512, "region_queries": 5, "dropout": 0.0},
            "data": {"train": str(data), "num_workers": 1},
            "optim": {"lr": lr, "warmup_steps": max(1, steps // 20)},
            "batch_size": batch_size,
            "steps": steps,
            "seed": seed,
            "log_every": max(1, min(25, steps // 20)),
            "checkpoint_every": steps,
        },
        TrainConfig,
    )


def evaluate_config(
    models: dict[str, Path], root: Path, out: Path, grid_images: int = 6, splits: tuple[str, ...] = SPLITS
) -> Any:
    """Classification on every split, and grounding (do GRAIN's boxes sit on the described parts?) as well.

    grain scoring mixes global and region scores with GRAIN_ALPHA, chosen on the validation splits.
    """
    from grainclip.config.evaluate import EvaluateConfig

    tasks = ["classification", "grounding"]
    return parse_config(
        {
            "out": str(out),
            "models": [{"type": "checkpoint", "label": label, "path": str(path)} for label, path in models.items()],
            "datasets": [
                {"name": split, "source": {"kind": "partsworld", "path": str(root), "split": split}, "tasks": tasks}
                for split in splits
            ],
            "scoring": {"alpha": GRAIN_ALPHA},
            "num_workers": 1,
            "grid_images": grid_images,
            "progress": False,
        },
        EvaluateConfig,
    )


def pipeline_config(settings: QuickstartSettings, data: Path) -> Any:
    """The shipped quickstart pipeline YAML, pointed at this run's data and, if asked, at real annotators."""
    from grainclip.config.pipeline import PipelineConfig

    overrides: dict[str, Any] = {"source.path": str(data), "output": str(settings.out / "pipeline")}
    if settings.describer:
        overrides["describe.describer"] = {"name": settings.describer, "model": settings.model}
    if settings.grounder:
        overrides["ground.grounder"] = {"name": settings.grounder, "model": settings.detector}
    return load_config(CONFIGS / "quickstart.yaml", PipelineConfig, overrides=overrides)


def top1_table(results: dict[str, Any]) -> dict[tuple[str, str, str], float]:
    """(model label, dataset, mode) -> top-1 accuracy from an evaluate() result."""
    return {
        (run["model"], run["dataset"], row["mode"]): row["top1"]
        for run in results["runs"]
        for row in run.get("classification", [])
    }


def grounding_table(results: dict[str, Any]) -> dict[tuple[str, str], float]:
    """(model label, dataset) -> grounding recall@IoU0.5, for the runs that measured it (models with regions)."""
    table = {}
    for run in results["runs"]:
        recall = run.get("grounding", {}).get("recall@iou0.5")
        if recall is not None and math.isfinite(recall):  # NaN (or null in JSON): no description to ground
            table[(run["model"], run["dataset"])] = recall
    return table


@dataclass(frozen=True)
class Headline:
    """The numbers the verdict compares: GRAIN (grain scoring) against CLIP, and where GRAIN's boxes land."""

    grain_seen: float | None
    clip_seen: float | None  # CLIP's global top-1: the bar for seen classes
    grain_novel: float | None
    clip_novel: float | None  # CLIP's best scoring on novel classes
    clip_novel_mode: str
    grounding: float | None  # recall@IoU0.5 of GRAIN's boxes on test_seen

    @classmethod
    def of(cls, top1: dict[tuple[str, str, str], float], grounding: dict[tuple[str, str], float]) -> Headline:
        novel_mode = max(("global", "global+descriptors"), key=lambda m: top1.get(("clip", "test_novel", m), -1.0))
        return cls(
            top1.get(("grain", "test_seen", "grain")),
            top1.get(("clip", "test_seen", "global")),
            top1.get(("grain", "test_novel", "grain")),
            top1.get(("clip", "test_novel", novel_mode)),
            novel_mode,
            grounding.get(("grain", "test_seen")),
        )


@dataclass(frozen=True)
class Target:
    """One bar of the quickstart's targets, checked against this run's numbers."""

    name: str
    value: float | None
    bar: float | None
    percent: bool = True  # a top-1 fraction, shown in %; otherwise shown as a fraction

    @property
    def holds(self) -> bool | None:
        return None if self.value is None or self.bar is None else self.value >= self.bar - 1e-9

    def show(self, value: float | None) -> str:
        return "n/a" if value is None else f"{100 * value:.1f}%" if self.percent else f"{value:.2f}"


SEEN_MARGIN = 0.03  # GRAIN may trail CLIP's global top-1 on seen classes by this much and still win
NOVEL_TARGET = 0.45
GROUNDING_TARGET = 0.5
HOLDS = {True: "yes", False: "**no**", None: "n/a"}


def targets(headline: Headline) -> list[Target]:
    """The quickstart's targets (for its default settings): recognition on seen and novel classes, and grounding."""
    seen_bar = None if headline.clip_seen is None else headline.clip_seen - SEEN_MARGIN
    return [
        Target(
            f"GRAIN seen-class top-1 (grain scoring) >= CLIP global top-1 - {100 * SEEN_MARGIN:g} points",
            headline.grain_seen,
            seen_bar,
        ),
        Target(
            f"GRAIN novel-class top-1 (grain scoring) >= {100 * NOVEL_TARGET:g}%", headline.grain_novel, NOVEL_TARGET
        ),
        Target(
            f"grounding recall@IoU0.5 of GRAIN's boxes on test_seen >= {GROUNDING_TARGET:g}",
            headline.grounding,
            GROUNDING_TARGET,
            percent=False,
        ),
    ]


def verdict(headline: Headline) -> str:
    """One sentence, computed from the numbers: GRAIN wins if it beats CLIP's best on novel classes while staying
    within SEEN_MARGIN of CLIP on seen classes."""
    h = headline
    missing = [
        name
        for name, value in (
            ("GRAIN seen", h.grain_seen),
            ("CLIP seen", h.clip_seen),
            ("GRAIN novel", h.grain_novel),
            ("CLIP novel", h.clip_novel),
        )
        if value is None
    ]
    if missing:
        return f"No verdict: this run has no top-1 for {', '.join(missing)}."
    gap = h.grain_seen - h.clip_seen
    seen_ok, novel_win = gap >= -SEEN_MARGIN - 1e-9, h.grain_novel > h.clip_novel
    lead = {
        (True, True): "GRAIN wins",
        (True, False): "GRAIN wins on novel classes but loses on seen classes",
        (False, True): "GRAIN does not beat CLIP on novel classes",
        (False, False): "GRAIN loses on seen and novel classes",
    }[(novel_win, seen_ok)]
    margin = f"the {100 * SEEN_MARGIN:g}-point margin"
    seen_note = (
        "level"
        if abs(gap) < 1e-9
        else f"{100 * gap:.1f} points ahead"
        if gap > 0
        else f"{-100 * gap:.1f} points behind, {'within' if seen_ok else 'outside'} {margin}"
    )
    grounding = "not measured" if h.grounding is None else f"{h.grounding:.2f}"
    return (
        f"{lead}: novel classes {100 * h.grain_novel:.1f}% (grain scoring) vs {100 * h.clip_novel:.1f}% for CLIP "
        f"{h.clip_novel_mode}, seen classes {100 * h.grain_seen:.1f}% vs {100 * h.clip_seen:.1f}% for CLIP "
        f"global ({seen_note}); grounding recall@IoU0.5 of GRAIN's boxes on test_seen {grounding}."
    )


def run_quickstart(settings: QuickstartSettings) -> Path:
    """Run every step (skipping those already done) and return the report's path."""
    from grainclip.evaluate import evaluate
    from grainclip.partsworld import generate
    from grainclip.pipelines import run_pipeline
    from grainclip.show import show
    from grainclip.train import train
    from grainclip.train.layout import exported_model_dir, is_exported
    from grainclip.train.metrics import METRICS_FILE

    out, timings = settings.out, {}
    data = out / "partsworld"
    started = time.perf_counter()
    if not (data / "manifest.json").exists():
        log.info("[1/5] generating PartsWorld: %d training images at %d px", settings.n, settings.image_size)
        generate(data, n=settings.n, n_test=settings.n_test, seed=settings.seed, image_size=settings.image_size)
    timings["generate"] = time.perf_counter() - started

    log.info("[2/5] annotating on the embedded local Ray")
    step = time.perf_counter()
    annotation = run_pipeline(pipeline_config(settings, data))
    show(annotation.annotations, out / "annotations.png", max_images=8, columns=4)
    timings["annotate"] = time.perf_counter() - step

    models, curves = {}, {}
    for index, mode in enumerate(("grain", "clip"), start=3):
        step = time.perf_counter()
        run_dir = out / mode
        if is_exported(run_dir):
            log.info("[%d/5] %s already trained: %s", index, mode, exported_model_dir(run_dir))
        else:
            log.info("[%d/5] training %s for %d steps", index, mode, settings.steps)
            train(
                train_config(mode, annotation.annotations, run_dir, settings.steps, settings.batch_size, settings.seed)
            )
        models[mode] = exported_model_dir(run_dir)
        curves[mode] = run_dir / METRICS_FILE
        timings[f"train_{mode}"] = time.perf_counter() - step

    log.info("[5/5] evaluating both models on seen and novel classes")
    step = time.perf_counter()
    results = evaluate(evaluate_config(models, data, out / "evaluate"))
    timings["evaluate"] = time.perf_counter() - step
    timings["total"] = time.perf_counter() - started

    plot_curves(curves, out / "training_curves.png")
    report = write_report(settings, annotation, results, timings, out)
    log.info("quickstart finished in %.0f s; report: %s", timings["total"], report)
    return report


def plot_curves(metrics_files: dict[str, Path], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("loss/caption", "loss/box", "loss/region")
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2))
    for label, file in metrics_files.items():
        records = [json.loads(line) for line in file.read_text().splitlines() if line.strip()]
        for ax, key in zip(axes, keys):
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                ax.plot(*zip(*points), label=label)
    for ax, key in zip(axes, keys):
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    settings: QuickstartSettings, annotation: Any, results: dict[str, Any], timings: dict[str, float], out: Path
) -> Path:
    annotators = annotation.manifest.annotators
    simulated = [stage for stage in ("describer", "grounder") if annotators.get(stage, {}).get("simulated")]
    top1, grounding = top1_table(results), grounding_table(results)
    headline = Headline.of(top1, grounding)
    checks = targets(headline)
    lines = [
        "# grainclip quickstart report",
        "",
        f"PartsWorld: {settings.n} training images of seen classes at {settings.image_size} px, {settings.n_test} "
        f"test images per split, seed {settings.seed}. Novel classes re-bind seen colours to other parts and their "
        "names never occur in training: they can only be recognised through their descriptors.",
        "",
        "## Verdict",
        "",
        f"**{verdict(headline)}**",
        "",
        *_targets_table(checks, _changed_settings(settings)),
        "",
        "## Annotation",
        f"Rows by status: {json.dumps(annotation.counts)} (run {annotation.run_id}).",
    ]
    if simulated:
        lines.append(
            f"**Simulated annotators** ({', '.join(simulated)}): they replay the generator's ground truth "
            "with noise and stand in for an LLM and a detector where no weights exist."
        )
    lines += [
        "",
        "![annotations](annotations.png)",
        "",
        "## Training",
        f"GRAIN and the CLIP baseline: same backbone ({BACKBONE.name}), data, {settings.steps} steps, batch "
        f"{settings.batch_size}, seed {settings.seed}.",
        "",
        "![training curves](training_curves.png)",
        "",
        "## Zero-shot top-1 (%)",
        "",
        "| model | scoring | seen classes | novel classes |",
        "|---|---|---|---|",
    ]
    for model in ("clip", "grain"):
        for mode in ("global", "global+descriptors", "grain"):
            if (model, "test_seen", mode) in top1:
                seen, novel = top1[(model, "test_seen", mode)], top1.get((model, "test_novel", mode))
                lines.append(
                    f"| {model} | {mode} | {100 * seen:.1f} | {'n/a' if novel is None else f'{100 * novel:.1f}'} |"
                )
    lines += [
        "",
        "Chance is 1/18 per split; a model that only sees which colours are present is capped at 1/3 on "
        "novel classes. Full results, plots and region grids: [evaluate/results.md](evaluate/results.md).",
        "",
        "## Grounding",
        "",
        "Recall@IoU0.5: for each test image and annotated part description, the predicted region that matches "
        "the description best counts as found if its box overlaps the part's true box with IoU >= 0.5.",
        "",
        "| model | split | recall@IoU0.5 |",
        "|---|---|---|",
    ]
    lines += [f"| {model} | {split} | {recall:.2f} |" for (model, split), recall in grounding.items()]
    grid = results.get("plots", {}).get("regions/grain/test_seen")
    if grid:
        lines += ["", f"![GRAIN's predicted regions on test_seen](evaluate/{grid})"]
    lines += ["", "## Time (s)", "", "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {seconds:.0f} |" for name, seconds in timings.items()]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(
        json.dumps(
            {
                "verdict": verdict(headline),
                "targets": [{"target": t.name, "value": t.value, "bar": t.bar, "holds": t.holds} for t in checks],
                "top1": {"/".join(k): v for k, v in top1.items()},
                "grounding_recall@iou0.5": {"/".join(k): v for k, v in grounding.items()},
                "counts": annotation.counts,
                "timings": timings,
            },
            indent=1,
        )
    )
    return path


def _targets_table(checks: list[Target], changed: list[str]) -> list[str]:
    held = sum(bool(t.holds) for t in checks)
    lines = [f"Targets: {held} of {len(checks)} hold.", "", "| target | measured | bar | holds |", "|---|---|---|---|"]
    for t in checks:
        lines.append(f"| {t.name} | {t.show(t.value)} | {t.show(t.bar)} | {HOLDS[t.holds]} |")
    if changed:
        lines += ["", f"The targets are set for the default settings; this run changed {', '.join(changed)}."]
    return lines


def _changed_settings(settings: QuickstartSettings) -> list[str]:
    """`name=value` for every setting (but the output folder) that differs from the quickstart's default."""
    return [
        f"{f.name}={getattr(settings, f.name)}"
        for f in fields(settings)
        if f.name != "out" and getattr(settings, f.name) != f.default
    ]


def register(app: typer.Typer) -> None:
    @app.command()
    @user_errors
    def quickstart(
        out: Path = typer.Option(Path("runs/quickstart"), help="Output directory (steps already done are reused)."),
        n: int = typer.Option(1024, help="PartsWorld training images."),
        n_test: int = typer.Option(180, help="Test images per split (seen, novel)."),
        steps: int = typer.Option(300, help="Training steps for each model."),
        batch_size: int = typer.Option(64, help="Training batch size."),
        seed: int = typer.Option(0, help="Seed for data, annotation noise and training."),
        describer: str | None = typer.Option(None, help="Describer plugin, e.g. vllm (default: simulated)."),
        model: str | None = typer.Option(None, help="Describer model id or folder, e.g. Qwen/Qwen2.5-VL-3B-Instruct."),
        grounder: str | None = typer.Option(None, help="Grounder plugin, e.g. grounding-dino or owlv2."),
        detector: str | None = typer.Option(None, help="Grounder checkpoint id or folder."),
    ) -> None:
        """Whole flow offline: PartsWorld -> annotation pipeline -> train GRAIN and CLIP -> evaluate -> report."""
        if min(n, n_test, steps, batch_size) < 1:
            raise ConfigError("--n, --n-test, --steps and --batch-size must all be at least 1")
        report = run_quickstart(
            QuickstartSettings(
                out=out,
                n=n,
                n_test=n_test,
                steps=steps,
                batch_size=batch_size,
                seed=seed,
                describer=describer,
                model=model,
                grounder=grounder,
                detector=detector,
            )
        )
        typer.echo(f"report: {report}")
