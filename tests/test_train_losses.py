"""GRAIN losses and matcher: against open_clip, brute force, hand computation, and across 2 gloo ranks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from grainclip.config.train import LossConfig
from grainclip.train.batch import distinct_descriptions
from grainclip.train.losses import (
    GrainCriterion,
    box_loss,
    contrastive_loss,
    global_target_count,
    region_description_loss,
)
from grainclip.train.matcher import EnumerationMatcher, HungarianMatcher


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


@pytest.mark.parametrize("batch", [1, 7, 32])
def test_contrastive_loss_equals_open_clip_clip_loss(batch):
    from open_clip.loss import ClipLoss  # here, not at the top: the spawned ranks below import this module

    g = torch.Generator().manual_seed(batch)
    images = unit(torch.randn(batch, 16, generator=g)).requires_grad_()
    texts = unit(torch.randn(batch, 16, generator=g)).requires_grad_()
    scale = torch.tensor(14.3)
    ours = contrastive_loss(images, texts, scale)
    reference = ClipLoss()(images, texts, scale)
    assert torch.allclose(ours, reference, atol=1e-6)
    # With all-distinct caption ids, multi-positive InfoNCE is the same loss with the same gradient.
    distinct = contrastive_loss(images, texts, scale, text_ids=torch.arange(batch) * 7 + 3)
    assert torch.allclose(distinct, reference, atol=1e-6)
    grad_ours = torch.autograd.grad(distinct, (images, texts))
    grad_ref = torch.autograd.grad(ClipLoss()(images, texts, scale), (images, texts))
    for a, b in zip(grad_ours, grad_ref):
        assert torch.allclose(a, b, atol=1e-6)


def test_identical_captions_are_shared_positives():
    from open_clip.loss import ClipLoss

    # Images 0 and 1 carry the same caption string (so the same text embedding); image 2 its own.
    images = unit(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]))
    texts = unit(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]]))
    scale = torch.tensor(2.0)
    loss = contrastive_loss(images, texts, scale, text_ids=torch.tensor([5, 5, 9]))
    logits = (scale * images @ texts.T).tolist()
    positives = [{0, 1}, {0, 1}, {2}]

    def positive_mass_loss(rows):  # -log(probability on the row's positives), averaged
        return sum(
            -math.log(sum(math.exp(row[j]) for j in pos) / sum(math.exp(v) for v in row))
            for row, pos in zip(rows, positives)
        ) / len(rows)

    columns = [list(col) for col in zip(*logits)]
    expected = (positive_mass_loss(logits) + positive_mass_loss(columns)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    # Plain InfoNCE treats caption 1 as a negative of image 0 although it is the same text: higher loss.
    assert loss.item() < ClipLoss()(images, texts, scale).item() - 0.1


def brute_force_cost(cost: np.ndarray) -> float:
    queries, targets = cost.shape
    return min(sum(cost[q, t] for t, q in enumerate(perm)) for perm in itertools.permutations(range(queries), targets))


@pytest.mark.parametrize("seed", range(12))
def test_matcher_finds_the_optimal_assignment(seed):
    rng = np.random.default_rng(seed)
    queries, slots = 5, 4
    centre = rng.uniform(0.2, 0.8, (2, queries, 2))
    size = rng.uniform(0.05, 0.4, (2, queries, 2))
    pred = torch.tensor(np.concatenate([centre, size], axis=-1), dtype=torch.float32)
    corner = rng.uniform(0.0, 0.5, (2, slots, 2))
    target = torch.tensor(
        np.concatenate([corner, corner + rng.uniform(0.05, 0.5, (2, slots, 2))], -1), dtype=torch.float32
    )
    mask = torch.tensor(rng.random((2, slots)) < 0.7)
    mask[0, 0] = True
    matcher = HungarianMatcher(l1_cost=5.0, giou_cost=2.0)
    matches = matcher(pred, target, mask)
    for b, (rows, cols) in enumerate(matches):
        real = mask[b].nonzero().squeeze(1)
        assert sorted(cols.tolist()) == real.tolist()  # every real target matched once, no padding matched
        assert len(set(rows.tolist())) == len(rows)
        cost = matcher.cost(pred[b], target[b, real]).numpy()
        chosen = matcher.cost(pred[b, rows], target[b, cols]).diagonal().sum().item()
        assert chosen == pytest.approx(brute_force_cost(cost), abs=1e-4)


def random_boxes(rng: np.random.Generator, batch: int, queries: int, slots: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, Q, 4) predicted cxcywh and (B, R, 4) target xyxy boxes inside the unit square."""
    centre, size = rng.uniform(0.2, 0.8, (batch, queries, 2)), rng.uniform(0.05, 0.4, (batch, queries, 2))
    corner = rng.uniform(0.0, 0.5, (batch, slots, 2))
    target = np.concatenate([corner, corner + rng.uniform(0.05, 0.5, (batch, slots, 2))], -1)
    return torch.tensor(np.concatenate([centre, size], -1), dtype=torch.float32), torch.tensor(
        target, dtype=torch.float32
    )


