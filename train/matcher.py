"""Hungarian matching of predicted region boxes to target boxes, one image at a time.

Cost of pairing prediction i with target j = l1 · |b_i − b_j|₁ (cxcywh) + giou · (−GIoU(b_i, b_j)) (xyxy), as in
DETR minus the class term: GRAIN's regions have no classes, their descriptions are scored by L_rd instead.
`scipy.optimize.linear_sum_assignment` finds the assignment of minimum total cost.
"""

from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou_loss

Match = tuple[torch.Tensor, torch.Tensor]  # (prediction indices, target indices), int64, same length


class HungarianMatcher:
    def __init__(self, l1_cost: float = 5.0, giou_cost: float = 2.0) -> None:
        self.l1_cost = l1_cost
        self.giou_cost = giou_cost

    def cost(self, pred_cxcywh: torch.Tensor, target_xyxy: torch.Tensor) -> torch.Tensor:
        """Pairwise cost (..., Q, T) between (..., Q, 4) predicted cxcywh boxes and (..., T, 4) target xyxy boxes."""
        l1 = torch.cdist(pred_cxcywh, box_convert(target_xyxy, "xyxy", "cxcywh"), p=1)
        pairs = (*l1.shape, 4)
        pred = box_convert(pred_cxcywh, "cxcywh", "xyxy").unsqueeze(-2).expand(pairs)
        # 1 - GIoU, computed pair by pair: each image only against its own targets
        giou_loss = generalized_box_iou_loss(pred, target_xyxy.unsqueeze(-3).expand(pairs))
        return self.l1_cost * l1 + self.giou_cost * (giou_loss - 1.0)

    @torch.no_grad()
    def __call__(self, pred_cxcywh: torch.Tensor, target_xyxy: torch.Tensor, target_mask: torch.Tensor) -> list[Match]:
        """Match (B, Q, 4) predictions to (B, R, 4) padded targets whose real entries `target_mask` (B, R) marks.

        Returns one (prediction indices, target indices) pair per image; target indices point into the padded
        R slots, so they index `target_xyxy[b]` and any per-target tensor aligned with it.
        """
        costs = self.cost(pred_cxcywh.detach().float(), target_xyxy.float()).cpu().numpy()
        mask = target_mask.cpu().numpy()
        matches: list[Match] = []
        for cost, real in zip(costs, mask):
            slots = real.nonzero()[0]
            rows, cols = linear_sum_assignment(cost[:, slots]) if slots.size else ([], [])
            matches.append(
                (
                    torch.as_tensor(rows, dtype=torch.int64, device=pred_cxcywh.device),
                    torch.as_tensor(slots[cols], dtype=torch.int64, device=pred_cxcywh.device),
                )
            )
        return matches
