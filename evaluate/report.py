"""Write an evaluation's results: results.json, a markdown summary, PNG plots a person can read, and
predictions.parquet (every image's top-5 classes per model, dataset and mode, for error analysis and for
comparing with other tools image by image).

Figures are built with matplotlib's object API (no pyplot), so writing a report never changes the
backend or state of a notebook or program that calls `evaluate`.
"""

from __future__ import annotations

import json
import math
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PREDICTIONS_FILE = "predictions.parquet"
PREDICTIONS_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("dataset", pa.string()),
        ("mode", pa.string()),
        ("image_id", pa.string()),
        ("label", pa.string()),
        ("top5_classes", pa.list_(pa.string())),
        ("top5_scores", pa.list_(pa.float32())),
    ]
)

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def _finite(value: Any) -> Any:
    """JSON has no NaN: metrics that do not exist (no rows) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines + [""]


def markdown(results: dict[str, Any]) -> str:
    runs = results["runs"]
    lines = ["# Evaluation", "", f"Device: {results['device']}.", ""]
    lines += ["## Models", ""]
    lines += _table(
        ["model", "loaded as", "kind", "region modes"],
        [
            [m["label"], m["name"], m["kind"], "yes" if m["region_modes"] else "no (global only)"]
            for m in results["models"]
        ],
    )
    classification = [(r, c) for r in runs for c in r.get("classification", [])]
    if classification:
        lines += [
            "## Zero-shot classification",
            "",
            "Top-1 / top-5 accuracy and mean per-class recall; ties count as errors. "
            "Top-5 with fewer than 5 classes is top-C (always 1).",
            "",
        ]
        lines += _table(
            ["model", "dataset", "mode", "top-1", "top-5", "mean per-class recall", "images"],
            [
                [r["model"], r["dataset"], c["mode"], c["top1"], c["top5"], c["mean_per_class_recall"], c["n_images"]]
                for r, c in classification
            ],
        )
    sweeps = [r for r in runs if r.get("alpha_sweep")]
    if sweeps:
        lines += [
            "## grain: alpha sweep",
            "",
            "grain = alpha*global + (1-alpha)*region. The best alpha is chosen on the "
            "evaluation data itself, so its accuracy is optimistic; the table above uses the configured alpha.",
            "",
        ]
        rows = []
        for r in sweeps:
            best = max(r["alpha_sweep"], key=lambda s: s["top1"])
            rows.append(
                [
                    r["model"],
                    r["dataset"],
                    best["alpha"],
                    best["top1"],
                    ", ".join(f"{s['alpha']:g}:{s['top1']:.3f}" for s in r["alpha_sweep"]),
                ]
            )
        lines += _table(["model", "dataset", "best alpha", "top-1 at best", "alpha:top-1"], rows)
    retrieval = [r for r in runs if r.get("retrieval", {}).get("n_images")]
    if retrieval:
        keys = [k for k in retrieval[0]["retrieval"] if "R@" in k]
        lines += ["## Retrieval", "", "Recall@K; images sharing a caption string all count as correct for it.", ""]
        lines += _table(
            ["model", "dataset", *keys, "images", "distinct captions"],
            [
                [
                    r["model"],
                    r["dataset"],
                    *[r["retrieval"][k] for k in keys],
                    r["retrieval"]["n_images"],
                    r["retrieval"]["n_texts"],
                ]
                for r in retrieval
            ],
        )
    grounding = [r for r in runs if "grounding" in r]
    if grounding:
        lines += [
            "## Grounding",
            "",
            "For each image and annotated description, the predicted region whose embedding matches the "
            "description best; correct if its box has IoU >= 0.5 with a truth box of that description.",
            "",
        ]
        lines += _table(
            ["model", "dataset", "recall@IoU0.5", "mean IoU", "descriptions"],
            [
                [
                    r["model"],
                    r["dataset"],
                    r["grounding"]["recall@iou0.5"],
                    r["grounding"]["mean_iou"],
                    r["grounding"]["n_descriptions"],
                ]
                for r in grounding
            ],
        )
    notes = [
        f"- {r['model']} on {r['dataset']}: {u.get('mode') or u.get('task')} unavailable: {u['reason']}"
        for r in runs
        for u in r["unavailable"]
    ]
    notes += [
        f"- {r['dataset']}: the descriptor file's {r['descriptor_classes_ignored']} other class(es) were ignored"
        for r in runs
        if r.get("descriptor_classes_ignored") and r["model"] == runs[0]["model"]
    ]
    for r in runs:
        skipped = r["skipped_images"]
        if skipped["count"] and r["model"] == runs[0]["model"]:  # the same images fail for every model
            first = skipped["examples"][0]
            notes.append(
                f"- {r['dataset']}: {skipped['count']} image(s) could not be decoded and were skipped "
                f"(e.g. {first['image_id']}: {first['reason']})"
            )
    if notes:
        lines += ["## Notes", "", *notes, ""]
    lines += ["## Speed", ""]
    lines += _table(
        ["model", "dataset", "images/s"], [[r["model"], r["dataset"], r["images_per_second"]] for r in runs]
    )
    return "\n".join(lines)


def plot_modes(results: dict[str, Any], path: Path) -> Path | None:
    """Grouped bars: top-1 per dataset, one bar per (model, mode)."""
    from matplotlib.figure import Figure

    datasets = list(dict.fromkeys(r["dataset"] for r in results["runs"]))
    series = list(dict.fromkeys((r["model"], c["mode"]) for r in results["runs"] for c in r.get("classification", [])))
    if not series:
        return None
    value = {
        (r["model"], c["mode"], r["dataset"]): c["top1"] for r in results["runs"] for c in r.get("classification", [])
    }
    width = 0.8 / len(series)
    fig = Figure(figsize=(max(6, 1.6 * len(datasets) * max(1, len(series) / 3)), 4.5))
    ax = fig.subplots()
    x = np.arange(len(datasets))
    for k, (model, mode) in enumerate(series):
        heights = [value.get((model, mode, d), np.nan) for d in datasets]
        bars = ax.bar(
            x + (k - (len(series) - 1) / 2) * width,
            heights,
            width,
            label=f"{model} · {mode}",
            color=COLORS[k % len(COLORS)],
        )
        ax.bar_label(bars, labels=[f"{h:.2f}" if np.isfinite(h) else "" for h in heights], fontsize=7, padding=1)
    ax.set_xticks(x, datasets)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("Zero-shot classification by scoring mode")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_alpha_sweep(results: dict[str, Any], path: Path, configured_alpha: float | None) -> Path | None:
    from matplotlib.figure import Figure

    sweeps = [r for r in results["runs"] if r.get("alpha_sweep")]
    if not sweeps:
        return None
    fig = Figure(figsize=(6.5, 4.5))
    ax = fig.subplots()
    for k, r in enumerate(sweeps):
        alphas = [s["alpha"] for s in r["alpha_sweep"]]
        ax.plot(
            alphas,
            [s["top1"] for s in r["alpha_sweep"]],
            marker="o",
            color=COLORS[k % len(COLORS)],
            label=f"{r['model']} · {r['dataset']}",
        )
    if configured_alpha is not None:
        ax.axvline(
            configured_alpha,
            color="grey",
            linestyle="--",
            linewidth=1,
            label=f"configured alpha = {configured_alpha:g}",
        )
    ax.set_xlabel("alpha  (0 = region only, 1 = global only)")
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title("grain = alpha·global + (1 − alpha)·region")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


def plot_region_grid(items: list[dict[str, Any]], title: str, path: Path) -> Path:
    """Write `region_grid_figure` as a PNG."""
    region_grid_figure(items, title).savefig(path, dpi=110, bbox_inches="tight")
    return path


def region_grid_figure(items: list[dict[str, Any]], title: str) -> Any:
    """Images with their predicted regions; under each image, every region's best-matching descriptor and cosine.

    The descriptors are listed below the image, numbered like their boxes, rather than written on the boxes,
    so overlapping regions stay readable. The "compressed" layout places titles and descriptor lists around
    the fixed-aspect images (tight_layout sized the cells before the images took their aspect, so a row's
    titles ran into the lists of the row above); long descriptors are wrapped to the image's width.
    """
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    columns = min(4, len(items))
    rows = math.ceil(len(items) / columns)
    listings = [_region_lines(item) for item in items]
    most_lines = max(len(lines) for lines in listings)
    fig = Figure(figsize=(3.6 * columns, (4.0 + 0.16 * most_lines) * rows), layout="compressed")
    fig.get_layout_engine().set(h_pad=0.1, w_pad=0.1)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.flat[len(items) :]:
        ax.axis("off")
    for ax, item, lines in zip(axes.flat, items, listings):
        image = item["image"]
        ax.imshow(image)
        ax.set_xticks([])
        ax.set_yticks([])
        width, height = image.size
        for k, (box, _) in enumerate(zip(item["boxes"], item["descriptors"], strict=True)):
            color = COLORS[k % len(COLORS)]
            x1, y1, x2, y2 = box[0] * width, box[1] * height, box[2] * width, box[3] * height
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linewidth=2))
            ax.text(
                x1,
                y1,
                str(k + 1),
                color="white",
                fontsize=7,
                va="top",
                ha="left",
                bbox={"facecolor": color, "pad": 1, "edgecolor": "none"},
                clip_on=True,
            )
        ax.set_xlabel("\n".join(lines), fontsize=8, loc="left")
        verdict = "right" if item.get("prediction") == item.get("label") else "wrong"
        ax.set_title(f"true: {item.get('label')}\npredicted: {item.get('prediction')} ({verdict})", fontsize=9)
    fig.suptitle(title, fontsize=11)
    return fig


def _region_lines(item: dict[str, Any], width: int = 48) -> list[str]:
    """`k: descriptor  (cos s)` per region, wrapped at `width` characters (about an image's width at 8 pt)."""
    lines = []
    for k, (text, sim) in enumerate(zip(item["descriptors"], item["similarities"], strict=True)):
        lines += textwrap.wrap(f"{k + 1}: {text}  (cos {sim:.2f})", width, subsequent_indent="    ") or [""]
    return lines


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-") or "x"


class PredictionsFile:
    """predictions.parquet under `out`, written as each (model, dataset) finishes so memory stays flat.

    It is written under a temporary name and renamed when closed: a file by that name is always complete.
    """

    def __init__(self, out: str | Path) -> None:
        self.path = Path(out) / PREDICTIONS_FILE
        self.tmp = self.path.with_name(f".{PREDICTIONS_FILE}.tmp")
        self.writer: pq.ParquetWriter | None = None

    def write(self, model: str, dataset: str, table: pa.Table) -> int:
        """Add one (model, dataset)'s rows (ClassificationAccumulator.top_classes); returns how many."""
        if table.num_rows == 0:
            return 0
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(self.tmp, PREDICTIONS_SCHEMA)
        n = table.num_rows
        named = table.add_column(0, "dataset", pa.array([dataset] * n, pa.string()))
        named = named.add_column(0, "model", pa.array([model] * n, pa.string()))
        self.writer.write_table(named.select(PREDICTIONS_SCHEMA.names).cast(PREDICTIONS_SCHEMA))
        return n

    def close(self) -> Path | None:
        """Rename the finished file into place; None (and no file, not even an older one) when nothing was written."""
        if self.writer is None:
            self.path.unlink(missing_ok=True)
            return None
        self.writer.close()
        os.replace(self.tmp, self.path)
        return self.path


def write_report(results: dict[str, Any], grids: dict[tuple[str, str], list[dict]], out: str | Path) -> dict[str, Path]:
    """plots/*.png, results.md, then results.json under `out`; returns the written paths by name."""
    out = Path(out)
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    alpha = results.get("config", {}).get("scoring", {}).get("alpha")
    for name, path in (
        ("modes", plot_modes(results, plots / "modes.png")),
        ("alpha_sweep", plot_alpha_sweep(results, plots / "alpha_sweep.png", alpha)),
    ):
        if path:
            written[name] = path
    for (model, dataset), items in grids.items():
        grid_path = plots / f"regions_{_slug(model)}_{_slug(dataset)}.png"
        written[f"regions/{model}/{dataset}"] = plot_region_grid(
            items, f"{model} on {dataset}: predicted regions and best-matching descriptors", grid_path
        )
    results["plots"] = {name: str(path.relative_to(out)) for name, path in written.items()}
    text = markdown(results)
    if results.get("predictions"):
        text += f"\nEvery image's top-5 classes per model, dataset and mode: `{results['predictions']}`.\n"
    text += "\n## Plots\n\n" + "\n".join(f"![{name}]({rel})" for name, rel in results["plots"].items()) + "\n"
    (out / "results.md").write_text(text)
    # results.json last and atomically: its presence means the evaluation finished (pipelines resume on it).
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps(_finite(results), indent=2))
    os.replace(tmp, out / "results.json")
    written["markdown"], written["json"] = out / "results.md", out / "results.json"
    return written