@pytest.mark.parametrize(("queries", "slots"), [(5, 5), (5, 3), (8, 8), (6, 4), (1, 1)])
def test_enumeration_matcher_equals_scipy_assignment_cost(queries, slots):
    rng = np.random.default_rng(queries * 10 + slots)
    batch = 16
    pred, target = random_boxes(rng, batch, queries, slots)
    mask = torch.tensor(rng.random((batch, slots)) < 0.7)
    mask[0], mask[1] = True, False  # one image with every slot real, one with no target at all
    hungarian, enumeration = HungarianMatcher(), EnumerationMatcher()
    for b, ((rows, cols), (ref_rows, ref_cols)) in enumerate(
        zip(enumeration(pred, target, mask), hungarian(pred, target, mask), strict=True)
    ):
        assert cols.tolist() == mask[b].nonzero().squeeze(1).tolist()  # every real slot once, in slot order
        assert len(set(rows.tolist())) == len(rows) and all(0 <= q < queries for q in rows.tolist())
        chosen = hungarian.cost(pred[b, rows], target[b, cols]).diagonal().sum().item()
        reference = hungarian.cost(pred[b, ref_rows], target[b, ref_cols]).diagonal().sum().item()
        assert chosen == pytest.approx(reference, abs=1e-5)


def test_enumeration_matcher_refuses_more_slots_than_queries():
    pred, target = random_boxes(np.random.default_rng(0), 2, 3, 4)
    with pytest.raises(ValueError, match="target slots"):
        EnumerationMatcher()(pred, target, torch.ones(2, 4, dtype=torch.bool))


def test_criterion_with_enumeration_matcher_gives_the_same_losses_and_gradients():
    assert isinstance(GrainCriterion(LossConfig(matcher="enumerate"), "grain").matcher, EnumerationMatcher)
    inputs = _criterion_inputs(seed=3)
    parts, grads, table_grad = _loss_and_grads(inputs, slice(None))
    enum_parts, enum_grads, enum_table_grad = _loss_and_grads(inputs, slice(None), LossConfig(matcher="enumerate"))
    assert parts["box"] > 0 and parts["region"] > 0
    for key, value in parts.items():
        assert enum_parts[key] == pytest.approx(value, abs=1e-5), key
    for key, grad in grads.items():
        assert torch.allclose(enum_grads[key], grad, atol=1e-6), key
    assert torch.allclose(enum_table_grad, table_grad, atol=1e-6)


def test_matcher_cost_is_5_l1_minus_2_giou():
    pred = torch.tensor([[0.5, 0.5, 0.2, 0.2]])  # xyxy 0.4..0.6
    target = torch.tensor([[0.4, 0.4, 0.8, 0.8]])  # cxcywh 0.6, 0.6, 0.4, 0.4
    l1 = 0.1 + 0.1 + 0.2 + 0.2
    inter, union, hull = 0.2 * 0.2, 0.16 + 0.04 - 0.04, 0.4 * 0.4
    giou = inter / union - (hull - union) / hull
    assert HungarianMatcher().cost(pred, target).item() == pytest.approx(5 * l1 - 2 * giou, abs=1e-6)


