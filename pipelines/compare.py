"""Compare two annotation runs on the images they share, and score runs against known truth.

`grainclip pipeline compare RUN_A RUN_B [--truth TRUTH] --out DIR` (or `compare RUN --truth TRUTH`) writes
DIR/compare.json, DIR/compare.md, DIR/grid.png (the same images from A and B side by side, boxes drawn) and
DIR/histograms.png. It is what tells a user whether a swapped describer or grounder is worth its GPU-hours.

Figures, over the image_ids both runs hold:
- status counts, descriptions and regions per image, region score distribution (each run);
- description agreement: per image, the Jaccard overlap of the two description sets after case and
  whitespace normalisation (`normalise`), averaged; and the fraction of images with identical sets;
- box agreement: for each text both runs boxed in an image, the best IoU between their boxes of that text
  (mean IoU of same-text regions); and for each region of one run, its best IoU with any region of the other;
- throughput from both manifests: wall-clock rows/s over attempts, output tokens per busy describe
  actor-second, busy actor-seconds (and GPU-seconds) per 1k images for each stage.

Truth (`--truth`): a PartsWorld truth folder (what `grainclip synth` writes; read with the simulated
annotators' `TruthIndex`) or a COCO-style JSON file (`load_coco_truth`, format in docs/annotators.md). Per run,
over the image_ids both the run and the truth hold: description precision and recall (micro-averaged, matched
after normalisation), box recall at IoU 0.5 (a truth part is found when a region with the same normalised text
overlaps it at IoU >= 0.5, one-to-one), the mean IoU of those matches, and the fraction of images whose every
part was found. Truth problems (unknown ids, malformed boxes) are counted, never fatal.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from grainclip.boxes import box_iou
from grainclip.config.base import ConfigError
from grainclip.pipelines.manifest import RunManifest
from grainclip.pipelines.rundir import RunDir, existing_run
from grainclip.schema import parquet_files, region_problem

log = logging.getLogger(__name__)

MATCH_IOU = 0.5
#: Fewer shared image_ids than this fraction of the larger run is worth a warning: most of it goes uncompared.
FEW_SHARED = 0.5
GRID_IMAGES = 8
ROW_COLUMNS = ["image_id", "status", "descriptions", "regions"]
GRID_COLUMNS = ["image_id", "image", "image_uri", "caption", "llm_caption", "regions", "status", "error"]


def normalise(text: str) -> str:
    """Case- and whitespace-normalised text: how descriptions and region texts are matched."""
    return " ".join(str(text).lower().split())


@dataclass(frozen=True)
class Row:
    status: str
    descriptions: tuple[str, ...]  # normalised, unique, in order
    regions: tuple[tuple[str, tuple[float, ...], float], ...]  # (normalised text, xyxy box, score)


def rows_from_files(files: list[Path]) -> dict[str, Row]:
    """image_id -> Row of annotations-contract Parquet files (the first row of a repeated id wins)."""
    table = ds.dataset([str(f) for f in files], format="parquet").to_table(columns=ROW_COLUMNS)
    rows: dict[str, Row] = {}
    for record in table.to_pylist():
        descriptions = tuple(dict.fromkeys(normalise(d) for d in record["descriptions"] or ()))
        regions = tuple(
            (normalise(r["text"]), tuple(r["box"]), float(r["score"])) for r in record["regions"] or () if r["box"]
        )
        rows.setdefault(record["image_id"], Row(record["status"], descriptions, regions))
    return rows


@dataclass
class Run:
    """One run directory as compare reads it."""

    label: str
    run: RunDir
    manifest: RunManifest
    rows: dict[str, Row]


def load_run(path: str | Path, label: str) -> Run:
    """The run at `path`; ConfigError (one line) when it is not a run directory or has no committed rows."""
    run, manifest = existing_run(path)
    return Run(label, run, manifest, rows_from_files(run.committed_files()))


# --- truth ---------------------------------------------------------------------------------------------------


@dataclass
class Truth:
    """Per image_id the true descriptions (normalised) and parts (normalised text, xyxy box)."""

    path: str
    format: str
    descriptions: dict[str, set[str]]
    parts: dict[str, list[tuple[str, tuple[float, ...]]]]
    problems: dict[str, int] = field(default_factory=dict)

    def add_part(self, image_id: str, text: Any, box: Any) -> None:
        """Record one true part, or count it as malformed (no text, or a box outside the contract)."""
        problem = region_problem({"text": text, "box": box, "score": 1.0})
        if problem:
            self.problems["malformed_boxes"] = self.problems.get("malformed_boxes", 0) + 1
            return
        self.parts.setdefault(image_id, []).append((normalise(text), tuple(float(v) for v in box)))
        self.descriptions.setdefault(image_id, set()).add(normalise(text))


def load_truth(path: str | Path) -> Truth:
    """A PartsWorld truth folder (or dataset root) or a COCO-style JSON file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"truth not found: {path}")
    if path.is_file():
        return load_coco_truth(path)
    from grainclip.annotate.partsworld_truth import TruthIndex

    index = TruthIndex(path)
    truth = Truth(str(path), "partsworld", {}, {})
    for image_id, record in index.items():
        truth.descriptions[image_id] = {normalise(d) for d in record.descriptions}
        truth.parts[image_id] = []
        for text, box in zip(record.region_texts, record.region_boxes.tolist()):
            truth.add_part(image_id, text, box)
    return truth


