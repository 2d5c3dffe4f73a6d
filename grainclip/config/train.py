"""Config models for train runs (owned by the train domain; plain data, no heavy imports).

Defaults are the paper's (GRAIN, arXiv 2412.04429: ViT-B/16 backbone, 6-layer decoder, d_model 512, 8 heads,
FFN 2048, 5 region queries + 1 global query, AdamW lr 1e-3, wd 0.1, betas (0.9, 0.98)) except where small
models showed a need: fixed 2D sin-cos positions on the decoder memory are on by default (the paper adds none;
box regression did not start without them on small models, see docs/design.md, "The GRAIN model").
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from grainclip.config.base import ConfigModel
from grainclip.config.evaluate import EvalDataset, ImageAlpha, Mode
from grainclip.config.storage import StorageConfig
from grainclip.storage import Location

MAX_ENUMERATED_QUERIES = 8  # 8! = 40320 assignments per image: the most the enumeration matcher scores


class BackboneConfig(ConfigModel):
    """The open_clip model both modes train: a built-in config name, a config JSON file, or a local-dir folder."""

    model: str = Field(
        "ViT-B-16",
        description="open_clip config name (ViT-B-16), a path to an open_clip config JSON (registered at run "
        "time), or a folder holding open_clip_config.json (+ weights) as open_clip's local-dir: schema reads.",
    )
    pretrained: Path | None = Field(None, description="Optional open_clip weights file to start from.")


class DecoderConfig(ConfigModel):
    """The DETR-style region decoder over the backbone's visual patch tokens (unused in `clip` mode)."""

    layers: int = Field(6, gt=0, description="Decoder layers.")
    d_model: int = Field(512, gt=0, description="Decoder width.")
    heads: int = Field(8, gt=0, description="Attention heads (must divide d_model).")
    ffn_dim: int = Field(2048, gt=0, description="Feed-forward width of each decoder layer.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout inside the decoder.")
    region_queries: int = Field(5, gt=0, description="Region queries; one more (the global query) is added.")
    memory_position: Literal["sincos", "none"] = Field(
        "sincos", description="Fixed 2D sin-cos positions added to the decoder memory; 'none' is the paper."
    )
    objectness: bool = Field(
        False,
        description="Extra head scoring each region query as matched or not, trained with BCE, so unmatched "
        "queries can be ignored at zero-shot time (RegionOutput.objectness). Off = the paper; also measured "
        "better off with RoI region embeddings (PartsWorld validation ablation: the threshold dropped real parts).",
    )
    global_embedding: Literal["query", "pooled"] = Field(
        "pooled",
        description="Where the image embedding comes from: 'query' = the decoder's global query (the paper); "
        "'pooled' = the backbone's own pooled-token projection, as in CLIP, so the caption loss trains the "
        "backbone as directly as the CLIP baseline's does (the decoder then has region queries only).",
    )
    region_embedding: Literal["query", "roi", "roi+query"] = Field(
        "roi",
        description="Where a region's embedding comes from: 'query' = the decoder query's output (the paper; it "
        "attends to the whole image, so it can carry context from outside its box); 'roi' = RoIAlign of the "
        "backbone's patch-token grid inside the region's box, projected (only what lies inside the box); "
        "'roi+query' = the sum of both projections.",
    )
    roi_size: int = Field(2, gt=0, description="RoIAlign output is roi_size x roi_size cells, flattened.")
    roi_train_boxes: Literal["target", "predicted"] = Field(
        "target",
        description="Boxes the RoI embedding pools from during training: 'target' = each matched target box "
        "(teacher forcing: L_rd learns from the right pixels before the boxes are good); 'predicted' = the "
        "query's own box, detached. Zero-shot inference always uses predicted boxes.",
    )
    region_temperature: Literal["shared", "separate"] = Field(
        "separate",
        description="'separate': L_rd has its own learnable logit scale (region-vs-description similarities "
        "spread differently from image-vs-caption ones); 'shared' uses the caption loss's (the paper).",
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> DecoderConfig:
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} must be divisible by heads {self.heads}")
        return self


