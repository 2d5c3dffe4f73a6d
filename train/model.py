"""The GRAIN model: an open_clip backbone whose visual patch tokens feed a DETR-style region decoder.

Q region queries and one global query attend to the patch tokens. Each region query yields a box (3-layer
MLP, sigmoid cxcywh) and a region embedding; the global query's embedding is the image embedding used for
captions and zero-shot classification. `ClipModel` is the plain open_clip baseline behind the same
interface, so both modes share one training loop.

Options beyond the paper (DecoderConfig): the image embedding may instead be the backbone's pooled
projection (`global_embedding: pooled`), and a region's embedding may be pooled by RoIAlign from the patch
tokens inside its box (`region_embedding: roi` / `roi+query`), from the matched target box during training
(`roi_train_boxes: target`, teacher forcing) and from the predicted box at inference.

Both models return everything the losses need from ONE `forward` call: DistributedDataParallel only
synchronises gradients of work done inside `forward`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from open_clip.pos_embed import get_2d_sincos_pos_embed
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import box_convert, roi_align

from grainclip.config.base import ConfigError
from grainclip.config.train import DecoderConfig
from grainclip.model_api import RegionOutput
from grainclip.train.backbone import visual_token_width


class ClipModel(nn.Module):
    """The plain open_clip model (the baseline); its image embedding is open_clip's pooled projection."""

    kind = "clip"

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.backbone.logit_scale

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.backbone.encode_text(tokens, normalize=normalize)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.backbone.encode_image(images, normalize=normalize)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.backbone.set_grad_checkpointing(enable)

    @torch.no_grad()
    def clamp_logit_scales(self, max_scale: float) -> None:
        """After each optimizer step: exp(scale) stays in [1, max_scale] (loss.max_logit_scale)."""
        self.logit_scale.clamp_(0.0, math.log(max_scale))

    def forward(
        self, images: torch.Tensor, caption_tokens: torch.Tensor, *region_inputs: Any
    ) -> dict[str, torch.Tensor]:
        """Only the caption loss's inputs; GrainModel's region inputs (descriptions, target boxes) are ignored."""
        return {
            "image_embeds": self.encode_image(images, normalize=True),
            "caption_embeds": self.encode_text(caption_tokens, normalize=True),
            "logit_scale": self.logit_scale.exp(),
        }


class BoxHead(nn.Sequential):
    """DETR's box MLP: hidden layers with ReLU, then 4 numbers squashed to normalised cxcywh."""

    def __init__(self, width: int, layers: int = 3) -> None:
        blocks: list[nn.Module] = []
        for _ in range(layers - 1):
            blocks += [nn.Linear(width, width), nn.ReLU()]
        super().__init__(*blocks, nn.Linear(width, 4), nn.Sigmoid())


