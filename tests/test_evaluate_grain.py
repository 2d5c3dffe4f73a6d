"""Region-aware scoring: the formulas by hand, and a constructed case where the global embedding cannot tell
two classes apart but a region matches a descriptor exactly, run through the whole evaluator.

The model here is a small real torch module built for the case (no GRAIN checkpoint is needed to test the
evaluator): it looks at the top half ("crest") and bottom half ("body") of an image, names each half's
dominant colour, and embeds region texts with the same bag-of-words text tower it uses for class text. Its
global embedding is the bag of both colours, so "red crest + blue body" and "blue crest + red body" look
identical globally: only binding colours to parts separates them.
"""

from __future__ import annotations

import json
import zlib

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torchvision import transforms

from grainclip.config.evaluate import EvalDataset, ScoringConfig
from grainclip.evaluate.datasets import load_split
from grainclip.evaluate.runner import PassSettings, evaluate_split, zero_shot_accuracy
from grainclip.evaluate.scoring import grain_scores, region_descriptor_similarity, region_scores, standardize
from grainclip.images import encode_image
from grainclip.model_api import LoadedModel, RegionModel, RegionOutput
from grainclip.schema import write_shard

COLOURS = ["red", "green", "blue"]
RGB = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220)}
DESCRIPTORS = {"alpha": ["red crest", "blue body"], "beta": ["blue crest", "red body"]}
TOP, BOTTOM, MIDDLE = [0.0, 0.0, 1.0, 0.5], [0.0, 0.5, 1.0, 1.0], [0.25, 0.25, 0.75, 0.75]


class BagOfWordsTokenizer:
    def __call__(self, texts: list[str]) -> torch.Tensor:
        ids = [
            [1 + zlib.crc32(word.encode()) % 4095 for word in text.lower().replace(",", " ").replace(".", " ").split()]
            for text in texts
        ]
        tokens = torch.zeros(len(texts), max(len(i) for i in ids), dtype=torch.long)
        for row, row_ids in enumerate(ids):
            tokens[row, : len(row_ids)] = torch.tensor(row_ids)
        return tokens


class TwoPartModel(nn.Module):
    """Regions: [top colour + crest, bottom colour + body, and two 'unmatched' queries with the bindings swapped]."""

    def __init__(self, with_objectness: bool = True) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.words = nn.Embedding(4096, 64, padding_idx=0, _weight=torch.randn(4096, 64, generator=generator))
        self.tokenizer = BagOfWordsTokenizer()
        self.with_objectness = with_objectness
        ids = self.tokenizer(COLOURS + ["crest", "body"])[:, 0]
        self.register_buffer("colour_ids", ids[:3])
        self.register_buffer("part_ids", ids[3:])

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        mask = (tokens > 0).float()[..., None]
        embeddings = (self.words(tokens) * mask).sum(1) / mask.sum(1)
        return F.normalize(embeddings, dim=-1) if normalize else embeddings

    def _colours(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = images.shape[2] // 2
        top = images[:, :, :half].mean(dim=(2, 3)).argmax(dim=1)
        bottom = images[:, :, half:].mean(dim=(2, 3)).argmax(dim=1)
        return self.colour_ids[top], self.colour_ids[bottom]

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        top, bottom = self._colours(images)
        return self.encode_text(torch.stack([top, bottom], dim=1), normalize)

    def encode_regions(self, images: torch.Tensor, normalize: bool = False) -> RegionOutput:
        top, bottom = self._colours(images)
        crest, body = (self.part_ids[i].expand_as(top) for i in range(2))
        texts = [(top, crest), (bottom, body), (bottom, crest), (top, body)]  # last two: swapped (wrong) bindings
        embeddings = torch.stack([self.encode_text(torch.stack(pair, dim=1), normalize) for pair in texts], dim=1)
        boxes = torch.tensor([TOP, BOTTOM, MIDDLE, MIDDLE]).expand(len(images), 4, 4)
        objectness = torch.tensor([0.9, 0.9, 0.1, 0.1]).expand(len(images), 4) if self.with_objectness else None
        return RegionOutput(embeddings, boxes, objectness)


def loaded_model(preprocess=None, with_objectness: bool = True) -> LoadedModel:
    model = TwoPartModel(with_objectness).eval()
    preprocess = preprocess or transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])
    return LoadedModel(model, preprocess, model.tokenizer, "grain", "two-part")


