"""The GRAIN model: an open_clip backbone whose visual patch tokens feed a DETR-style region decoder.

Q region queries and one global query attend to the patch tokens. Each region query yields a box (3-layer
MLP, sigmoid cxcywh) and a region embedding; the global query's embedding is the image embedding used for
captions and zero-shot classification. `ClipModel` is the plain open_clip baseline behind the same
interface, so both modes share one training loop.

Both models return everything the losses need from ONE `forward` call: DistributedDataParallel only
synchronises gradients of work done inside `forward`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from open_clip.pos_embed import get_2d_sincos_pos_embed
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import box_convert

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

    def forward(
        self, images: torch.Tensor, caption_tokens: torch.Tensor, description_tokens: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
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
        if visual.proj is not None:
            # The global query replaces open_clip's pooled projection; a frozen parameter is also one that
            # DDP does not wait for a gradient on.
            visual.proj.requires_grad_(False)

        d = config.d_model
        self.region_queries = config.region_queries
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
        self.queries = nn.Parameter(torch.randn(config.region_queries + 1, d) * 0.02)
        self.layers = nn.ModuleList(
            nn.TransformerDecoderLayer(
                d, config.heads, config.ffn_dim, config.dropout, activation="gelu", batch_first=True, norm_first=True
            )
            for _ in range(config.layers)
        )
        self.norm = nn.LayerNorm(d)
        self.box_head = BoxHead(d)
        self.region_proj = nn.Linear(d, embed_dim)
        self.global_proj = nn.Linear(d, embed_dim)
        self.objectness_head = nn.Linear(d, 1) if config.objectness else None
        self.grad_checkpointing = False

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        super().set_grad_checkpointing(enable)
        self.grad_checkpointing = enable

    def decode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder outputs for (region queries (B, Q, d), global query (B, d))."""
        _, tokens = self.backbone.visual(images)
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
        return x[:, : self.region_queries], x[:, self.region_queries]

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        embeds = self.global_proj(self.decode(images)[1])
        return F.normalize(embeds, dim=-1) if normalize else embeds

    def encode_regions(self, images: torch.Tensor, normalize: bool = False) -> RegionOutput:
        regions, global_query = self.decode(images)
        embeds, image = self.region_proj(regions), self.global_proj(global_query)
        objectness = self.objectness_head(regions).squeeze(-1).sigmoid() if self.objectness_head else None
        return RegionOutput(
            embeddings=F.normalize(embeds, dim=-1) if normalize else embeds,
            boxes=box_convert(self.box_head(regions), "cxcywh", "xyxy"),
            objectness=objectness,
            image=F.normalize(image, dim=-1) if normalize else image,
        )

    def forward(
        self, images: torch.Tensor, caption_tokens: torch.Tensor, description_tokens: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        regions, global_query = self.decode(images)
        # Captions and descriptions go through the text tower in one call: one larger batch is cheaper.
        texts = caption_tokens if description_tokens is None else torch.cat([caption_tokens, description_tokens])
        text_embeds = self.encode_text(texts, normalize=True)
        out = {
            "image_embeds": F.normalize(self.global_proj(global_query), dim=-1),
            "caption_embeds": text_embeds[: len(caption_tokens)],
            "region_embeds": F.normalize(self.region_proj(regions), dim=-1),
            "boxes": self.box_head(regions),  # normalised cxcywh
            "logit_scale": self.logit_scale.exp(),
        }
        if description_tokens is not None:
            out["description_embeds"] = text_embeds[len(caption_tokens) :]
        if self.objectness_head is not None:
            out["objectness_logits"] = self.objectness_head(regions).squeeze(-1)
        return out