def load_coco_truth(path: Path) -> Truth:
    """`{"images": [{"id", "width", "height"}], "annotations": [{"image_id", "phrase", "bbox": [x, y, w, h]}]}`.

    bbox is COCO's: pixels of the image, top-left corner plus width and height; it is normalised to xyxy of
    the image's width and height. Annotations of an id missing from `images` and malformed boxes are counted.
    """
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"truth {path} is not a JSON file ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise ConfigError(f"truth {path}: expected an object with `images` and `annotations` lists (COCO style)")
    truth = Truth(str(path), "coco", {}, {}, {"unknown_image_ids": 0, "malformed_boxes": 0, "malformed_images": 0})
    sizes: dict[str, tuple[float, float]] = {}
    for image in data["images"]:
        try:
            image_id, width, height = str(image["id"]), float(image["width"]), float(image["height"])
        except (TypeError, KeyError, ValueError):
            truth.problems["malformed_images"] += 1
            continue
        if not (width > 0 and height > 0):
            truth.problems["malformed_images"] += 1
            continue
        sizes[image_id] = (width, height)
        truth.descriptions.setdefault(image_id, set())
        truth.parts.setdefault(image_id, [])
    for annotation in data.get("annotations") or []:
        image_id = str(annotation.get("image_id")) if isinstance(annotation, dict) else None
        if image_id not in sizes:
            truth.problems["unknown_image_ids"] += 1
            continue
        box = annotation.get("bbox")
        if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
            width, height = sizes[image_id]
            x, y, w, h = box
            box = [x / width, y / height, (x + w) / width, (y + h) / height] if w > 0 and h > 0 else None
        else:
            box = None
        truth.add_part(image_id, annotation.get("phrase"), box)
    return truth


def score_against_truth(rows: dict[str, Row], truth: Truth) -> dict[str, Any]:
    """Description precision/recall, box recall at IoU 0.5, matched IoU, all-parts-found, over shared ids."""
    shared = sorted(set(rows) & set(truth.descriptions))
    if not shared:
        raise ConfigError(
            f"no image_id of the run ({len(rows)} ids) is in the truth {truth.path} ({len(truth.descriptions)} ids)"
        )
    predicted = correct = true_total = parts = found = complete = images_with_parts = 0
    matched_ious: list[float] = []
    for image_id in shared:
        row, true = rows[image_id], truth.descriptions[image_id]
        predicted += len(row.descriptions)
        true_total += len(true)
        correct += len(set(row.descriptions) & true)
        ious = match_parts(truth.parts.get(image_id, []), row.regions)
        image_parts = len(truth.parts.get(image_id, []))
        parts += image_parts
        found += len(ious)
        matched_ious += ious
        if image_parts:
            images_with_parts += 1
            complete += len(ious) == image_parts
    return {
        "images": len(shared),
        "truth_ids_not_in_run": len(set(truth.descriptions) - set(rows)),
        "run_ids_not_in_truth": len(set(rows) - set(truth.descriptions)),
        "description_precision": _ratio(correct, predicted),
        "description_recall": _ratio(correct, true_total),
        "true_descriptions": true_total,
        "true_parts": parts,
        "box_recall_at_0.5": _ratio(found, parts),
        "mean_iou_matched": _mean(matched_ious),
        "all_parts_found": _ratio(complete, images_with_parts),
    }