class LossConfig(ConfigModel):
    """L = caption·L_ic + box·L_box + region·L_rd (+ objectness·L_obj). Matching costs follow DETR."""

    caption_weight: float = Field(1.0, ge=0.0, description="Weight of the image-caption contrastive loss L_ic.")
    box_weight: float = Field(1.0, ge=0.0, description="Weight of the box loss L_box.")
    region_weight: float = Field(1.0, ge=0.0, description="Weight of the region-description loss L_rd.")
    objectness_weight: float = Field(
        1.0, ge=0.0, description="Weight of the objectness loss (decoder.objectness only)."
    )
    box_l1_weight: float = Field(1.0, ge=0.0, description="Weight of L1 inside L_box = l1·L1 + giou·(1-GIoU).")
    box_giou_weight: float = Field(1.0, ge=0.0, description="Weight of (1-GIoU) inside L_box.")
    match_l1_cost: float = Field(5.0, ge=0.0, description="Hungarian cost = l1·L1 + giou·(-GIoU); no class cost.")
    match_giou_cost: float = Field(2.0, ge=0.0, description="Weight of -GIoU in the Hungarian matching cost.")
    matcher: Literal["hungarian", "enumerate"] = Field(
        "hungarian",
        description="hungarian: scipy per image on the host; enumerate: the same minimum-cost assignment found "
        f"on the model's device by scoring every assignment (region_queries <= {MAX_ENUMERATED_QUERIES}).",
    )
    multi_positive_captions: bool = Field(
        True, description="Identical caption strings in the global batch count as positives of each other."
    )
    max_logit_scale: float = Field(100.0, gt=0.0, description="exp(logit_scale) is clamped to this after each step.")


class DataConfig(ConfigModel):
    """Where the annotations are and how rows become training samples."""

    train: Location = Field(
        ..., description="Annotations Parquet file or directory (grainclip annotations schema), local or s3://."
    )
    image_size: int | None = Field(None, gt=0, description="Training resolution; default: the backbone's.")
    llm_caption_prob: float = Field(
        0.5, ge=0.0, le=1.0, description="Chance of training on llm_caption instead of the alt-text caption."
    )
    max_regions: int = Field(5, gt=0, description="Region targets kept per image (highest score first).")
    min_region_score: float = Field(0.0, ge=0.0, le=1.0, description="Regions scoring below this are not trained on.")
    random_resized_crop: bool = Field(
        False, description="Random resized crop augmentation (boxes move with the pixels)."
    )
    crop_scale: tuple[float, float] = Field(
        (0.5, 1.0), description="Area range of random_resized_crop, as fractions of the image."
    )
    hflip: bool = Field(False, description="Off by default: descriptions may say 'left'/'right'.")
    min_box_pixels: float = Field(2.0, ge=0.0, description="Boxes smaller than this after augmentation are dropped.")
    image_alpha: ImageAlpha = "white"
    num_workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader worker processes (single-process runs; the data actors of a Ray Train run); None: "
        "what fits this machine's cores and the training resolution (grainclip.devices.loader_workers).",
    )
    shuffle_row_groups: int = Field(
        4, gt=0, description="Rows are shuffled within windows of this many Parquet row groups (memory bound)."
    )
    prefetch_batches: int = Field(2, gt=0, description="Batches prepared ahead of the training step.")

    def workers(self, image_size: int | None = None) -> int:
        """`num_workers`, or the default that fits this machine for `image_size`-px samples (else `image_size` here).

        Resuming needs the same count (it shapes the data shards): set `num_workers` to move a run between machines.
        """
        from grainclip.devices import loader_workers

        if self.num_workers is not None:
            return self.num_workers
        return loader_workers(image_size=image_size or self.image_size)

    @model_validator(mode="after")
    def _crop_scale_ordered(self) -> DataConfig:
        low, high = self.crop_scale
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        return self


