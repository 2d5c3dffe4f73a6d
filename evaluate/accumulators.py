"""One accumulator per evaluation task: each keeps what its task needs from the batches, then gives its result.

The split pass (`grainclip.evaluate.runner.SplitPass`) runs the model once per batch and hands the same
`BatchOutputs` to every accumulator, so a task never re-runs the model and never sees state it does not own.
Each accumulator has `add(batch, outputs)` and `result()`; `needs_regions` says whether the pass must ask
the model for its regions. What they keep is per row (class scores, embeddings, IoUs), never pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import torch

from grainclip.boxes import box_iou
from grainclip.config.evaluate import ScoringConfig
from grainclip.evaluate import class_text, metrics, scoring
from grainclip.evaluate.geometry import to_original_frame
from grainclip.model_api import LoadedModel, RegionOutput


@dataclass
class BatchRegions:
    """A GRAIN model's regions for one batch, prepared once for every task that reads them."""

    output: RegionOutput  # as the model returned it (region class scores apply their own threshold to it)
    embeddings: torch.Tensor  # (B, Q, D) normalised, float
    valid: torch.Tensor  # (B, Q) regions that take part in a match (scoring.valid_regions)
    boxes: np.ndarray  # (B, Q, 4) normalised xyxy in the model's input frame
    windows: list[np.ndarray]  # per image: where the input frame lies in the original image

    def original_boxes(self, row: int, queries: Any = slice(None)) -> np.ndarray:
        """Boxes of image `row` (all queries, or the chosen ones) in the original image's frame, like the truth."""
        return to_original_frame(self.boxes[row][queries], self.windows[row])


@dataclass
class BatchOutputs:
    """What the model said about one batch."""

    index: np.ndarray  # (B,) split row of each image
    image: torch.Tensor  # (B, D) normalised global image embeddings, float
    regions: BatchRegions | None  # None unless some accumulator needs regions and the model has them


class Accumulator(Protocol):
    needs_regions: bool

    def add(self, batch: dict[str, Any], outputs: BatchOutputs) -> None: ...

    def result(self) -> Any: ...


@dataclass
class ClassText:
    """The text side of zero-shot classification for one (model, split), encoded once before the images."""

    modes: list[str]
    unavailable: list[dict[str, str]]
    classifiers: dict[str, torch.Tensor]  # score name -> (C, D)
    descriptor_embeddings: torch.Tensor | None = None  # (M, D) bare descriptors, for region scores
    descriptor_class: torch.Tensor | None = None  # (M,) class of each descriptor
    descriptor_texts: list[str] = field(default_factory=list)


class ClassificationAccumulator:
    """Zero-shot classification: per row its label and one score per class for every score the modes mix."""

    def __init__(self, text: ClassText, classnames: list[str], size: int, config: ScoringConfig) -> None:
        self.text, self.classnames, self.config = text, classnames, config
        self.needs_regions = "grain" in text.modes
        self.seen = np.zeros(size, dtype=bool)
        self.labels = np.full(size, -1, dtype=np.int64)
        self.image_ids = np.full(size, None, dtype=object)
        names = list(text.classifiers) + (["region"] if self.needs_regions else [])
        self.scores = {name: np.zeros((size, len(classnames)), dtype=np.float32) for name in names}

    def add(self, batch: dict[str, Any], outputs: BatchOutputs) -> None:
        index = outputs.index
        self.seen[index] = True
        self.labels[index] = batch["label"]
        self.image_ids[index] = batch["image_id"]
        for name, classifier in self.text.classifiers.items():
            self.scores[name][index] = (outputs.image @ classifier.T).cpu().numpy()
        if "region" in self.scores:
            best = scoring.region_descriptor_similarity(
                outputs.regions.output, self.text.descriptor_embeddings, self.config.objectness_threshold
            )
            region = scoring.region_scores(best, self.text.descriptor_class, len(self.classnames))
            self.scores["region"][index] = region.cpu().numpy()

    def mode_scores(self, mode: str, alpha: float | None = None) -> np.ndarray:
        """(N, C) scores of one mode over the whole split (grain's standardisation pools over all rows)."""
        if mode != "grain":
            return self.scores[mode]
        config = self.config
        alpha = config.alpha if alpha is None else alpha
        return scoring.grain_scores(self.scores[config.grain_global], self.scores["region"], alpha, config.standardize)

    def predictions(self) -> np.ndarray:
        """What the report's image grid calls the prediction: the argmax of the most informed mode that ran."""
        shown = next((mode for mode in ("grain", "global+descriptors", "global") if mode in self.text.modes), None)
        return self.mode_scores(shown).argmax(axis=1) if shown else np.zeros(len(self.labels), dtype=np.int64)

    def top_classes(self) -> pa.Table:
        """Per mode and evaluated image: image_id, true class, the 5 best classes and their scores, best first.

        The rows of predictions.parquet; ties keep class order, as the scores alone cannot break them.
        """
        rows = np.flatnonzero(self.seen)
        names = np.asarray(self.classnames, dtype=object)
        k = min(5, len(names))
        tables = []
        for mode in self.text.modes:
            scores = self.mode_scores(mode)[rows]
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            columns = {
                "mode": pa.array([mode] * len(rows), pa.string()),
                "image_id": pa.array([str(i) for i in self.image_ids[rows]], pa.string()),
                "label": pa.array(names[self.labels[rows]].tolist(), pa.string()),
                "top5_classes": pa.array(names[order].tolist(), pa.list_(pa.string())),
                "top5_scores": pa.array(np.take_along_axis(scores, order, 1).tolist(), pa.list_(pa.float32())),
            }
            tables.append(pa.table(columns))
        return pa.concat_tables(tables) if tables else pa.table({})

    def result(self) -> dict[str, Any]:
        rows, labels = self.seen, self.labels[self.seen]
        records = [
            {"mode": mode, **metrics.classification_metrics(self.mode_scores(mode)[rows], labels)}
            for mode in self.text.modes
        ]
        sweep = [
            {"alpha": alpha, "top1": metrics.topk_accuracy(self.mode_scores("grain", alpha)[rows], labels, 1)}
            for alpha in (self.config.alpha_sweep if "grain" in self.text.modes else [])
        ]
        return {"classification": records, "alpha_sweep": sweep}