def test_box_loss_by_hand():
    # Image 0: two predictions, one target matched to prediction 1. Image 1: no targets at all.
    pred = torch.tensor(
        [[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.2]], [[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.1, 0.1]]],
        requires_grad=True,
    )
    target = torch.tensor([[[0.2, 0.2, 0.5, 0.4], [0, 0, 0, 0]], [[0, 0, 0, 0], [0, 0, 0, 0]]])
    mask = torch.tensor([[True, False], [False, False]])
    matches = [(torch.tensor([1]), torch.tensor([0])), (torch.tensor([], dtype=torch.int64),) * 2]
    l1, giou_loss = box_loss(pred, target, matches, global_target_count(mask))
    # prediction (0.3, 0.3, 0.2, 0.2) = xyxy (0.2, 0.2, 0.4, 0.4); target cxcywh (0.35, 0.3, 0.3, 0.2)
    assert l1.item() == pytest.approx(0.05 + 0.0 + 0.1 + 0.0, abs=1e-6)
    inter, union = 0.2 * 0.2, 0.04 + 0.3 * 0.2 - 0.04
    hull = 0.3 * 0.2
    assert giou_loss.item() == pytest.approx(1 - (inter / union - (hull - union) / hull), abs=1e-5)  # torchvision eps
    (l1 + giou_loss).backward()
    assert pred.grad[1].abs().sum() == 0 and pred.grad[0, 0].abs().sum() == 0 and pred.grad[0, 1].abs().sum() > 0


