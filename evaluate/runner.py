"""One streaming pass of a model over a split gathers everything every task needs; then the metrics.

Per batch the model embeds the images once (and its regions, for GRAIN models) and the pass hands those
outputs to one accumulator per task (`grainclip.evaluate.accumulators`): class scores, image embeddings for
retrieval and matched boxes for grounding are kept per row, so memory grows with rows x classes, never with
pixels. Class text is encoded once per model and text set (class_text's cache).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from grainclip import storage
from grainclip.config.evaluate import MODES, EvaluateConfig, ScoringConfig
from grainclip.devices import autocast, loader_workers, resolve_device
from grainclip.evaluate import class_text, scoring
from grainclip.evaluate.accumulators import (
    Accumulator,
    BatchOutputs,
    BatchRegions,
    ClassificationAccumulator,
    ClassText,
    GroundingAccumulator,
    RegionGridAccumulator,
    RetrievalAccumulator,
)
from grainclip.evaluate.datasets import EvalSplit, collate, load_split
from grainclip.evaluate.geometry import input_window
from grainclip.evaluate.models import has_regions, load_model
from grainclip.images import AlphaMode
from grainclip.model_api import LoadedModel

log = logging.getLogger(__name__)

MAX_ERROR_EXAMPLES = 10


@dataclass
class PassSettings:
    """How to run one pass; the knobs of EvaluateConfig that are not about which models or data."""

    modes: Sequence[str] = MODES
    templates: Sequence[str] = class_text.DEFAULT_TEMPLATES
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    batch_size: int = 64
    num_workers: int | None = None  # None: grainclip.devices.loader_workers()
    precision: str = "auto"
    grid_images: int = 0
    progress: bool = False
    image_alpha: AlphaMode = "white"


def prepare_class_text(
    loaded: LoadedModel, split: EvalSplit, settings: PassSettings, region_head: bool, device: torch.device
) -> ClassText:
    """Decide which modes can run here (and say why not), and encode the class text they need."""
    modes, unavailable = [], []
    for mode in settings.modes:
        if mode != "global" and split.descriptors is None:
            unavailable.append({"mode": mode, "reason": "the dataset has no descriptor file"})
        elif mode == "grain" and not region_head:
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
    if region_head and split.descriptors is not None:
        text.descriptor_texts = [d for name in split.classnames for d in split.descriptors[name]]
        owners = [c for c, name in enumerate(split.classnames) for _ in split.descriptors[name]]
        text.descriptor_embeddings = class_text.TEXT_CACHE.encode(loaded, text.descriptor_texts, device)
        text.descriptor_class = torch.tensor(owners, device=device)
    return text


class SplitPass:
    """Streams one split through one model and hands each batch's outputs to one accumulator per task."""

    def __init__(
        self, loaded: LoadedModel, split: EvalSplit, tasks: Sequence[str], settings: PassSettings, device: torch.device
    ) -> None:
        self.loaded, self.split, self.tasks, self.settings, self.device = loaded, split, list(tasks), settings, device
        self.region_head = has_regions(loaded)
        self.done = np.zeros(split.size, dtype=bool)
        self.errors: list[tuple[int, str | None, str]] = []
        self.unavailable: list[dict[str, str]] = []
        self.classification: ClassificationAccumulator | None = None
        self.grid: RegionGridAccumulator | None = None
        self.reported: list[Accumulator] = []  # the tasks whose results go into results.json, in its order
        if "classification" in tasks:
            text = prepare_class_text(loaded, split, settings, self.region_head, device)
            self.unavailable += text.unavailable
            self.classification = ClassificationAccumulator(text, split.classnames, split.size, settings.scoring)
            self.reported.append(self.classification)
            if self.region_head and text.descriptor_embeddings is not None and settings.grid_images:
                self.grid = RegionGridAccumulator(self.classification, settings.grid_images)
        if "retrieval" in tasks:
            self.reported.append(RetrievalAccumulator(loaded, split.size, device))
        if "grounding" in tasks:
            if self.region_head:
                self.reported.append(GroundingAccumulator(loaded, device))
            else:
                self.unavailable.append({"task": "grounding", "reason": f"{loaded.kind} model predicts no regions"})
        self.accumulators: list[Accumulator] = self.reported + ([self.grid] if self.grid is not None else [])
        self.wants_regions = self.region_head and any(acc.needs_regions for acc in self.accumulators)

    # -------------------------------------------------------------------------------------------- the pass
    def run(self) -> float:
        """Stream the split through the model; returns images per second."""
        from torch.utils.data import DataLoader
        from tqdm import (
            tqdm,
        )  # not tqdm.auto: its asyncio variant calls iter() in __init__, starting a second set of workers

        keep_images = self.grid.size if self.grid is not None else 0
        dataset = self.split.dataset(
            self.loaded.preprocess, self.tasks, keep_images=keep_images, alpha=self.settings.image_alpha
        )
        workers = self.settings.num_workers
        if workers is None:
            workers = loader_workers(image_size=self.loaded.image_size)
        loader = DataLoader(
            dataset,
            batch_size=self.settings.batch_size,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            prefetch_factor=4 if workers else None,
        )
        batches = math.ceil(self.split.size / self.settings.batch_size)
        start = time.perf_counter()
        with torch.no_grad(), autocast(self.device, self.settings.precision):
            for batch in tqdm(
                loader,
                total=batches,
                desc=f"{self.loaded.name} on {self.split.name}",
                disable=not self.settings.progress,
                leave=False,
            ):
                self.errors += batch["errors"]
                if batch["pixels"] is not None:
                    outputs = self._outputs(batch)
                    self.done[outputs.index] = True
                    for accumulator in self.accumulators:
                        accumulator.add(batch, outputs)
        elapsed = time.perf_counter() - start
        return float(self.done.sum() / elapsed) if elapsed > 0 else float("nan")

    def _outputs(self, batch: dict[str, Any]) -> BatchOutputs:
        """One model pass over the batch: the global embeddings, and the regions when a task reads them."""
        pixels = batch["pixels"].to(self.device, non_blocking=True)
        model = self.loaded.model
        regions = model.encode_regions(pixels, normalize=True) if self.wants_regions else None
        image = regions.image if regions is not None and regions.image is not None else model.encode_image(pixels)
        prepared = None
        if regions is not None:
            prepared = BatchRegions(
                output=regions,
                embeddings=F.normalize(regions.embeddings.float(), dim=-1),
                valid=scoring.valid_regions(regions, self.settings.scoring.objectness_threshold),
                boxes=regions.boxes.float().cpu().numpy(),
                windows=[input_window(self.loaded.preprocess, w, h) for w, h in batch["size"]],
            )
        return BatchOutputs(batch["index"].numpy(), F.normalize(image.float(), dim=-1), prepared)

    # ------------------------------------------------------------------------------------------ the metrics
    def results(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "n_rows": int(self.split.size),
            "n_evaluated": int(self.done.sum()),
            "unavailable": self.unavailable,
        }
        if self.split.descriptor_classes_ignored:
            out["descriptor_classes_ignored"] = self.split.descriptor_classes_ignored
        out["skipped_images"] = {
            "count": len(self.errors),
            "examples": [
                {"index": i, "image_id": image_id, "reason": reason}
                for i, image_id, reason in self.errors[:MAX_ERROR_EXAMPLES]
            ],
        }
        for accumulator in self.reported:
            out.update(accumulator.result())
        return out


