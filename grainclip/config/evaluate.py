"""Config models for evaluate runs (owned by the evaluate domain; plain data, no heavy imports).

An evaluate run crosses a list of models with a list of datasets. Each dataset names the tasks it is used
for; each task needs something of the data (class labels, captions, or annotated regions) and the run says
clearly when it is missing. Example::

    out: runs/eval
    models:
      - {label: grain, type: checkpoint, path: runs/train/grain/export}
      - {label: clip, type: open_clip, name: ViT-B-16, pretrained: /weights/clip.pt}
    datasets:
      - name: novel
        source: {kind: partsworld, path: data/partsworld, split: test_novel}
        tasks: [classification, grounding]
      - name: pets
        source: {kind: image_folder, path: /data/pets/test}
        classnames: /data/pets/classes.txt
        descriptors: /data/pets/descriptors.json

A dataset's `source` is the same unit the pipeline reads (grainclip.sources, docs/sources.md); the kinds the
evaluator can stream are those with Parquet shards (parquet, partsworld) or class folders (image_folder).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from grainclip.config.base import ConfigModel
from grainclip.config.storage import StorageConfig
from grainclip.images import AlphaMode
from grainclip.sources import SourceField

log = logging.getLogger(__name__)

Mode = Literal["global", "global+descriptors", "grain"]
Task = Literal["classification", "retrieval", "grounding"]
MODES: tuple[Mode, ...] = ("global", "global+descriptors", "grain")

#: The one data option for transparent images, read by the trainer (data.image_alpha) and the evaluator.
ImageAlpha = Annotated[
    AlphaMode,
    Field(
        description="Transparent images: `white` composites them on white; `drop` discards the alpha channel as "
        "PIL's convert('RGB') does (open_clip's loaders, CLIP_benchmark). Evaluate with what the model trained on."
    ),
]


class OpenClipModel(ConfigModel):
    """A plain open_clip model: a built-in config name, a JSON config file or a local-dir folder."""

    type: Literal["open_clip"]
    label: str = Field(min_length=1, description="Name of this model in the report.")
    name: str = Field(
        min_length=1,
        description="open_clip config name (ViT-B-16), a path to a JSON config, or a folder holding "
        "open_clip_config.json + weights (open_clip's local-dir layout).",
    )
    pretrained: str | None = Field(None, description="open_clip pretrained tag or weights file; None = random.")


class CheckpointModel(ConfigModel):
    """A model exported by `grainclip train` (GRAIN, or its `clip` baseline), loaded by grainclip.train."""

    type: Literal["checkpoint"]
    label: str = Field(min_length=1, description="Name of this model in the report.")
    path: Path = Field(description="Model folder exported by `grainclip train`.")


ModelSpec = Annotated[OpenClipModel | CheckpointModel, Field(discriminator="type")]


#: The flat spelling evaluate configs used before datasets had a `source` ({type: imagefolder, root: ...}).
_OLD_KINDS = {"imagefolder": "image_folder", "parquet": "parquet", "partsworld": "partsworld"}


class EvalDataset(ConfigModel):
    """One evaluation split: a source and what it is evaluated for."""

    name: str = Field(min_length=1, description="Name of this split in the report.")
    source: SourceField = Field(..., description="Where the images are: a source `kind` and its fields.")
    tasks: list[Task] = Field(
        default_factory=lambda: ["classification"],
        min_length=1,
        description="What the split is evaluated for; each task needs labels, captions or regions in the data.",
    )
    classnames: Path | None = Field(
        None,
        description="Text file, one class per line in label order: `key<TAB>display name` or `key` (the class "
        "folder, or the label column's value). Default: what the source defines (PartsWorld), else sorted keys.",
    )
    descriptors: Path | None = Field(
        None,
        description="Menon & Vondrick JSON {class: [descriptor, ...]} covering every class (extra classes ignored).",
    )
    label_column: str = Field("class_name", description="Column holding each image's class name (Parquet data).")
    caption_column: Literal["caption", "llm_caption"] = Field(
        "caption", description="Text that retrieval matches each image with: the alt-text or the describer's caption."
    )
    limit: int | None = Field(None, gt=0, description="Evaluate only the first N images (smoke runs).")

    @model_validator(mode="before")
    @classmethod
    def _old_flat_spelling(cls, data: Any) -> Any:
        """Map `{type: partsworld, root: ..., split: ...}` onto `source:`, saying so once per dataset."""
        if not isinstance(data, dict) or "type" not in data or "source" in data:
            return data
        data = dict(data)
        kind = data.pop("type")
        source: dict[str, Any] = {"kind": _OLD_KINDS.get(kind, kind)}
        for key in ("root", "path"):
            if key in data:
                source["path"] = data.pop(key)
        if kind == "partsworld":
            source["split"] = data.pop("split", "test_novel")  # the old default split
        spelled = ", ".join(f"{key}: {value}" for key, value in source.items())
        log.warning(
            "dataset %r: `type: %s` with `root`/`path` is the old spelling; write `source: {%s}` (docs/sources.md)",
            data.get("name"),
            kind,
            spelled,
        )
        return {**data, "source": source}


class ScoringConfig(ConfigModel):
    """How class scores are formed. See grainclip.evaluate.scoring for the reasoning behind the defaults."""

    alpha: float = Field(0.5, ge=0.0, le=1.0, description="grain = alpha*global + (1-alpha)*region.")
    alpha_sweep: list[Annotated[float, Field(ge=0.0, le=1.0)]] = Field(
        default_factory=lambda: [round(i / 10, 1) for i in range(11)],
        description="Alphas reported as a curve (chosen on the evaluation set itself: optimistic).",
    )
    grain_global: Literal["global", "global+descriptors"] = Field(
        "global+descriptors", description="Which global score the grain mode mixes with the region score."
    )
    standardize: Literal["split", "none"] = Field(
        "split",
        description="`split`: centre each image's scores over classes and divide by that spread pooled over "
        "the split, for global and region scores separately, before mixing. `none`: the paper's plain formula.",
    )
    objectness_threshold: float = Field(
        0.5, ge=0.0, le=1.0, description="Regions below it are ignored (models with an objectness head)."
    )


class EvaluateConfig(ConfigModel):
    """One evaluation: every model on every dataset, results written under `out`."""

    out: Path = Field(Path("runs/evaluate"), description="Folder for results.json, results.md and plots.")
    models: list[ModelSpec] = Field(
        min_length=1, description="The models, each `type: open_clip` or `type: checkpoint`."
    )
    datasets: list[EvalDataset] = Field(min_length=1, description="The splits; every model runs on every split.")
    modes: list[Mode] = Field(
        default_factory=lambda: list(MODES),
        min_length=1,
        description="Classification modes: global (CLIP), global+descriptors (Menon & Vondrick), grain (regions).",
    )
    templates: Path | None = Field(
        None, description="Text file, one prompt template per line with `{}` for the class name. Default set if None."
    )
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)
    batch_size: int = Field(64, gt=0, description="Images per model forward.")
    num_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader processes decoding and preprocessing images; None: what fits this machine's cores "
        "and the model's input size (grainclip.devices.loader_workers, the trainer's default too).",
    )
    device: str = Field("auto", description="auto (cuda if available), cpu, cuda, cuda:1, ...")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on CUDA, fp32 on CPU.")
    grid_images: int = Field(8, ge=0, description="Images drawn with their predicted regions, per region model.")
    image_alpha: ImageAlpha = "white"
    progress: bool = Field(True, description="Show a progress bar per model and split.")
    storage: StorageConfig = Field(
        default_factory=StorageConfig,
        description="Object storage (s3://): the environment variables holding its endpoint and credentials (names "
        "only); unset: the standard AWS variables.",
    )

    @field_validator("modes")
    @classmethod
    def _unique_modes(cls, modes: list[Mode]) -> list[Mode]:
        return list(dict.fromkeys(modes))

    @model_validator(mode="after")
    def _unique_names(self) -> EvaluateConfig:
        for what, names in (
            ("model label", [m.label for m in self.models]),
            ("dataset name", [d.name for d in self.datasets]),
        ):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"each {what} must be unique; repeated: {duplicates}")
        return self