def test_box_loss_with_no_targets_anywhere_is_zero_not_nan():
    pred = torch.rand(3, 4, 4, requires_grad=True)
    mask = torch.zeros(3, 2, dtype=torch.bool)
    empty = torch.zeros(0, dtype=torch.int64)
    l1, giou = box_loss(pred, torch.zeros(3, 2, 4), [(empty, empty)] * 3, global_target_count(mask))
    assert l1.item() == 0.0 and giou.item() == 0.0
    (l1 + giou).backward()  # still in the graph (DDP needs every head's gradient, here zero)
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_region_description_loss_by_hand():
    # Two images; matched regions: image 0 query 2 -> slot 0 ("red crest"), image 1 query 0 -> slot 1
    # ("blue wings"); image 1 slot 0 is "red crest" again (the same id), so there are 2 distinct descriptions.
    region = unit(torch.tensor([[[0, 1.0], [1, 1], [1, 0]], [[0.6, 0.8], [1, 0], [0, 1]]]))
    red, blue = 11, 22
    ids = torch.tensor([[red, 0], [red, blue]])
    mask = torch.tensor([[True, False], [True, True]])
    tokens = torch.tensor([[[1, 2], [0, 0]], [[1, 2], [3, 4]]])
    unique_tokens, unique_ids = distinct_descriptions(tokens, ids, mask)
    assert unique_ids.tolist() == [red, blue] and unique_tokens.tolist() == [[1, 2], [3, 4]]
    embeds = unit(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # red -> x axis, blue -> y axis
    matches = [(torch.tensor([2]), torch.tensor([0])), (torch.tensor([0]), torch.tensor([1]))]
    scale = torch.tensor(3.0)
    loss = region_description_loss(
        region, matches, ids, embeds, unique_ids, capacity=mask.numel(), logit_scale=scale,
        num_targets=global_target_count(mask),
    )  # fmt: skip
    # region (1, 0) vs red: logits (3, 0) -> label 0; region (0.6, 0.8) vs blue: logits (1.8, 2.4) -> label 1
    expected = (
        -math.log(math.exp(3) / (math.exp(3) + 1)) - math.log(math.exp(2.4) / (math.exp(1.8) + math.exp(2.4)))
    ) / 3
    assert loss.item() == pytest.approx(expected, abs=1e-6)  # divided by 3 target boxes, not 2 matches


def test_objectness_and_weights_in_the_criterion(two_image_targets):
    config = LossConfig(caption_weight=2.0, box_weight=0.5, region_weight=0.25, objectness_weight=3.0)
    g = torch.Generator().manual_seed(0)
    out = {
        "image_embeds": unit(torch.randn(2, 8, generator=g)),
        "caption_embeds": unit(torch.randn(2, 8, generator=g)),
        "region_embeds": unit(torch.randn(2, 3, 8, generator=g)),
        "boxes": torch.rand(2, 3, 4, generator=g) * 0.5 + 0.25,
        "description_embeds": unit(torch.randn(2, 8, generator=g)),
        "objectness_logits": torch.randn(2, 3, generator=g),
        "logit_scale": torch.tensor(10.0),
    }
    batch = two_image_targets
    parts = GrainCriterion(config, "grain")(out, batch)
    matched = torch.zeros(2, 3)
    for b, (rows, _) in enumerate(HungarianMatcher()(out["boxes"], batch["boxes"], batch["box_mask"])):
        matched[b, rows] = 1.0
    assert parts["objectness"].item() == pytest.approx(
        F.binary_cross_entropy_with_logits(out["objectness_logits"], matched).item(), abs=1e-6
    )
    assert matched.sum() == 3
    expected = 2.0 * parts["caption"] + 0.5 * parts["box"] + 0.25 * parts["region"] + 3.0 * parts["objectness"]
    assert parts["total"].item() == pytest.approx(expected.item(), abs=1e-6)
    clip_parts = GrainCriterion(config, "clip")(out, batch)
    assert set(clip_parts) == {"caption", "total"}


# ---- exactness across ranks: 2 gloo processes vs one process on the concatenated batch ----------------


def _criterion_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    batch, queries, slots, dim = 6, 4, 3, 8
    mask = torch.rand(batch, slots, generator=g) < 0.6
    mask[3] = False  # an image without boxes
    corner = torch.rand(batch, slots, 2, generator=g) * 0.5
    boxes = torch.cat([corner, corner + 0.1 + torch.rand(batch, slots, 2, generator=g) * 0.4], -1)
    desc_ids = torch.randint(1, 6, (batch, slots), generator=g)  # few ids: duplicates within and across ranks
    return {
        "image": torch.randn(batch, dim, generator=g),
        "caption": torch.randn(batch, dim, generator=g),
        "caption_ids": torch.tensor([1, 2, 1, 3, 4, 2]),  # duplicates across the two halves too
        "region": torch.randn(batch, queries, dim, generator=g),
        "pred": torch.rand(batch, queries, 4, generator=g) * 0.4 + 0.3,
        "boxes": boxes,
        "box_mask": mask,
        "description_ids": desc_ids,
        "description_table": torch.randn(6, dim, generator=g),  # embedding per description id
    }


def _loss_and_grads(inputs, rows: slice, config: LossConfig | None = None):
    leaves = {k: inputs[k][rows].clone().requires_grad_() for k in ("image", "caption", "region", "pred")}
    table = inputs["description_table"].clone().requires_grad_()
    mask = inputs["box_mask"][rows]
    ids = inputs["description_ids"][rows]
    _, unique_ids = distinct_descriptions(ids.unsqueeze(-1), ids, mask)
    out = {
        "image_embeds": unit(leaves["image"]),
        "caption_embeds": unit(leaves["caption"]),
        "region_embeds": unit(leaves["region"]),
        "boxes": leaves["pred"],
        "description_embeds": unit(table[unique_ids]),
        "logit_scale": torch.tensor(5.0),
    }
    batch = {
        "caption_ids": inputs["caption_ids"][rows],
        "boxes": inputs["boxes"][rows],
        "box_mask": mask,
        "description_ids": ids,
        "unique_description_ids": unique_ids,
    }
    parts = GrainCriterion(config or LossConfig(), "grain")(out, batch)
    parts["total"].backward()
    return {k: v.item() for k, v in parts.items()}, {k: v.grad for k, v in leaves.items()}, table.grad


def _rank_worker(rank: int, init_file: str, queue) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        inputs = _criterion_inputs()
        parts, grads, table_grad = _loss_and_grads(inputs, slice(rank * 3, rank * 3 + 3))
        dist.all_reduce(table_grad)  # what DDP does for shared parameters (it then averages)
        # numpy, not tensors: torch would share the memory through a file descriptor that dies with this process
        queue.put((rank, parts, {k: v.numpy() for k, v in grads.items()}, (table_grad / 2).numpy()))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_losses_across_two_gloo_ranks_equal_one_process(tmp_path):
    inputs = _criterion_inputs()
    single_parts, single_grads, single_table = _loss_and_grads(inputs, slice(0, 6))
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_rank_worker, args=(str(tmp_path / "init"), queue), nprocs=2, start_method="spawn")
    results = sorted((queue.get() for _ in range(2)), key=lambda r: r[0])
    for key, value in single_parts.items():
        # The mean of the ranks' shares is the single-process loss.
        assert (results[0][1][key] + results[1][1][key]) / 2 == pytest.approx(value, abs=1e-5), key
    for key, grad in single_grads.items():
        # DDP averages gradients over ranks; per-sample leaves live on one rank, so each slice is grad / 2.
        both = np.concatenate([results[0][2][key], results[1][2][key]]) / 2
        np.testing.assert_allclose(both, grad.numpy(), atol=1e-5, err_msg=key)
    np.testing.assert_allclose(results[0][3], single_table.numpy(), atol=1e-5)