def match_parts(parts: list[tuple[str, tuple[float, ...]]], regions: tuple) -> list[float]:
    """IoUs of the true parts found: greedy one-to-one within each text, highest IoU first, IoU >= 0.5."""
    ious = []
    for text in {t for t, _ in parts}:
        true = [box for t, box in parts if t == text]
        mine = [box for t, box, _ in regions if t == text]
        if not mine:
            continue
        matrix = box_iou(np.asarray(true), np.asarray(mine))
        while matrix.size and matrix.max() >= MATCH_IOU:
            i, j = np.unravel_index(int(matrix.argmax()), matrix.shape)
            ious.append(float(matrix[i, j]))
            matrix[i, :], matrix[:, j] = -1.0, -1.0
    return ious


def score_annotations(annotations: str | Path, truth: str | Path) -> dict[str, Any]:
    """Truth scores of an annotations folder that need not be a run directory (e.g. a benchmark's)."""
    return score_against_truth(rows_from_files(parquet_files(annotations)), load_truth(truth))


# --- two runs ------------------------------------------------------------------------------------------------


def agreement(a: dict[str, Row], b: dict[str, Row], ids: list[str]) -> dict[str, Any]:
    """Description and box agreement of two runs over `ids`."""
    jaccards, identical, same_text, best_ab, best_ba = [], 0, [], [], []
    for image_id in ids:
        ra, rb = a[image_id], b[image_id]
        da, db = set(ra.descriptions), set(rb.descriptions)
        if da or db:
            jaccards.append(len(da & db) / len(da | db))
            identical += da == db
        for text in {t for t, _, _ in ra.regions} & {t for t, _, _ in rb.regions}:
            boxes_a = [box for t, box, _ in ra.regions if t == text]
            boxes_b = [box for t, box, _ in rb.regions if t == text]
            same_text.append(float(box_iou(np.asarray(boxes_a), np.asarray(boxes_b)).max()))
        if ra.regions and rb.regions:
            matrix = box_iou(np.asarray([r[1] for r in ra.regions]), np.asarray([r[1] for r in rb.regions]))
            best_ab += matrix.max(axis=1).tolist()
            best_ba += matrix.max(axis=0).tolist()
    return {
        "images_with_descriptions": len(jaccards),
        "description_jaccard": _mean(jaccards),
        "descriptions_identical": _ratio(identical, len(jaccards)),
        "same_text_regions": len(same_text),
        "same_text_box_iou": _mean(same_text),
        "best_iou_a_to_b": _mean(best_ab),
        "best_iou_b_to_a": _mean(best_ba),
    }


def run_figures(run: Run, ids: list[str]) -> dict[str, Any]:
    """What one run produced (all its rows, and the shared ones) and how fast."""
    shared = [run.rows[i] for i in ids]
    scores = [score for row in shared for _, _, score in row.regions]
    manifest = run.manifest
    return {
        "path": str(run.run.root),
        "run_id": manifest.run_id,
        "status": manifest.status,
        "annotators": {kind: _annotator(info) for kind, info in manifest.annotators.items()},
        "descriptions_from": manifest.descriptions_from.model_dump() if manifest.descriptions_from else None,
        "rows": len(run.rows),
        "statuses": dict(sorted(Counter(row.status for row in run.rows.values()).items())),
        "statuses_shared": dict(sorted(Counter(row.status for row in shared).items())),
        "descriptions_per_image": _mean([len(row.descriptions) for row in shared]),
        "regions_per_image": _mean([len(row.regions) for row in shared]),
        "region_scores": _distribution(scores),
        "throughput": throughput_figures(manifest),
    }


def _annotator(info: dict[str, Any]) -> dict[str, Any]:
    keys = ("name", "model", "prompt", "prompt_sha256", "simulated", "box_threshold")
    return {k: info[k] for k in keys if k in info}