class GrainModel(ClipModel):
    kind = "grain"

    def __init__(self, backbone: nn.Module, config: DecoderConfig, embed_dim: int) -> None:
        super().__init__(backbone)
        visual = backbone.visual
        token_width = visual_token_width(backbone)
        visual.output_tokens = True

        d = config.d_model
        self.config = config
        self.region_queries = config.region_queries
        self.global_query = config.global_embedding == "query"
        if self.global_query and visual.proj is not None:
            # The global query replaces open_clip's pooled projection; a frozen parameter is also one that
            # DDP does not wait for a gradient on.
            visual.proj.requires_grad_(False)
        self.grid_size = tuple(visual.grid_size)
        self.memory_proj = nn.Linear(token_width, d)
        if config.memory_position == "sincos":
            if d % 4:
                raise ConfigError(f"decoder.d_model {d} must be divisible by 4 for sin-cos memory positions")
            grid_h, grid_w = visual.grid_size
            if grid_h != grid_w:
                raise ConfigError(f"sin-cos memory positions need a square patch grid, got {visual.grid_size}")
            position = torch.from_numpy(get_2d_sincos_pos_embed(d, grid_h)).float()
            self.register_buffer("memory_position", position, persistent=False)
        else:
            self.memory_position = None
        self.queries = nn.Parameter(torch.randn(config.region_queries + int(self.global_query), d) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                d, config.heads, config.ffn_dim, config.dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(d)
        self.box_head = BoxHead(d)
        uses_query = config.region_embedding in ("query", "roi+query")
        uses_roi = config.region_embedding in ("roi", "roi+query")
        self.region_proj = nn.Linear(d, embed_dim) if uses_query else None
        self.roi_proj = nn.Linear(token_width * config.roi_size**2, embed_dim) if uses_roi else None
        self.global_proj = nn.Linear(d, embed_dim) if self.global_query else None
        self.objectness_head = nn.Linear(d, 1) if config.objectness else None
        self.region_logit_scale = (
            nn.Parameter(torch.full((), math.log(1 / 0.07))) if config.region_temperature == "separate" else None
        )
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        self.grad_checkpointing = enable

    @torch.no_grad()
    def clamp_logit_scales(self, max_scale: float) -> None:
        super().clamp_logit_scales(max_scale)
        if self.region_logit_scale is not None:  # L_rd's own temperature, bounded like the caption loss's
            self.region_logit_scale.clamp_(0.0, math.log(max_scale))

    def decode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(region query outputs (B, Q, d), image embedding (B, D) unnormalised, patch tokens (B, N, width))."""
        pooled, tokens = self.backbone.visual(images)
        memory = self.memory_proj(tokens)
        if self.memory_position is not None:
            memory = memory + self.memory_position.to(memory.dtype)
        x = self.queries.unsqueeze(0).expand(images.shape[0], -1, -1)
        for layer in self.layers:
            if self.grad_checkpointing and self.training:
                x = checkpoint(layer, x, memory, use_reentrant=False)
            else:
                x = layer(x, memory)
        x = self.norm(x)
        image = self.global_proj(x[:, self.region_queries]) if self.global_proj is not None else pooled
        return x[:, : self.region_queries], image, tokens

    def roi_embeddings(self, tokens: torch.Tensor, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        """(B, K, D) unnormalised: RoIAlign of the (B, N, width) patch grid inside (B, K, 4) normalised boxes."""
        batch, count = boxes_xyxy.shape[:2]
        grid_h, grid_w = self.grid_size
        grid = tokens.transpose(1, 2).reshape(batch, tokens.shape[2], grid_h, grid_w)
        scale = boxes_xyxy.new_tensor([grid_w, grid_h, grid_w, grid_h])
        rois = list((boxes_xyxy.detach() * scale).to(grid.dtype).unbind(0))
        pooled = roi_align(grid, rois, self.config.roi_size, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        return self.roi_proj(pooled.flatten(1)).view(batch, count, -1)

    def region_embeddings(self, regions: torch.Tensor, tokens: torch.Tensor, boxes_xyxy: torch.Tensor) -> torch.Tensor:
        """(B, Q, D) unnormalised region embeddings of the queries, pooled (if RoI) from their own boxes."""
        embeds = self.region_proj(regions) if self.region_proj is not None else 0.0
        if self.roi_proj is not None:
            embeds = embeds + self.roi_embeddings(tokens, boxes_xyxy)
        return embeds

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        # The pooled projection needs no decoder pass (visual returns (pooled, tokens) with output_tokens).
        embeds = self.backbone.visual(images)[0] if not self.global_query else self.decode(images)[1]
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_regions(self, images: torch.Tensor, normalize: bool = False) -> RegionOutput:
        regions, image, tokens = self.decode(images)
        boxes = box_convert(self.box_head(regions), "cxcywh", "xyxy")
        embeds = self.region_embeddings(regions, tokens, boxes)
        objectness = self.objectness_head(regions).squeeze(-1).sigmoid() if self.objectness_head else None
        return RegionOutput(
            embeddings=F.normalize(embeds, dim=-1) if normalize else embeds,
            boxes=boxes,
            objectness=objectness,
            image=F.normalize(image, dim=-1) if normalize else image,
        )

    def forward(
        self,
        images: torch.Tensor,
        caption_tokens: torch.Tensor,
        description_tokens: torch.Tensor | None = None,
        target_boxes: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """`target_boxes` (B, R, 4) normalised xyxy: with RoI embeddings and teacher forcing, the regions'
        pooled embeddings come from these (`target_roi_embeds`, aligned with the target slots)."""
        regions, image, tokens = self.decode(images)
        # Captions and descriptions go through the text tower in one call: one larger batch is cheaper.
        texts = caption_tokens if description_tokens is None else torch.cat([caption_tokens, description_tokens])
        text_embeds = self.encode_text(texts, normalize=True)
        boxes = self.box_head(regions)  # normalised cxcywh
        out = {
            "image_embeds": F.normalize(image, dim=-1),
            "caption_embeds": text_embeds[: len(caption_tokens)],
            "boxes": boxes,
            "logit_scale": self.logit_scale.exp(),
        }
        teacher_forced = (
            self.roi_proj is not None and self.config.roi_train_boxes == "target" and target_boxes is not None
        )
        if teacher_forced:
            # The criterion pairs each target's pooled embedding with its matched query's projection (roi+query).
            out["target_roi_embeds"] = self.roi_embeddings(tokens, target_boxes)
            if self.region_proj is not None:
                out["region_query_embeds"] = self.region_proj(regions)
        else:
            embeds = self.region_embeddings(regions, tokens, box_convert(boxes, "cxcywh", "xyxy"))
            out["region_embeds"] = F.normalize(embeds, dim=-1)
        if self.region_logit_scale is not None:
            out["region_logit_scale"] = self.region_logit_scale.exp()
        if description_tokens is not None:
            out["description_embeds"] = text_embeds[len(caption_tokens) :]
        if self.objectness_head is not None:
            out["objectness_logits"] = self.objectness_head(regions).squeeze(-1)
        return out


def build_model(kind: str, backbone: torch.nn.Module, decoder: DecoderConfig, embed_dim: int) -> ClipModel:
    """The trainable model of a mode around an open_clip model (`clip` ignores the decoder config)."""
    if kind == "clip":
        return ClipModel(backbone)
    return GrainModel(backbone, decoder, embed_dim=embed_dim)