class RetrievalAccumulator:
    """Image-text retrieval: per row its global embedding and caption; captions are encoded once at the end."""

    needs_regions = False

    def __init__(self, loaded: LoadedModel, size: int, device: torch.device) -> None:
        self.loaded, self.device = loaded, device
        self.seen = np.zeros(size, dtype=bool)
        self.captions: list[str | None] = [None] * size
        self.embeddings: np.ndarray | None = None  # (N, D), allocated once the width is known

    def add(self, batch: dict[str, Any], outputs: BatchOutputs) -> None:
        if self.embeddings is None:
            self.embeddings = np.zeros((len(self.captions), outputs.image.shape[1]), dtype=np.float32)
        self.embeddings[outputs.index] = outputs.image.cpu().numpy()
        self.seen[outputs.index] = True
        for i, caption in zip(outputs.index, batch["caption"], strict=True):
            self.captions[i] = caption

    def result(self) -> dict[str, Any]:
        rows = [i for i in np.flatnonzero(self.seen) if self.captions[i]]
        if not rows:
            return {"retrieval": {"n_images": 0, "note": "no images with a caption"}}
        distinct = sorted({self.captions[i] for i in rows})
        position = {caption: k for k, caption in enumerate(distinct)}
        texts = class_text.encode_texts(self.loaded, distinct, self.device).cpu().numpy()
        truth = np.array([position[self.captions[i]] for i in rows])
        result = metrics.retrieval_metrics(self.embeddings[rows], texts, truth)
        result["n_without_caption"] = int(self.seen.sum() - len(rows))
        return {"retrieval": result}


class GroundingAccumulator:
    """Phrase grounding: per image and distinct description, the IoU of the best-matching region with the truth.

    A description with several truth boxes counts as found if the chosen box overlaps any of them (the
    any-box protocol of phrase grounding, e.g. Flickr30k Entities). Descriptions are encoded per batch, so
    memory stays flat however many distinct descriptions the annotations hold.
    """

    needs_regions = True

    def __init__(self, loaded: LoadedModel, device: torch.device) -> None:
        self.loaded, self.device = loaded, device
        self.ious: list[float] = []

    def add(self, batch: dict[str, Any], outputs: BatchOutputs) -> None:
        truth = batch["regions"]
        distinct = sorted({text for regions in truth for text, _ in regions})
        if not distinct:
            return
        encoded = dict(zip(distinct, class_text.encode_texts(self.loaded, distinct, self.device), strict=True))
        regions = outputs.regions
        for row, image_regions in enumerate(truth):
            by_text: dict[str, list] = {}
            for text, box in image_regions:
                by_text.setdefault(text, []).append(box)
            if not by_text:
                continue
            texts = list(by_text)
            queries = torch.stack([encoded[t] for t in texts])  # (T, D)
            valid = regions.valid[row][None, :].to(queries.device)
            sims = (queries @ regions.embeddings[row].T).masked_fill(~valid, float("-inf"))
            predicted = regions.original_boxes(row, sims.argmax(dim=1).cpu().numpy())
            for t, text in enumerate(texts):
                self.ious.append(float(box_iou(predicted[t], np.asarray(by_text[text], dtype=np.float32)).max()))

    def result(self) -> dict[str, Any]:
        return {"grounding": metrics.grounding_metrics(np.asarray(self.ious))}


class RegionGridAccumulator:
    """The report's image grid: the first `size` rows' images, their kept regions and best-matching descriptors.

    Label and prediction come from the classification accumulator once the pass is over.
    """

    needs_regions = True

    def __init__(self, classification: ClassificationAccumulator, size: int) -> None:
        self.classification, self.size = classification, size
        self.items: list[dict[str, Any]] = []

    def add(self, batch: dict[str, Any], outputs: BatchOutputs) -> None:
        regions, text = outputs.regions, self.classification.text
        for row, i in enumerate(outputs.index):
            if i >= self.size:
                continue
            valid = regions.valid[row]
            best = (regions.embeddings[row][valid] @ text.descriptor_embeddings.T).max(dim=1)  # (valid regions,)
            self.items.append(
                {
                    "index": int(i),
                    "image": batch["image"][row],
                    "boxes": regions.original_boxes(row)[valid.cpu().numpy()].tolist(),
                    "descriptors": [text.descriptor_texts[m] for m in best.indices.cpu().tolist()],
                    "similarities": best.values.cpu().tolist(),
                }
            )

    def result(self) -> list[dict[str, Any]]:
        if self.items:
            classnames, labels = self.classification.classnames, self.classification.labels
            predictions = self.classification.predictions()
            for item in self.items:
                item["label"] = classnames[labels[item["index"]]]
                item["prediction"] = classnames[predictions[item["index"]]]
        return self.items
