"""One streaming pass of a model over a split gathers everything every task needs; then the metrics.

Per batch the model embeds the images once (and its regions, for GRAIN models); class scores, image
embeddings for retrieval and matched boxes for grounding are kept per row, so memory grows with
rows x classes, never with pixels. Class text is encoded once per model and text set (class_text's cache).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from grainclip.boxes import box_iou
from grainclip.config.evaluate import MODES, EvaluateConfig, ScoringConfig
from grainclip.evaluate import class_text, metrics, scoring
from grainclip.evaluate.datasets import EvalSplit, collate, load_split
from grainclip.evaluate.geometry import input_window, to_original_frame
from grainclip.evaluate.models import has_regions, load_model, resolve_device
from grainclip.modeling import LoadedModel

log = logging.getLogger(__name__)

MAX_ERROR_EXAMPLES = 10


@dataclass
class PassSettings:
    """How to run one pass; the knobs of EvaluateConfig that are not about which models or data."""

    modes: Sequence[str] = MODES
    templates: Sequence[str] = class_text.DEFAULT_TEMPLATES
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    batch_size: int = 64
    num_workers: int = 2
    precision: str = "auto"
    grid_images: int = 0
    progress: bool = False


@dataclass
class ClassText:
    """The text side of zero-shot classification for one (model, split), encoded once before the images."""

    modes: list[str]
    unavailable: list[dict[str, str]]
    classifiers: dict[str, torch.Tensor]  # score name -> (C, D)
    descriptor_embeddings: torch.Tensor | None = None  # (M, D) bare descriptors, for region scores
    descriptor_class: torch.Tensor | None = None  # (M,) class of each descriptor
    descriptor_texts: list[str] = field(default_factory=list)


def prepare_class_text(loaded: LoadedModel, split: EvalSplit, settings: PassSettings, regions: bool, device: torch.device) -> ClassText:
    """Decide which modes can run here (and say why not), and encode the class text they need."""
    modes, unavailable = [], []
    for mode in settings.modes:
        if mode != "global" and split.descriptors is None:
            unavailable.append({"mode": mode, "reason": "the dataset has no descriptor file"})
        elif mode == "grain" and not regions:
            unavailable.append({"mode": mode, "reason": f"{loaded.kind} model has no region head (plain CLIP)"})
        else:
            modes.append(mode)
    text = ClassText(modes, unavailable, {})
    needed = set(modes) - {"grain"}
    if "grain" in modes:
        needed.add(settings.scoring.grain_global)
    if "global" in needed:
        text.classifiers["global"] = class_text.class_embeddings(loaded, split.classnames, settings.templates, device)
    if "global+descriptors" in needed:
        text.classifiers["global+descriptors"] = class_text.class_embeddings(
            loaded, split.classnames, settings.templates, device, split.descriptors
        )
    if regions and split.descriptors is not None:
        text.descriptor_texts = [d for name in split.classnames for d in split.descriptors[name]]
        owners = [c for c, name in enumerate(split.classnames) for _ in split.descriptors[name]]
        text.descriptor_embeddings = class_text.TEXT_CACHE.encode(loaded, text.descriptor_texts, device)
        text.descriptor_class = torch.tensor(owners, device=device)
    return text


class SplitPass:
    """Accumulates one model's outputs over one split, batch by batch, then turns them into metrics."""

    def __init__(self, loaded: LoadedModel, split: EvalSplit, tasks: Sequence[str], settings: PassSettings, device: torch.device) -> None:
        self.loaded, self.split, self.tasks, self.settings, self.device = loaded, split, list(tasks), settings, device
        self.regions = has_regions(loaded)
        n = split.size
        self.done = np.zeros(n, dtype=bool)
        self.errors: list[tuple[int, str | None, str]] = []
        self.unavailable: list[dict[str, str]] = []
        self.text: ClassText | None = None
        self.scores: dict[str, np.ndarray] = {}
        if "classification" in tasks:
            self.text = prepare_class_text(loaded, split, settings, self.regions, device)
            self.unavailable += self.text.unavailable
            self.labels = np.full(n, -1, dtype=np.int64)
            names = list(self.text.classifiers) + (["region"] if "grain" in self.text.modes else [])
            self.scores = {name: np.zeros((n, len(split.classnames)), dtype=np.float32) for name in names}
        if "retrieval" in tasks:
            self.captions: list[str | None] = [None] * n
            self.image_embeddings: np.ndarray | None = None
        if "grounding" in tasks:
            if not self.regions:
                self.unavailable.append({"task": "grounding", "reason": f"{loaded.kind} model predicts no regions"})
            self.ious: list[float] = []
        self.grid: list[dict[str, Any]] = []

    @property
    def wants_regions(self) -> bool:
        grain = self.text is not None and "grain" in self.text.modes
        return self.regions and (grain or "grounding" in self.tasks or self.grid_size > 0)

    @property
    def grid_size(self) -> int:
        has_descriptors = self.text is not None and self.text.descriptor_embeddings is not None
        return self.settings.grid_images if self.regions and has_descriptors else 0

    # -------------------------------------------------------------------------------------------- the pass
    def run(self) -> float:
        """Stream the split through the model; returns images per second."""
        from torch.utils.data import DataLoader
        from tqdm import tqdm  # not tqdm.auto: its asyncio variant calls iter() in __init__, starting a second set of workers

        dataset = self.split.dataset(self.loaded.preprocess, self.tasks, keep_images=self.grid_size)
        workers = self.settings.num_workers
        loader = DataLoader(
            dataset, batch_size=self.settings.batch_size, num_workers=workers, collate_fn=collate,
            pin_memory=self.device.type == "cuda", persistent_workers=False, prefetch_factor=4 if workers else None,
        )
        batches = math.ceil(self.split.size / self.settings.batch_size)
        start = time.perf_counter()
        with torch.no_grad(), self._autocast():
            for batch in tqdm(loader, total=batches, desc=f"{self.loaded.name} on {self.split.name}", disable=not self.settings.progress, leave=False):
                self.errors += batch["errors"]
                if batch["pixels"] is not None:
                    self._add(batch)
        elapsed = time.perf_counter() - start
        return float(self.done.sum() / elapsed) if elapsed > 0 else float("nan")

    def _autocast(self) -> contextlib.AbstractContextManager:
        bf16 = self.settings.precision == "bf16" or (self.settings.precision == "auto" and self.device.type == "cuda")
        return torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def _add(self, batch: dict[str, Any]) -> None:
        index = batch["index"].numpy()
        pixels = batch["pixels"].to(self.device, non_blocking=True)
        regions = self.loaded.model.encode_regions(pixels, normalize=True) if self.wants_regions else None
        image = regions.image if regions is not None and regions.image is not None else self.loaded.model.encode_image(pixels)
        image = F.normalize(image.float(), dim=-1)
        self.done[index] = True
        if self.text is not None:
            self.labels[index] = batch["label"]
            for name, classifier in self.text.classifiers.items():
                self.scores[name][index] = (image @ classifier.T).cpu().numpy()
            if "region" in self.scores:
                best = scoring.region_descriptor_similarity(regions, self.text.descriptor_embeddings, self.settings.scoring.objectness_threshold)
                self.scores["region"][index] = scoring.region_scores(best, self.text.descriptor_class, len(self.split.classnames)).cpu().numpy()
        if "retrieval" in self.tasks:
            if self.image_embeddings is None:
                self.image_embeddings = np.zeros((self.split.size, image.shape[1]), dtype=np.float32)
            self.image_embeddings[index] = image.cpu().numpy()
            for i, caption in zip(index, batch["caption"], strict=True):
                self.captions[i] = caption
        if regions is not None:
            valid = scoring.valid_regions(regions, self.settings.scoring.objectness_threshold)
            embeddings = F.normalize(regions.embeddings.float(), dim=-1)
            boxes = regions.boxes.float().cpu().numpy()
            windows = [input_window(self.loaded.preprocess, w, h) for w, h in batch["size"]]
            if "grounding" in self.tasks:
                self._ground(batch["regions"], embeddings, valid, boxes, windows)
            for row, i in enumerate(index):
                if i < self.grid_size:
                    self._keep_for_grid(i, batch["image"][row], embeddings[row], valid[row], to_original_frame(boxes[row], windows[row]))

    def _ground(self, truth: list, embeddings: torch.Tensor, valid: torch.Tensor, boxes: np.ndarray, windows: list[np.ndarray]) -> None:
        """Per image and distinct description: IoU of the region that matches the text best with its truth box.

        A description with several truth boxes counts as found if the chosen box overlaps any of them (the
        any-box protocol of phrase grounding, e.g. Flickr30k Entities). Descriptions are encoded per batch, so
        memory stays flat however many distinct descriptions the annotations hold.
        """
        distinct = sorted({text for regions in truth for text, _ in regions})
        if not distinct:
            return
        encoded = dict(zip(distinct, class_text.encode_texts(self.loaded, distinct, self.device), strict=True))
        for row, regions in enumerate(truth):
            by_text: dict[str, list] = {}
            for text, box in regions:
                by_text.setdefault(text, []).append(box)
            if not by_text:
                continue
            texts = list(by_text)
            queries = torch.stack([encoded[t] for t in texts])  # (T, D)
            sims = (queries @ embeddings[row].T).masked_fill(~valid[row][None, :].to(queries.device), float("-inf"))
            chosen = sims.argmax(dim=1).cpu().numpy()
            predicted = to_original_frame(boxes[row][chosen], windows[row])
            for t, text in enumerate(texts):
                self.ious.append(float(box_iou(predicted[t], np.asarray(by_text[text], dtype=np.float32)).max()))

    def _keep_for_grid(self, index: int, image: Any, embeddings: torch.Tensor, valid: torch.Tensor, boxes: np.ndarray) -> None:
        sims = embeddings[valid] @ self.text.descriptor_embeddings.T  # (valid regions, M)
        best = sims.max(dim=1)
        self.grid.append({
            "index": int(index),
            "image": image,
            "boxes": boxes[valid.cpu().numpy()].tolist(),
            "descriptors": [self.text.descriptor_texts[m] for m in best.indices.cpu().tolist()],
            "similarities": best.values.cpu().tolist(),
        })

    # ------------------------------------------------------------------------------------------ the metrics
    def results(self) -> dict[str, Any]:
        out: dict[str, Any] = {"n_rows": int(self.split.size), "n_evaluated": int(self.done.sum()), "unavailable": self.unavailable}
        out["skipped_images"] = {
            "count": len(self.errors),
            "examples": [{"index": i, "image_id": image_id, "reason": reason} for i, image_id, reason in self.errors[:MAX_ERROR_EXAMPLES]],
        }
        if self.text is not None:
            out["classification"], out["alpha_sweep"], predictions = self._classification()
            for item in self.grid:
                item["label"] = self.split.classnames[self.labels[item["index"]]]
                item["prediction"] = self.split.classnames[predictions[item["index"]]]
        if "retrieval" in self.tasks:
            out["retrieval"] = self._retrieval()
        if "grounding" in self.tasks and self.regions:
            out["grounding"] = metrics.grounding_metrics(np.asarray(self.ious))
        return out

    def mode_scores(self, mode: str, alpha: float | None = None) -> np.ndarray:
        if mode != "grain":
            return self.scores[mode]
        config = self.settings.scoring
        return scoring.grain_scores(self.scores[config.grain_global], self.scores["region"], config.alpha if alpha is None else alpha, config.standardize)

    def _classification(self) -> tuple[list[dict], list[dict], np.ndarray]:
        rows = self.done
        records = []
        for mode in self.text.modes:
            records.append({"mode": mode, **metrics.classification_metrics(self.mode_scores(mode)[rows], self.labels[rows])})
        sweep = []
        if "grain" in self.text.modes:
            for alpha in self.settings.scoring.alpha_sweep:
                sweep.append({"alpha": alpha, "top1": metrics.topk_accuracy(self.mode_scores("grain", alpha)[rows], self.labels[rows], 1)})
        # What the report's image grid calls the prediction: the most informed mode that ran.
        shown = next((mode for mode in ("grain", "global+descriptors", "global") if mode in self.text.modes), None)
        predictions = self.mode_scores(shown).argmax(axis=1) if shown else np.zeros(self.split.size, dtype=np.int64)
        return records, sweep, predictions

    def _retrieval(self) -> dict[str, float]:
        rows = [i for i in np.flatnonzero(self.done) if self.captions[i]]
        if not rows:
            return {"n_images": 0, "note": "no images with a caption"}
        distinct = sorted({self.captions[i] for i in rows})
        position = {caption: k for k, caption in enumerate(distinct)}
        texts = class_text.encode_texts(self.loaded, distinct, self.device).cpu().numpy()
        result = metrics.retrieval_metrics(self.image_embeddings[rows], texts, np.array([position[self.captions[i]] for i in rows]))
        result["n_without_caption"] = int(self.done.sum() - len(rows))
        return result


