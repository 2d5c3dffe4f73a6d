"""Annotation rows -> training samples (boxes move with pixels, bad rows skipped and counted) and the
streaming loader (every row once per epoch across shards, deterministic, resumable mid-epoch)."""

from __future__ import annotations

import itertools

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from grainclip.config.train import DataConfig
from grainclip.images import encode_image
from grainclip.schema import conform, list_row_groups
from grainclip.testing.corpus import write_bad_input_corpus
from grainclip.train.data import EpochOrder, StreamPosition, make_loader
from grainclip.train.samples import SampleBuilder, Skipped, text_id

SIZE = 32


@pytest.fixture(scope="module")
def tokenizer():
    return open_clip.get_tokenizer("ViT-B-32")


def builder_for(tokenizer, tmp_path=None, **data) -> SampleBuilder:
    config = DataConfig(train=tmp_path or ".", **data)
    return SampleBuilder(config, SIZE, tokenizer, with_regions=True, seed=0)


def red_box_row(box_px: tuple[int, int, int, int], width: int = 96, height: int = 64) -> dict:
    image = Image.new("RGB", (width, height), (0, 0, 0))
    image.paste((255, 0, 0), box_px)
    x1, y1, x2, y2 = box_px
    box = [x1 / width, y1 / height, x2 / width, y2 / height]
    return {
        "image_id": "red",
        "image": encode_image(image),
        "caption": "a red box",
        "llm_caption": "a red rectangle on black",
        "status": "ok",
        "regions": [{"text": "red box", "box": box, "score": 0.9}],
    }


def red_extent(image: np.ndarray) -> tuple[int, np.ndarray | None]:
    red = (image[0] > 128) & (image[1] < 100)
    if not red.any():
        return 0, None
    ys, xs = np.nonzero(red)
    return int(red.sum()), np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float32)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.mark.parametrize("augment", [{}, {"random_resized_crop": True, "hflip": True, "crop_scale": (0.3, 1.0)}])
def test_boxes_follow_the_pixels_through_every_augmentation(tokenizer, augment):
    builder = builder_for(tokenizer, **augment)
    row = red_box_row((50, 10, 80, 40))
    flipped = kept = 0
    for epoch in range(24):
        sample = builder(row, epoch)
        _, extent = red_extent(sample["image"])
        if sample["box_mask"][0]:
            kept += 1
            box = sample["boxes"][0] * SIZE
            assert extent is not None and iou(box, extent) > 0.8, (epoch, box, extent)
            flipped += box[0] < SIZE / 2 - 4
        else:
            # dropped only when what is left in the crop is thinner than min_box_pixels (2), blur aside
            assert extent is None or min(extent[2] - extent[0], extent[3] - extent[1]) <= 3, (epoch, extent)
    assert kept >= 12
    assert (flipped > 0) == bool(augment)  # without flip the box stays on the right half


