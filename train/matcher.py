"""Matching of predicted region boxes to target boxes: the assignment of minimum total cost per image.

Cost of pairing prediction i with target j = l1 · |b_i − b_j|₁ (cxcywh) + giou · (−GIoU(b_i, b_j)) (xyxy), as in
DETR minus the class term: GRAIN's regions have no classes, their descriptions are scored by L_rd instead.
`HungarianMatcher` solves each image with `scipy.optimize.linear_sum_assignment` on the host;
`EnumerationMatcher` finds the same minimum on the predictions' device by scoring every assignment at once,
which GRAIN's few queries (5 + 1) make cheap, and saves the per-image host round trips on a GPU.
"""

from __future__ import annotations

import itertools

import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, generalized_box_iou_loss

from grainclip.config.train import MAX_ENUMERATED_QUERIES

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


class EnumerationMatcher(HungarianMatcher):
    """The exact minimum-cost assignment, found on the predictions' device by enumeration.

    Every injective map of the R target slots to the Q queries (Q! / (Q - R)! of them, 40320 at most for
    Q = R = 8) is scored in one gather over the (B, Q, R) cost; padded slots add nothing, so the cheapest map
    restricted to the real slots is the optimum scipy finds (equal cost; ties may pick another assignment).
    The host sees only the (B, R) target mask, once per batch, instead of the cost matrix and B scipy calls.
    """

    def __init__(self, l1_cost: float = 5.0, giou_cost: float = 2.0) -> None:
        super().__init__(l1_cost, giou_cost)
        self._maps: dict[tuple[int, int, torch.device], torch.Tensor] = {}

    def maps(self, queries: int, slots: int, device: torch.device) -> torch.Tensor:
        """(M, slots) query index of each slot, for every injective map of `slots` slots to `queries` queries."""
        key = (queries, slots, device)
        if key not in self._maps:
            if slots > queries or queries > MAX_ENUMERATED_QUERIES:
                raise ValueError(
                    f"enumeration matching needs target slots ({slots}) <= queries ({queries}) "
                    f"<= {MAX_ENUMERATED_QUERIES}; use the Hungarian matcher"
                )
            maps = list(itertools.permutations(range(queries), slots))
            self._maps[key] = torch.tensor(maps, dtype=torch.int64, device=device).reshape(len(maps), slots)
        return self._maps[key]

    @torch.no_grad()
    def __call__(self, pred_cxcywh: torch.Tensor, target_xyxy: torch.Tensor, target_mask: torch.Tensor) -> list[Match]:
        """Same contract as HungarianMatcher.__call__; target indices come in slot order."""
        device = pred_cxcywh.device
        queries, slots = pred_cxcywh.shape[1], target_xyxy.shape[1]
        cost = self.cost(pred_cxcywh.detach().float(), target_xyxy.float())  # (B, Q, R)
        maps = self.maps(queries, slots, device)
        gathered = cost[:, maps, torch.arange(slots, device=device)]  # (B, M, R): cost of slot r under map m
        mask = target_mask.to(device)
        totals = torch.where(mask[:, None, :], gathered, 0.0).sum(-1)  # (B, M)
        best = maps[totals.argmin(dim=1)]  # (B, R) query of every slot under the cheapest map

        real = target_mask.cpu()
        image, slot = real.nonzero(as_tuple=True)
        image, slot = image.to(device), slot.to(device)
        counts = real.sum(dim=1).tolist()
        return list(zip(best[image, slot].split(counts), slot.split(counts), strict=True))