def evaluate_split(loaded: LoadedModel, split: EvalSplit, tasks: Sequence[str], settings: PassSettings, device: torch.device) -> tuple[dict[str, Any], list[dict]]:
    """All requested tasks of one model on one split: (results dict, grid items for the report)."""
    evaluation = SplitPass(loaded, split, tasks, settings, device)
    images_per_second = evaluation.run()
    results = evaluation.results()
    results["images_per_second"] = images_per_second
    if evaluation.errors:
        log.warning("%s: %d image(s) could not be decoded and were skipped (first: %s)", split.name, len(evaluation.errors), evaluation.errors[0][2])
    return results, evaluation.grid


def zero_shot_accuracy(
    loaded: LoadedModel,
    split: EvalSplit,
    modes: Sequence[str] = ("global",),
    *,
    templates: Sequence[str] | None = None,
    scoring_config: ScoringConfig | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
) -> dict[str, float]:
    """Light hook for periodic evaluation during training: {'<mode>/top1': ..., '<mode>/top5': ..., ...}.

    Runs on the model's own device in eval mode and puts the model back in the mode it was in. Modes the
    model or split cannot run are left out. Build `split` once with `grainclip.evaluate.load_split`.
    """
    model = loaded.model
    device = next(model.parameters()).device
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        settings = PassSettings(
            modes=modes, templates=templates or class_text.DEFAULT_TEMPLATES, scoring=scoring_config or ScoringConfig(),
            batch_size=batch_size, num_workers=num_workers, precision="fp32",
        )
        results, _ = evaluate_split(loaded, split, ["classification"], settings, device)
    finally:
        model.train(was_training)
    return {f"{r['mode']}/{key}": value for r in results["classification"] for key, value in r.items() if key not in ("mode", "n_images")}


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Every model on every dataset; writes results.json, results.md and plots under cfg.out; returns the results."""
    from grainclip.evaluate import report

    splits = [(spec, load_split(spec)) for spec in cfg.datasets]  # all data checked before any model loads
    device = resolve_device(cfg.device)
    settings = PassSettings(
        modes=cfg.modes, templates=class_text.load_templates(cfg.templates), scoring=cfg.scoring,
        batch_size=cfg.batch_size, num_workers=cfg.num_workers, precision=cfg.precision,
        grid_images=cfg.grid_images, progress=cfg.progress,
    )
    results: dict[str, Any] = {"config": cfg.model_dump(mode="json"), "device": str(device), "models": [], "runs": []}
    grids: dict[tuple[str, str], list[dict]] = {}
    for model_spec in cfg.models:
        loaded = load_model(model_spec, device)
        results["models"].append({"label": model_spec.label, "name": loaded.name, "kind": loaded.kind, "region_modes": has_regions(loaded)})
        for spec, split in splits:
            log.info("evaluating %s on %s (%d images)", model_spec.label, spec.name, split.size)
            run, grid = evaluate_split(loaded, split, spec.tasks, settings, device)
            results["runs"].append({"model": model_spec.label, "dataset": spec.name, "tasks": list(spec.tasks), **run})
            if grid:
                grids[(model_spec.label, spec.name)] = grid
        del loaded
    report.write_report(results, grids, cfg.out)
    return results