@pytest.mark.parametrize(("image_alpha", "expected"), [("white", [255, 255, 255]), ("drop", [255, 0, 0])])
def test_transparent_pixels_train_as_the_image_alpha_option_says(tokenizer, image_alpha, expected):
    pixels = np.zeros((SIZE, SIZE, 4), dtype=np.uint8)
    pixels[..., 0] = 255  # red under fully transparent alpha: white when composited, red when the alpha is dropped
    row = {**red_box_row((0, 0, 8, 8)), "image": encode_image(Image.fromarray(pixels, "RGBA"))}
    sample = builder_for(tokenizer, image_alpha=image_alpha)(row, epoch=0)
    assert sample["image"][:, SIZE // 2, SIZE // 2].tolist() == expected


def test_invalid_regions_are_dropped_with_their_texts_and_the_rest_stay_aligned(tokenizer):
    row = red_box_row((50, 10, 80, 40))
    row["regions"] = [
        {"text": "low score", "box": [0.1, 0.1, 0.4, 0.4], "score": 0.2},
        {"text": "degenerate", "box": [0.3, 0.3, 0.3, 0.6], "score": 0.99},
        {"text": "not a number", "box": [float("nan"), 0.1, 0.5, 0.5], "score": 0.95},
        {"text": "", "box": [0.1, 0.1, 0.2, 0.2], "score": 0.9},
        {"text": "high score", "box": [0.5, 0.1, 0.9, 0.7], "score": 0.8},
        {"text": "outside", "box": [1.2, 1.1, 1.5, 1.4], "score": 0.7},
    ]
    sample = builder_for(tokenizer, max_regions=3)(row, 0)
    # kept in score order: high score, low score (degenerate/outside vanish as boxes, NaN/empty text as rows)
    assert sample["box_mask"].tolist() == [True, True, False]
    assert sample["description_ids"][:2].tolist() == [text_id("high score"), text_id("low score")]
    np.testing.assert_allclose(sample["boxes"][0], [0.5, 0.1, 0.9, 0.7], atol=1 / SIZE)
    np.testing.assert_allclose(sample["boxes"][1], [0.1, 0.1, 0.4, 0.4], atol=1 / SIZE)
    assert sample["description_tokens"][0].tolist() == tokenizer(["high score"])[0].tolist()
    assert sample["regions_dropped"] == 4 and sample["regions_truncated"] == 0
    truncated = builder_for(tokenizer, max_regions=1)(row, 0)
    assert truncated["regions_truncated"] == 1 and truncated["box_mask"].tolist() == [True]


def test_caption_is_alt_text_or_llm_caption_half_the_time_and_reproducibly(tokenizer):
    builder = builder_for(tokenizer)
    rows = [{**red_box_row((5, 5, 20, 20)), "image_id": f"im{i}"} for i in range(200)]
    llm = tokenizer(["a red rectangle on black"])[0].numpy()
    picks = [np.array_equal(builder(row, 0)["caption_tokens"], llm) for row in rows]
    assert 0.38 < np.mean(picks) < 0.62
    assert picks == [np.array_equal(builder_for(tokenizer)(row, 0)["caption_tokens"], llm) for row in rows]
    assert picks != [np.array_equal(builder(row, 1)["caption_tokens"], llm) for row in rows]  # new epoch, new draw
    only_alt = {**rows[0], "llm_caption": None}
    assert all(builder(only_alt, e)["caption_ids"] == text_id("a red box") for e in range(10))
    assert builder({**rows[0], "llm_caption": " ", "caption": None}, 0) == Skipped("caption")
    always_llm = builder_for(tokenizer, llm_caption_prob=1.0)
    assert all(always_llm(row, 0)["caption_ids"] == text_id("a red rectangle on black") for row in rows[:20])


def test_bad_annotation_rows_are_skipped_by_status_and_reason(tokenizer, tmp_path):
    corpus = write_bad_input_corpus(tmp_path / "corpus")
    rows = {row["image_id"]: row for row in pq.read_table(corpus["annotations"]).to_pylist()}
    builder = builder_for(tokenizer)
    outcome = {image_id: builder(row, 0) for image_id, row in rows.items()}
    assert outcome["describe_failed"] == Skipped("status")
    assert outcome["zero_bytes"] == outcome["truncated"] == outcome["missing_image"] == Skipped("image")
    for trainable in ("good", "no_regions", "empty_descriptions", "degenerate_box", "nan_box"):
        assert isinstance(outcome[trainable], dict), trainable
    assert outcome["good"]["box_mask"].sum() == 1
    assert outcome["no_regions"]["box_mask"].sum() == outcome["empty_descriptions"]["box_mask"].sum() == 0
    assert outcome["degenerate_box"]["description_ids"][0] == text_id("blue wings")
    assert outcome["degenerate_box"]["box_mask"].sum() == 1 and outcome["degenerate_box"]["regions_dropped"] == 1
    assert outcome["nan_box"]["box_mask"].sum() == 0 and outcome["nan_box"]["regions_dropped"] == 1

    # Streamed, no row is lost: every consumed row is either a sample or counted as skipped.
    order = EpochOrder(list_row_groups(corpus["annotations"]), window=2, seed=0)
    position = StreamPosition(num_shards=1)
    loader = make_loader(order, builder, batch_size=4, num_workers=0, prefetch_batches=1, position=position)
    batches = list(itertools.islice(loader, 5))
    for batch in batches:
        position.advance(batch)
    skipped = sum(
        int(batch[key].sum()) for batch in batches for key in ("skipped_status", "skipped_image", "skipped_caption")
    )
    assert skipped == position.cursors[0] - 20
    assert sum(int(b["skipped_status"].sum()) for b in batches) >= 3  # 20 samples span > 3 epochs of 5
    assert sum(int(b["skipped_image"].sum()) for b in batches) >= 9


def write_dataset(folder, files: int = 3, rows_per_group: int = 7, groups: int = 2) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    png = encode_image(Image.new("RGB", (8, 8), (0, 128, 255)))
    for f in range(files):
        rows = []
        for i in range(rows_per_group * groups):
            image_id = f"f{f}-{i:02d}"
            ids.append(image_id)
            rows.append({
                "image_id": image_id, "image": png, "caption": f"caption {image_id}", "status": "ok",
                "width": 8, "height": 8, "regions": [{"text": "blue", "box": [0.1, 0.1, 0.9, 0.9], "score": 1.0}],
            })  # fmt: skip
        table = conform(pa.Table.from_pylist(rows), "annotations")
        pq.write_table(table, folder / f"part-{f}.parquet", row_group_size=rows_per_group)
    return ids


def test_every_row_once_per_epoch_across_shards_in_a_fresh_order_each_epoch(tmp_path):
    ids = write_dataset(tmp_path / "data")
    groups = list_row_groups(tmp_path / "data")
    assert len(groups) == 6
    order = EpochOrder(groups, window=2, seed=3)
    shards = 4
    per_epoch = []
    for epoch in range(2):
        seen = []
        for shard in range(shards):
            size = order.shard_size(shard, shards)
            rows = list(itertools.islice(order.shard_rows(shard, shards, epoch * size), size))
            assert all(e == epoch for e, _, _ in rows)
            seen += [row["image_id"] for _, _, row in rows]
        assert sorted(seen) == sorted(ids)
        per_epoch.append(seen)
    assert per_epoch[0] != per_epoch[1]
    again = EpochOrder(list_row_groups(tmp_path / "data"), window=2, seed=3)
    assert [r["image_id"] for _, _, r in itertools.islice(again.shard_rows(1, shards, 0), 30)] == [
        r["image_id"] for _, _, r in itertools.islice(order.shard_rows(1, shards, 0), 30)
    ]


def test_a_shard_stream_restarts_exactly_at_any_cursor(tmp_path):
    write_dataset(tmp_path / "data")
    order = EpochOrder(list_row_groups(tmp_path / "data"), window=4, seed=1)
    full = [(e, c, r["image_id"]) for e, c, r in itertools.islice(order.shard_rows(1, 3, 0), 40)]
    for cursor in (0, 5, 13, 14, 29):
        resumed = [(e, c, r["image_id"]) for e, c, r in itertools.islice(order.shard_rows(1, 3, cursor), 40 - cursor)]
        assert resumed == full[cursor:]


def test_loader_with_workers_resumes_mid_epoch_with_the_same_batches(tmp_path, tokenizer):
    write_dataset(tmp_path / "data", files=2)
    builder = builder_for(tokenizer, tmp_path / "data", random_resized_crop=True, hflip=True)
    order = EpochOrder(list_row_groups(tmp_path / "data"), window=2, seed=0)

    def batches(position: StreamPosition, count: int) -> list[dict[str, torch.Tensor]]:
        loader = make_loader(order, builder, batch_size=3, num_workers=2, prefetch_batches=2, position=position)
        out = []
        for batch in itertools.islice(loader, count):
            position.advance(batch)
            out.append(batch)
        return out

    uninterrupted = batches(StreamPosition(num_shards=2), 12)
    position = StreamPosition(num_shards=2)
    first = batches(position, 7)  # stop after an odd number of batches: worker order must rotate
    state = position.state_dict()
    resumed = batches(StreamPosition.from_state(state, num_shards=2), 5)
    for expected, got in zip(uninterrupted, first + resumed, strict=True):
        assert torch.equal(expected["caption_ids"], got["caption_ids"])
        assert torch.equal(expected["image"], got["image"])
        assert torch.equal(expected["boxes"], got["boxes"])
