"""Hungarian matching of predicted region boxes to target boxes, one image at a time.

Cost of pairing prediction i with target j = l1 · |b_i − b_j|₁ (cxcywh) + giou · (−GIoU(b_i, b_j)) (xyxy), as in
DETR minus the class term: GRAIN's regions have no classes, their descriptions are scored by L_rd instead.
`scipy.optimize.linear_sum_assignment` finds the assignment of minimum total cost.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou

Match = tuple[torch.Tensor, torch.Tensor]  # (prediction indices, target indices), int64, same length


class HungarianMatcher:
    def __init__(self, l1_cost: float = 5.0, giou_cost: float = 2.0) -> None:
        self.l1_cost = l1_cost
        self.giou_cost = giou_cost

    def cost(self, pred_cxcywh: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
        """Pairwise cost (Q, T) between Q predicted cxcywh boxes and T target xyxy boxes."""
        l1 = torch.cdist(pred_cxcywh, box_convert(target_xyxy, "xyxy", "cxcywh"), p=1)
        giou = generalized_box_iou(box_convert(pred_cxcywh, "cxcywh", "xyxy"), target_xyxy)
        return self.l1_cost * l1 - self.giou_cost * giou

    @torch.no_grad()
    def __call__(self, pred_cxcywh: torch.Tensor, target_xyxy: torch.Tensor, target_mask: torch.Tensor) -> list[Match]:
        """Match (B, Q, 4) predictions to (B, R, 4) padded targets whose real entries `target_mask` (B, R) marks.

        Returns one (prediction indices, target indices) pair per image; target indices point into the padded
        R slots, so they index `target_xyxy[b]` and any per-target tensor aligned with it.
        """
        batch, queries, _ = pred_cxcywh.shape
        slots = target_xyxy.shape[1]
        # One pairwise cost over the flattened batch, then each image's own (Q, R) block (as DETR does).
        cost = self.cost(pred_cxcywh.detach().float().flatten(0, 1), target_xyxy.float().flatten(0, 1))
        images = torch.arange(batch, device=cost.device)
        blocks = cost.view(batch, queries, batch, slots)[images, :, images, :].cpu().numpy()
        mask = target_mask.cpu().numpy()
        matches: list[Match] = []
        for b in range(batch):
            real = mask[b].nonzero()[0]
            rows, cols = linear_sum_assignment(blocks[b][:, real]) if real.size else ([], [])
            matches.append(
                (
                    torch.as_tensor(rows, dtype=torch.int64, device=pred_cxcywh.device),
                    torch.as_tensor(real[cols], dtype=torch.int64, device=pred_cxcywh.device),
                )
            )
        return matches