class OptimConfig(ConfigModel):
    """AdamW with linear warmup, then cosine decay (the paper's recipe)."""

    lr: float = Field(1e-3, gt=0.0, description="Peak learning rate.")
    weight_decay: float = Field(
        0.1, ge=0.0, description="AdamW weight decay (not on norms, biases, embeddings, queries, logit scales)."
    )
    betas: tuple[float, float] = Field((0.9, 0.98), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0.0, description="AdamW epsilon.")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps before the cosine decay.")
    min_lr_ratio: float = Field(0.0, ge=0.0, le=1.0, description="Cosine decays to lr * min_lr_ratio.")
    grad_clip: float | None = Field(1.0, gt=0.0, description="Max global grad norm; null disables clipping.")
    grad_accum_steps: int = Field(
        1, gt=0, description="Micro-steps per optimizer step: the effective batch is batch_size x this x workers."
    )


class EvalHookConfig(ConfigModel):
    """Periodic zero-shot evaluation, by the hook the caller of train() builds (grainclip.evaluate.hook)."""

    every: int = Field(0, ge=0, description="Steps between evaluations; 0 disables the hook.")
    datasets: list[EvalDataset] = Field(default_factory=list, description="Splits to classify (evaluate config).")
    modes: list[Mode] = Field(
        default_factory=lambda: ["global"],
        min_length=1,
        description="Zero-shot modes scored (as in the evaluate config).",
    )


class TrainConfig(ConfigModel):
    """One training run. `mode: clip` trains the plain open_clip model with the caption loss only (baseline)."""

    mode: Literal["grain", "clip"] = Field(
        "grain",
        description="`grain`: region decoder and all losses; `clip`: the plain open_clip baseline (caption loss).",
    )
    output_dir: Path = Field(Path("runs/train"), description="Folder for checkpoints, metrics and the exported model.")
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    decoder: DecoderConfig = Field(default_factory=DecoderConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    data: DataConfig
    optim: OptimConfig = Field(default_factory=OptimConfig)
    eval: EvalHookConfig = Field(default_factory=EvalHookConfig)
    batch_size: int = Field(128, gt=0, description="Per worker, per micro-step (the paper: 128 per GPU).")
    steps: int = Field(1000, gt=0, description="Optimizer steps.")
    seed: int = Field(0, description="Seed of the initialisation and of every data choice.")
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="auto: bf16 autocast on GPU, fp32 on CPU.")
    compile: bool = Field(False, description="torch.compile the model.")
    grad_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: less memory, slower steps."
    )
    log_every: int = Field(10, gt=0, description="Steps between metric records.")
    checkpoint_every: int = Field(500, gt=0, description="Steps between checkpoints.")
    keep_checkpoints: int = Field(2, gt=0, description="Older step checkpoints are deleted beyond this many.")
    workers: int = Field(1, gt=0, description="Ray Train workers; 1 = single process without a process group.")
    gpu: bool = Field(False, description="One GPU per worker (Ray Train) or cuda:0 (single process).")
    ray_address: str | None = Field(None, description="Ray cluster to attach to; None = local or embedded.")
    storage: StorageConfig = Field(
        default_factory=StorageConfig,
        description="Object storage (s3://): the environment variables holding its endpoint and credentials (names "
        "only); unset: the standard AWS variables.",
    )

    @model_validator(mode="after")
    def _regions_fit_queries(self) -> TrainConfig:
        if self.mode == "grain" and self.data.max_regions > self.decoder.region_queries:
            raise ValueError(
                f"data.max_regions ({self.data.max_regions}) must not exceed decoder.region_queries "
                f"({self.decoder.region_queries}): each target box needs a query to match it"
            )
        if self.loss.matcher == "enumerate" and self.decoder.region_queries > MAX_ENUMERATED_QUERIES:
            raise ValueError(
                f"loss.matcher 'enumerate' scores every assignment, at most {MAX_ENUMERATED_QUERIES} region "
                f"queries (got {self.decoder.region_queries}); use loss.matcher 'hungarian'"
            )
        return self
