"""GRAIN's three losses, exact across data-parallel ranks.

Every function returns THIS rank's share of the global-batch loss, chosen so that (a) the mean of the shares
over ranks equals the loss of one process on the concatenated batch, and (b) DDP's gradient averaging then
yields that loss's gradient:

- L_ic (image-caption InfoNCE) gathers embeddings with gradient and computes the full global loss on every
  rank, as open_clip's ClipLoss(gather_with_grad=True) does; all shares are equal.
- L_box and L_rd are sums over this rank's matched pairs, divided by the number of target boxes in the global
  batch (all-reduced, at least 1) and multiplied by the world size.

Identical caption strings in a batch are positives of each other (multi-positive InfoNCE): with few distinct
captions (PartsWorld: class names) plain InfoNCE cannot fall below log(copies) and keeps pushing an image
away from its own caption's twins.
Descriptions are compared by identity too: L_rd classifies each matched region among the DISTINCT
descriptions of the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.ops import box_convert, generalized_box_iou_loss

from grainclip.config.train import LossConfig
from grainclip.train import distributed
from grainclip.train.batch import TrainBatch, first_of_each
from grainclip.train.matcher import EnumerationMatcher, HungarianMatcher, Match


def contrastive_loss(
    image_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    text_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """Symmetric InfoNCE over the global batch; `text_ids` (B,) mark identical texts as shared positives."""
    all_images = distributed.gather_with_grad(image_embeds)
    all_texts = distributed.gather_with_grad(text_embeds)
    logits = logit_scale * all_images @ all_texts.T
    if text_ids is None:
        labels = torch.arange(logits.shape[0], device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    ids = distributed.gather(text_ids)
    positive = ids[:, None] == ids[None, :]  # symmetric, so it serves both directions
    return (positives_loss(logits, positive) + positives_loss(logits.T, positive)) / 2


def positives_loss(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """Mean over rows of −log(softmax probability mass on the row's positives).

    Identical strings have identical embeddings, so a soft-target cross-entropy (uniform over the twins)
    would equal plain InfoNCE, floor of log(k) included; summing the twins' probability removes that floor.
    """
    return (torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.masked_fill(~positive, -torch.inf), dim=1)).mean()


def matched_indices(matches: list[Match]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image matches flattened to (image index, query index, target slot) of every matched pair."""
    images = torch.cat([torch.full_like(pred, b) for b, (pred, _) in enumerate(matches)])
    return images, torch.cat([pred for pred, _ in matches]), torch.cat([target for _, target in matches])


def global_target_count(target_mask: torch.Tensor) -> torch.Tensor:
    """Number of target boxes in the global batch, at least 1 (images without boxes must not divide by 0)."""
    count = distributed.all_reduce_sum(target_mask.sum().to(torch.float32))
    return count.clamp(min=1.0)


def box_loss(
    pred_cxcywh: torch.Tensor,
    target_xyxy: torch.Tensor,
    matches: list[Match],
    num_targets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1 on cxcywh, 1 − GIoU) summed over matched pairs, as this rank's share of the global-batch mean."""
    images, pred_idx, target_idx = matched_indices(matches)
    pred = pred_cxcywh[images, pred_idx]
    target = target_xyxy[images, target_idx].to(pred.dtype)
    scale = distributed.world_size() / num_targets
    # `0 * pred_cxcywh.sum()` keeps the box head in the graph when nothing matched (DDP waits for its grads).
    anchor = 0.0 * pred_cxcywh.sum()
    l1 = F.l1_loss(pred, box_convert(target, "xyxy", "cxcywh"), reduction="sum")
    giou = generalized_box_iou_loss(box_convert(pred, "cxcywh", "xyxy"), target, reduction="sum")  # pairwise aligned
    return l1 * scale + anchor, giou * scale + anchor


def region_description_loss(
    region_embeds: torch.Tensor,
    matches: list[Match],
    target_ids: torch.Tensor,
    description_embeds: torch.Tensor,
    description_ids: torch.Tensor,
    capacity: int,
    logit_scale: torch.Tensor,
    num_targets: torch.Tensor,
) -> torch.Tensor:
    """Cross-entropy of each matched region against every distinct description in the global batch.

    region_embeds (B, Q, D) normalised; target_ids (B, R) description id of each target slot;
    description_embeds (U, D) / description_ids (U,) this rank's distinct descriptions, padded to `capacity`
    rows (the same on every rank) before gathering so every rank contributes an equal-shape tensor.
    """
    images, pred_idx, target_idx = matched_indices(matches)
    regions = region_embeds[images, pred_idx]
    wanted = target_ids[images, target_idx]
    anchor = 0.0 * region_embeds.sum()

    count = description_ids.shape[0]
    padded = torch.cat(
        [description_embeds, description_embeds.new_zeros(capacity - count, description_embeds.shape[1])]
    )
    valid = (torch.arange(capacity, device=padded.device) < count).to(torch.int64)  # gloo gathers no bools
    ids = torch.cat([description_ids, description_ids.new_zeros(capacity - count)])
    all_embeds = distributed.gather_with_grad(padded)
    all_ids, all_valid = distributed.gather(ids), distributed.gather(valid)

    # Keep the first copy of each distinct description id; later copies (other ranks) hold the same text.
    positions = all_valid.nonzero().squeeze(1)
    distinct, first = first_of_each(all_ids[positions])
    columns = all_embeds[positions[first]]
    if regions.shape[0] == 0:
        return anchor + 0.0 * columns.sum()
    logits = logit_scale * regions @ columns.T
    labels = torch.searchsorted(distinct, wanted)
    loss = F.cross_entropy(logits, labels, reduction="sum")
    return loss * distributed.world_size() / num_targets + anchor


def matched_region_embeds(out: dict[str, torch.Tensor], matches: list[Match]) -> tuple[torch.Tensor, list[Match]]:
    """The region embeddings L_rd scores, and the matches that index them.

    Usually the queries' own embeddings (B, Q, D) with the Hungarian matches. With RoI teacher forcing the
    model pooled one embedding per TARGET slot (B, R, D); a target's embedding is then that pooled one plus,
    for `roi+query`, the projection of the query matched to it, and each target is matched to its own slot.
    """
    if "target_roi_embeds" not in out:
        return out["region_embeds"], matches
    embeds = out["target_roi_embeds"]
    query = out.get("region_query_embeds")
    if query is not None:
        images, pred_idx, target_idx = matched_indices(matches)
        aligned = torch.zeros_like(embeds).index_put((images, target_idx), query[images, pred_idx])
        embeds = embeds + aligned
    return F.normalize(embeds, dim=-1), [(target, target) for _, target in matches]


def objectness_loss(objectness_logits: torch.Tensor, matches: list[Match]) -> torch.Tensor:
    """BCE: matched region queries are objects, the rest are not; mean over queries (equal on every rank)."""
    target = torch.zeros_like(objectness_logits)
    for b, (pred, _) in enumerate(matches):
        target[b, pred] = 1.0
    return F.binary_cross_entropy_with_logits(objectness_logits, target)


class GrainCriterion:
    """Matches predictions to targets and combines the weighted losses; returns the total and each part."""

    def __init__(self, config: LossConfig, mode: str) -> None:
        self.config = config
        self.mode = mode
        matcher = EnumerationMatcher if config.matcher == "enumerate" else HungarianMatcher
        self.matcher = matcher(config.match_l1_cost, config.match_giou_cost)

    def __call__(self, out: dict[str, torch.Tensor], batch: TrainBatch) -> dict[str, torch.Tensor]:
        cfg = self.config
        caption_ids = batch["caption_ids"] if cfg.multi_positive_captions else None
        losses = {
            "caption": contrastive_loss(out["image_embeds"], out["caption_embeds"], out["logit_scale"], caption_ids)
        }
        total = cfg.caption_weight * losses["caption"]
        if self.mode == "grain":
            mask = batch["box_mask"]
            matches = self.matcher(out["boxes"], batch["boxes"], mask)
            num_targets = global_target_count(mask)
            losses["box_l1"], losses["box_giou"] = box_loss(out["boxes"], batch["boxes"], matches, num_targets)
            losses["box"] = cfg.box_l1_weight * losses["box_l1"] + cfg.box_giou_weight * losses["box_giou"]
            region_embeds, region_matches = matched_region_embeds(out, matches)
            losses["region"] = region_description_loss(
                region_embeds,
                region_matches,
                batch["description_ids"],
                out["description_embeds"],
                batch["unique_description_ids"],
                capacity=mask.numel(),
                logit_scale=out.get("region_logit_scale", out["logit_scale"]),
                num_targets=num_targets,
            )
            total = total + cfg.box_weight * losses["box"] + cfg.region_weight * losses["region"]
            if "objectness_logits" in out:
                losses["objectness"] = objectness_loss(out["objectness_logits"], matches)
                total = total + cfg.objectness_weight * losses["objectness"]
        losses["total"] = total
        return losses