def throughput_figures(manifest: RunManifest) -> dict[str, Any]:
    """rows/s (wall clock over all attempts), tokens/s and busy seconds per 1k images per stage."""
    seconds = sum(a.rows / a.rows_per_second for a in manifest.attempts if a.rows and a.rows_per_second)
    rows = sum(a.rows for a in manifest.attempts if a.rows and a.rows_per_second)
    figures: dict[str, Any] = {"rows_per_second": round(rows / seconds, 3) if seconds else None}
    if manifest.throughput is not None:
        describe, ground = manifest.throughput.describe, manifest.throughput.ground
        figures["output_tokens_per_describe_second"] = describe.output_tokens_per_actor_second
        for stage, stage_figures in (("describe", describe), ("ground", ground)):
            figures[f"{stage}_busy_seconds_per_1k"] = stage_figures.actor_seconds_per_1k
            figures[f"{stage}_gpu_seconds_per_1k"] = stage_figures.gpu_seconds_per_1k
    return figures


def compare(paths: list[str | Path], out: str | Path, truth: str | Path | None = None) -> tuple[dict, list[str]]:
    """Compare one or two runs (one needs `truth`), write DIR/compare.{json,md} and PNGs; (result, warnings)."""
    if not 1 <= len(paths) <= 2:
        raise ConfigError(f"compare takes one or two run directories, got {len(paths)}")
    if len(paths) == 1 and truth is None:
        raise ConfigError("compare needs two runs, or one run and --truth to score it")
    runs = [load_run(path, label) for path, label in zip(paths, "AB")]
    warnings: list[str] = []
    ids = sorted(set.intersection(*(set(r.rows) for r in runs)))
    result: dict[str, Any] = {"shared": {"image_ids": len(ids)}}
    if len(runs) == 2:
        a, b = runs
        sizes = f"A has {len(a.rows)}, B has {len(b.rows)}"
        if not ids:
            raise ConfigError(f"{a.run.root} and {b.run.root} share no image_id ({sizes}); nothing to compare")
        result["shared"].update(only_a=len(a.rows) - len(ids), only_b=len(b.rows) - len(ids))
        if len(ids) < FEW_SHARED * max(len(a.rows), len(b.rows)):
            warnings.append(f"the runs share only {len(ids)} image_id(s) ({sizes}); every figure is over those")
        result["agreement"] = agreement(a.rows, b.rows, ids)
    result["runs"] = {run.label: run_figures(run, ids) for run in runs}
    if truth is not None:
        loaded = load_truth(truth)
        result["truth"] = {
            "path": loaded.path,
            "format": loaded.format,
            "images": len(loaded.descriptions),
            "problems": loaded.problems,
        }
        for run in runs:
            result["runs"][run.label]["truth"] = scores = score_against_truth(run.rows, loaded)
            if scores["truth_ids_not_in_run"] or scores["run_ids_not_in_truth"]:
                warnings.append(
                    f"run {run.label}: {scores['run_ids_not_in_truth']} image_id(s) have no truth, "
                    f"{scores['truth_ids_not_in_run']} truth image_id(s) are not in the run; scored over "
                    f"{scores['images']}"
                )
        problems = {k: v for k, v in loaded.problems.items() if v}
        if problems:
            warnings.append(
                f"truth {loaded.path}: " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in problems.items())
            )
    result["warnings"] = warnings
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.json").write_text(json.dumps(result, indent=1, default=str))
    (out / "compare.md").write_text(markdown(result))
    write_grid(runs, ids, out / "grid.png")
    write_histograms(runs, ids, out / "histograms.png")
    return result, warnings


# --- output --------------------------------------------------------------------------------------------------