def evaluate_split(
    loaded: LoadedModel,
    split: EvalSplit,
    tasks: Sequence[str],
    settings: PassSettings,
    device: torch.device,
    keep_predictions: Callable[[pa.Table], int] | None = None,
) -> tuple[dict[str, Any], list[dict]]:
    """All requested tasks of one model on one split: (results dict, grid items for the report).

    `keep_predictions` receives the per-image top-5 classes of every mode (predictions.parquet's rows) and
    returns how many it kept, recorded as the run's `n_predictions`.
    """
    evaluation = SplitPass(loaded, split, tasks, settings, device)
    images_per_second = evaluation.run()
    results = evaluation.results()
    if keep_predictions is not None and evaluation.classification is not None:
        results["n_predictions"] = keep_predictions(evaluation.classification.top_classes())
    results["images_per_second"] = images_per_second
    if evaluation.errors:
        log.warning(
            "%s: %d image(s) could not be decoded and were skipped (first: %s)",
            split.name,
            len(evaluation.errors),
            evaluation.errors[0][2],
        )
    return results, evaluation.grid.result() if evaluation.grid is not None else []


def zero_shot_accuracy(
    loaded: LoadedModel,
    split: EvalSplit,
    modes: Sequence[str] = ("global",),
    *,
    templates: Sequence[str] | None = None,
    scoring_config: ScoringConfig | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    image_alpha: AlphaMode = "white",
) -> dict[str, float]:
    """Light hook for periodic evaluation during training: {'<mode>/top1': ..., '<mode>/top5': ..., ...}.

    Runs on the model's own device in eval mode and puts the model back in the mode it was in. Modes the
    model or split cannot run are left out. Build `split` once with `grainclip.evaluate.load_split`.
    `image_alpha` should be what the model trains on (the train config's data.image_alpha).
    """
    model = loaded.model
    device = next(model.parameters()).device
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        settings = PassSettings(
            modes=modes,
            templates=templates or class_text.DEFAULT_TEMPLATES,
            scoring=scoring_config or ScoringConfig(),
            batch_size=batch_size,
            num_workers=num_workers,
            precision="fp32",
            image_alpha=image_alpha,
        )
        results, _ = evaluate_split(loaded, split, ["classification"], settings, device)
    finally:
        model.train(was_training)
    return {
        f"{r['mode']}/{key}": value
        for r in results["classification"]
        for key, value in r.items()
        if key not in ("mode", "n_images")
    }


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    """Every model on every dataset; writes results.json, results.md and plots under cfg.out; returns the results."""
    from grainclip.evaluate import report

    with storage.configured(cfg.storage):
        splits = [(spec, load_split(spec)) for spec in cfg.datasets]  # all data checked before any model loads
        device = resolve_device(cfg.device)
        settings = PassSettings(
            modes=cfg.modes,
            templates=class_text.load_templates(cfg.templates),
            scoring=cfg.scoring,
            batch_size=cfg.batch_size,
            num_workers=cfg.num_workers,
            precision=cfg.precision,
            grid_images=cfg.grid_images,
            progress=cfg.progress,
            image_alpha=cfg.image_alpha,
        )
        results: dict[str, Any] = {
            "config": cfg.model_dump(mode="json"),
            "device": str(device),
            "models": [],
            "runs": [],
        }
        grids: dict[tuple[str, str], list[dict]] = {}
        predictions = report.PredictionsFile(cfg.out)
        for model_spec in cfg.models:
            loaded = load_model(model_spec, device)
            results["models"].append(
                {
                    "label": model_spec.label,
                    "name": loaded.name,
                    "kind": loaded.kind,
                    "region_modes": has_regions(loaded),
                }
            )
            for spec, split in splits:
                log.info("evaluating %s on %s (%d images)", model_spec.label, spec.name, split.size)
                keep = functools.partial(predictions.write, model_spec.label, spec.name)
                run, grid = evaluate_split(loaded, split, spec.tasks, settings, device, keep)
                results["runs"].append(
                    {"model": model_spec.label, "dataset": spec.name, "tasks": list(spec.tasks), **run}
                )
                if grid:
                    grids[(model_spec.label, spec.name)] = grid
            del loaded
        written = predictions.close()
        results["predictions"] = written.name if written else None
        report.write_report(results, grids, cfg.out)
        return results
