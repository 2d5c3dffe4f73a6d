"""GRAIN model options: RoI region embeddings (teacher-forced in training), the pooled global embedding, the
separate L_rd temperature; each one trains, exports and loads back."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from grainclip.config.train import BackboneConfig, DecoderConfig, LossConfig, TrainConfig
from grainclip.train import load_model, train
from grainclip.train.backbone import build_backbone
from grainclip.train.losses import GrainCriterion, matched_region_embeds
from grainclip.train.metrics import read_metrics
from grainclip.train.model import GrainModel, build_model

TINY = {"layers": 1, "d_model": 32, "heads": 2, "ffn_dim": 64, "dropout": 0.0}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def backbone(tiny_models) -> BackboneConfig:
    return BackboneConfig(model=str(tiny_models["clip"]))


def grain(backbone: BackboneConfig, **decoder) -> GrainModel:
    """A fresh model each time: GrainModel changes its backbone (token output, frozen projection)."""
    torch.manual_seed(0)
    built = build_backbone(backbone)
    return build_model("grain", built.model, DecoderConfig(**TINY, **decoder), int(built.model_cfg["embed_dim"]))


def test_roi_embedding_pools_only_the_patch_tokens_inside_the_box(backbone):
    model = grain(backbone, region_embedding="roi", roi_size=1)
    grid_h, grid_w = model.grid_size  # 4 x 4 patches for the tiny 64-px, 16-px-patch ViT
    width = model.roi_proj.in_features
    tokens = torch.zeros(1, grid_h, grid_w, width)
    tokens[0, :2, :2] = torch.arange(width, dtype=torch.float32)  # a distinctive 2 x 2 block of cells, top left
    tokens = tokens.flatten(1, 2)
    # RoIAlign samples 2 x 2 points per bin at the cell centres of a 2-cell-wide box: no blending with neighbours.
    inside = torch.tensor([[[0.0, 0.0, 2 / grid_w, 2 / grid_h]]])
    outside = torch.tensor([[[2 / grid_w, 2 / grid_h, 1.0, 1.0]]])
    with torch.no_grad():
        got_inside = model.roi_embeddings(tokens, inside)[0, 0]
        got_outside = model.roi_embeddings(tokens, outside)[0, 0]
        expected = model.roi_proj(torch.arange(width, dtype=torch.float32))
        empty = model.roi_proj(torch.zeros(width))
    assert torch.allclose(got_inside, expected, atol=1e-5)
    assert torch.allclose(got_outside, empty, atol=1e-5)


def test_pooled_global_embedding_is_the_backbones_own_projection(backbone):
    model = grain(backbone, global_embedding="pooled")
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        image = model.encode_image(images, normalize=True)
        regions = model.encode_regions(images, normalize=True)
        pooled = F.normalize(model.backbone.visual(images)[0], dim=-1)
    assert torch.allclose(image, pooled, atol=1e-6) and torch.allclose(regions.image, pooled, atol=1e-6)
    assert model.backbone.visual.proj.requires_grad and model.global_proj is None
    assert model.queries.shape[0] == model.region_queries  # no global query in the decoder
    paper = grain(backbone, global_embedding="query")
    assert not paper.backbone.visual.proj.requires_grad and paper.queries.shape[0] == paper.region_queries + 1


def test_teacher_forced_region_embeddings_pair_each_target_with_its_matched_query():
    g = torch.Generator().manual_seed(0)
    target_roi = torch.randn(2, 3, 8, generator=g)
    query = torch.randn(2, 4, 8, generator=g)
    matches = [(torch.tensor([3, 0]), torch.tensor([1, 0])), (torch.tensor([2]), torch.tensor([2]))]
    embeds, identity = matched_region_embeds({"target_roi_embeds": target_roi, "region_query_embeds": query}, matches)
    assert [t.tolist() for t, _ in identity] == [[1, 0], [2]] and all((a == b).all() for a, b in identity)
    assert torch.allclose(embeds[0, 1], F.normalize(target_roi[0, 1] + query[0, 3], dim=-1))
    assert torch.allclose(embeds[0, 0], F.normalize(target_roi[0, 0] + query[0, 0], dim=-1))
    assert torch.allclose(embeds[1, 2], F.normalize(target_roi[1, 2] + query[1, 2], dim=-1))
    roi_only, _ = matched_region_embeds({"target_roi_embeds": target_roi}, matches)
    assert torch.allclose(roi_only, F.normalize(target_roi, dim=-1))
    plain = {"region_embeds": F.normalize(query, dim=-1)}
    same, same_matches = matched_region_embeds(plain, matches)
    assert same is plain["region_embeds"] and same_matches is matches


def test_separate_region_temperature_drives_l_rd_only(two_image_targets):
    g = torch.Generator().manual_seed(1)
    out = {
        "image_embeds": F.normalize(torch.randn(2, 8, generator=g), dim=-1),
        "caption_embeds": F.normalize(torch.randn(2, 8, generator=g), dim=-1),
        "region_embeds": F.normalize(torch.randn(2, 3, 8, generator=g), dim=-1),
        "boxes": torch.rand(2, 3, 4, generator=g) * 0.5 + 0.25,
        "description_embeds": F.normalize(torch.randn(2, 8, generator=g), dim=-1),
        "logit_scale": torch.tensor(10.0),
    }
    batch = two_image_targets
    criterion = GrainCriterion(LossConfig(), "grain")
    shared = criterion(out, batch)
    separate = criterion({**out, "region_logit_scale": torch.tensor(30.0)}, batch)
    same_scale = criterion({**out, "region_logit_scale": torch.tensor(10.0)}, batch)
    assert separate["caption"] == shared["caption"] and separate["box"] == shared["box"]
    assert separate["region"] != pytest.approx(shared["region"].item())
    assert same_scale["region"].item() == pytest.approx(shared["region"].item(), abs=1e-6)


@pytest.mark.parametrize(
    "decoder",
    [
        {"region_embedding": "roi", "roi_train_boxes": "target", "region_temperature": "separate"},
        {
            "region_embedding": "roi+query",
            "roi_train_boxes": "predicted",
            "global_embedding": "query",
            "objectness": True,
        },
    ],
)
def test_recipe_options_train_export_and_load_back(tiny_models, partsworld_small, tmp_path, decoder):
    cfg = TrainConfig.model_validate({
        "output_dir": str(tmp_path / "run"), "backbone": {"model": str(tiny_models["clip"])},
        "decoder": {**TINY, **decoder}, "data": {"train": str(partsworld_small / "train" / "truth"), "num_workers": 0},
        "batch_size": 8, "steps": 2, "log_every": 1,
    })  # fmt: skip
    result = train(cfg)
    last = read_metrics(result.output_dir)[-1]
    assert "loss/region" in last and ("loss/objectness" in last) == decoder.get("objectness", False)
    assert all(v == v for v in last.values())  # no NaN
    loaded = load_model(result.model_dir)
    assert loaded.model.config.region_embedding == decoder["region_embedding"]
    with torch.no_grad():
        regions = loaded.model.encode_regions(torch.rand(2, 3, 64, 64), normalize=True)
    assert regions.embeddings.shape == (2, 5, 32)
    assert (regions.objectness is not None) == decoder.get("objectness", False)
    assert torch.allclose(regions.embeddings.norm(dim=-1), torch.ones(2, 5), atol=1e-5)