def markdown(result: dict[str, Any]) -> str:
    runs = result["runs"]
    labels = list(runs)
    lines = [f"# Annotation runs compared on {result['shared']['image_ids']} shared image_ids", ""]
    lines += ["| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]

    def row(name: str, values: list[Any]) -> None:
        lines.append(f"| {name} | " + " | ".join(_cell(v) for v in values) + " |")

    row("run", [f"{r['run_id']} ({r['path']})" for r in runs.values()])
    for kind in ("describer", "grounder"):
        row(kind, [_label(r["annotators"].get(kind)) for r in runs.values()])
    row(
        "descriptions from",
        [(r["descriptions_from"] or {}).get("origin_run_id", "(own describer)") for r in runs.values()],
    )
    row("rows", [r["rows"] for r in runs.values()])
    statuses = sorted({s for r in runs.values() for s in r["statuses_shared"]})
    for status in statuses:
        row(f"{status} (shared ids)", [r["statuses_shared"].get(status, 0) for r in runs.values()])
    for key in ("descriptions_per_image", "regions_per_image"):
        row(key.replace("_", " "), [r[key] for r in runs.values()])
    row(
        "region score mean / median",
        [f"{_cell(r['region_scores']['mean'])} / {_cell(r['region_scores']['p50'])}" for r in runs.values()],
    )
    for key in next(iter(runs.values()))["throughput"]:
        row(key.replace("_", " "), [r["throughput"].get(key) for r in runs.values()])
    if "truth" in result:
        for key in next(iter(runs.values()))["truth"]:
            row(f"truth: {key.replace('_', ' ')}", [r["truth"][key] for r in runs.values()])
    if "agreement" in result:
        lines += ["", "## Agreement of A and B", "", "| figure | value |", "|---|---|"]
        lines += [f"| {k.replace('_', ' ')} | {_cell(v)} |" for k, v in result["agreement"].items()]
    if "truth" in result:
        truth = result["truth"]
        lines += [
            "",
            f"Truth: {truth['path']} ({truth['format']}, {truth['images']} images); problems: {truth['problems']}.",
        ]
    lines += ["", *(f"Warning: {w}" for w in result["warnings"])]
    return "\n".join(lines) + "\n"


def write_grid(runs: list[Run], ids: list[str], path: Path) -> None:
    """The first GRID_IMAGES shared images, one row each, run A left and run B right, boxes drawn."""
    from PIL import ImageFont

    from grainclip.show import FONT_SIZE, GridLayout, render_grid

    sample = ids[:GRID_IMAGES]
    by_run = []
    for run in runs:
        table = ds.dataset([str(f) for f in run.run.committed_files()], format="parquet").to_table(
            columns=GRID_COLUMNS, filter=pc.field("image_id").isin(pa.array(sample))
        )
        found = {r["image_id"]: r for r in table.to_pylist()}
        by_run.append({i: {**found[i], "image_id": f"{run.label} · {i}"} for i in sample})
    cells = [rows[i] for i in sample for rows in by_run]
    layout = GridLayout(columns=len(runs), cell_size=192, line_height=FONT_SIZE + 3)
    render_grid(cells, layout, ImageFont.load_default(size=FONT_SIZE)).save(path, format="PNG")


def write_histograms(runs: list[Run], ids: list[str], path: Path) -> None:
    """Regions per image, region scores and descriptions per image of each run, overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    panels = (
        ("regions per image", lambda row: [len(row.regions)], True),
        ("region score", lambda row: [score for _, _, score in row.regions], False),
        ("descriptions per image", lambda row: [len(row.descriptions)], True),
    )
    for ax, (name, values_of, integer) in zip(axes, panels):
        series = [np.asarray([v for i in ids for v in values_of(run.rows[i])], dtype=float) for run in runs]
        every = np.concatenate(series)
        if integer and every.size:
            bins = np.arange(every.min(), every.max() + 2) - 0.5
        else:
            bins = np.linspace(0, 1, 21)
        for run, values in zip(runs, series):
            ax.hist(
                values,
                bins=bins,
                alpha=0.55,
                label=f"{run.label} (mean {values.mean():.2f})" if values.size else run.label,
            )
        ax.set_xlabel(name)
        ax.set_ylabel("count")
        ax.legend(fontsize=8)
    fig.suptitle(f"{len(ids)} shared image_ids")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _distribution(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "mean": None, "p10": None, "p50": None, "p90": None}
    p10, p50, p90 = np.percentile(values, [10, 50, 90]).tolist()
    return {"n": len(values), "mean": _mean(values), "p10": round(p10, 4), "p50": round(p50, 4), "p90": round(p90, 4)}


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 4) if values else None


def _ratio(a: int, b: int) -> float | None:
    return round(a / b, 4) if b else None


def _label(info: dict[str, Any] | None) -> str:
    if not info:
        return "-"
    return f"{info.get('name')} ({info.get('model') or 'default'})" + (" simulated" if info.get("simulated") else "")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)