def creature(crest: str, body: str, size=(32, 32)) -> Image.Image:
    image = Image.new("RGB", size, RGB[body])
    image.paste(RGB[crest], (0, 0, size[0], size[1] // 2))
    return image


@pytest.fixture()
def creatures(tmp_path):
    """ImageFolder: 3 alpha (red crest, blue body) and 3 beta (blue crest, red body) images + descriptors."""
    for name, (crest, body) in {"alpha": ("red", "blue"), "beta": ("blue", "red")}.items():
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(3):
            creature(crest, body).save(tmp_path / "data" / name / f"{i}.png")
    (tmp_path / "descriptors.json").write_text(json.dumps(DESCRIPTORS))
    return load_split(
        EvalDataset(
            name="creatures",
            source={"kind": "image_folder", "path": tmp_path / "data"},
            descriptors=tmp_path / "descriptors.json",
        )
    )


def test_toy_model_satisfies_the_region_protocol():
    assert isinstance(TwoPartModel(), RegionModel)


def test_region_scores_by_hand():
    # One image, three regions in 2-D; descriptors d0=(1,0) [class 0], d1=(0,1) [class 0], d2=(0.6,0.8) [class 1].
    regions = RegionOutput(
        embeddings=torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]]),
        boxes=torch.zeros(1, 3, 4),
        objectness=torch.tensor([[0.9, 0.2, 0.8]]),
    )
    descriptors = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    owners = torch.tensor([0, 0, 1])
    all_regions = region_descriptor_similarity(RegionOutput(regions.embeddings, regions.boxes), descriptors, 0.5)
    assert torch.allclose(all_regions, torch.tensor([[1.0, 1.0, 1.0]]))
    kept = region_descriptor_similarity(regions, descriptors, 0.5)  # region 1 (objectness 0.2) left out
    assert torch.allclose(kept, torch.tensor([[1.0, 0.8, 1.0]]))
    assert torch.allclose(region_scores(kept, owners, 2), torch.tensor([[0.9, 1.0]]))
    # No region above the threshold: the most object-like one is kept, never an empty max.
    lonely = region_descriptor_similarity(regions, descriptors, 0.95)
    assert torch.allclose(lonely, torch.tensor([[1.0, 0.0, 0.6]]))


def test_standardize_and_mix():
    g = np.array([[0.30, 0.32, 0.10], [0.20, 0.10, 0.40]])
    r = np.array([[0.9, 0.1, 0.5], [0.2, 0.6, 0.1]])
    # `none` is the paper's formula exactly.
    np.testing.assert_allclose(grain_scores(g, r, 0.3, "none"), 0.3 * g + 0.7 * r)
    # `split`: rows centred, one pooled spread for the whole split.
    centred = g - g.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(standardize(g, "split"), centred / np.sqrt((centred**2).mean()))
    # alpha 1 and 0 rank exactly like the pure scores.
    assert (grain_scores(g, r, 1.0, "split").argmax(1) == g.argmax(1)).all()
    assert (grain_scores(g, r, 0.0, "split").argmax(1) == r.argmax(1)).all()
    with pytest.raises(ValueError, match="unknown standardization"):
        standardize(g, "zscore")


def _settings(**scoring) -> PassSettings:
    # "the": the bag-of-words text tower would count an article fitted to the name ("an alpha", "a beta") as a
    # class feature of its own; these tests are about region scores.
    return PassSettings(
        templates=["a photo of the {}."], scoring=ScoringConfig(**scoring), batch_size=4, num_workers=0, grid_images=2
    )


def _top1(results) -> dict[str, float]:
    return {r["mode"]: r["top1"] for r in results["classification"]}


def test_grain_picks_the_class_global_cannot(creatures):
    results, grid = evaluate_split(loaded_model(), creatures, ["classification"], _settings(), torch.device("cpu"))
    top1 = _top1(results)
    # The global embedding is the same for every image, so global modes give every image the same class.
    assert top1["global"] <= 0.5 and top1["global+descriptors"] <= 0.5
    assert top1["grain"] == 1.0
    sweep = {s["alpha"]: s["top1"] for s in results["alpha_sweep"]}
    assert sweep[0.0] == 1.0 and sweep[1.0] == top1["global+descriptors"]
    # The grid shows the regions kept (objectness >= 0.5) with the descriptor each matches exactly.
    assert grid[0]["label"] == grid[0]["prediction"] == "alpha"
    assert grid[0]["descriptors"] == ["red crest", "blue body"]
    assert grid[0]["similarities"] == pytest.approx([1.0, 1.0])


def test_unmatched_regions_pollute_the_max_without_objectness(creatures):
    # The swapped-binding queries match the WRONG class's descriptors exactly: with them in the max both
    # classes score 1.0 on regions and the tie counts as an error; the objectness threshold removes them.
    polluted, _ = evaluate_split(
        loaded_model(with_objectness=False), creatures, ["classification"], _settings(), torch.device("cpu")
    )
    ignored_objectness, _ = evaluate_split(
        loaded_model(), creatures, ["classification"], _settings(objectness_threshold=0.0), torch.device("cpu")
    )
    filtered, _ = evaluate_split(
        loaded_model(), creatures, ["classification"], _settings(objectness_threshold=0.5), torch.device("cpu")
    )
    assert {s["alpha"]: s["top1"] for s in polluted["alpha_sweep"]}[0.0] == 0.0
    assert _top1(polluted)["grain"] <= 0.5 and _top1(ignored_objectness)["grain"] <= 0.5
    assert _top1(filtered)["grain"] == 1.0


def test_zero_shot_hook_restores_training_mode(creatures):
    loaded = loaded_model()
    loaded.model.train()
    metrics = zero_shot_accuracy(loaded, creatures, modes=("global", "grain"), templates=["a photo of the {}."])
    assert loaded.model.training
    assert metrics["grain/top1"] == 1.0 and metrics["global/top1"] <= 0.5
    assert set(metrics) == {f"{m}/{k}" for m in ("global", "grain") for k in ("top1", "top5", "mean_per_class_recall")}


def test_grounding_in_the_original_frame(tmp_path):
    """Wide images seen through a centre crop: predicted boxes must be mapped back before IoU."""
    crop = transforms.Compose([transforms.Resize(32), transforms.CenterCrop(32), transforms.ToTensor()])
    rows = []
    for i in range(4):
        crest, body = ("red", "blue") if i % 2 == 0 else ("blue", "red")
        image = creature(crest, body, size=(128, 32))  # the model sees x in [0.375, 0.625] of it
        rows.append(
            {
                "image_id": f"c{i}",
                "image": encode_image(image),
                "caption": f"{crest} crest",
                "width": 128,
                "height": 32,
                "class_name": "alpha" if i % 2 == 0 else "beta",
                "descriptions": [],
                "status": "ok",
                "regions": [
                    {"text": f"{crest} crest", "box": [0.375, 0.0, 0.625, 0.5], "score": 1.0},
                    {"text": f"{body} body", "box": [0.375, 0.5, 0.625, 1.0], "score": 1.0},
                    {"text": f"{body} body", "box": [0.0, 0.0, 0.1, 0.1], "score": 1.0},  # 2nd box, same text: any-box
                    {"text": "green tail", "box": [0.9, 0.9, 1.0, 1.0], "score": 1.0},  # not in the image
                ],
            }
        )
    write_shard(pa.Table.from_pylist(rows), tmp_path / "truth" / "part-0.parquet", "annotations")
    split = load_split(
        EvalDataset(
            name="truth", source={"kind": "parquet", "path": tmp_path / "truth"}, tasks=["grounding", "retrieval"]
        )
    )
    results, _ = evaluate_split(loaded_model(crop), split, ["grounding", "retrieval"], _settings(), torch.device("cpu"))
    grounding = results["grounding"]
    assert grounding["n_descriptions"] == 12  # 3 distinct descriptions x 4 images
    assert grounding["recall@iou0.5"] == pytest.approx(2 / 3)
    assert 2 / 3 - 1e-6 <= grounding["mean_iou"] < 2 / 3 + 0.05
    # Captions: two distinct strings; every image's global embedding is the same bag, so ranking is a coin toss
    # between the two captions; the shared-caption rule makes each text's positives two images.
    assert results["retrieval"]["n_texts"] == 2 and results["retrieval"]["n_images"] == 4
