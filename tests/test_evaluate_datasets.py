"""Evaluation splits: explicit, checked class order; descriptor files; streaming with workers; bad images;
and the box geometry of preprocess pipelines."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from torchvision import transforms

from grainclip.config.base import ConfigError
from grainclip.config.evaluate import EvalDataset
from grainclip.evaluate.datasets import collate, load_split
from grainclip.evaluate.geometry import input_window, to_original_frame
from grainclip.images import encode_image
from grainclip.partsworld import load_classes, load_descriptors
from grainclip.schema import write_shard

PREPROCESS = transforms.Compose([transforms.Resize((16, 16)), transforms.ToTensor()])


def _image(colour, size=(20, 12)) -> Image.Image:
    return Image.new("RGB", size, colour)


@pytest.fixture()
def folder(tmp_path):
    root = tmp_path / "folder"
    for name, colour in (("black_footed_albatross", "black"), ("cardinal", "red")):
        (root / name).mkdir(parents=True)
        for i in range(3):
            _image(colour).save(root / name / f"{i}.png")
    return root


def _rows(items):
    """Drain a split's torch dataset through a DataLoader: {index: sample}."""
    return {
        int(i): (label, size)
        for batch in items
        for i, label, size in zip(batch["index"], batch["label"], batch["size"])
    }


def test_imagefolder_default_classes_and_labels(folder):
    split = load_split(EvalDataset(name="f", source={"kind": "image_folder", "path": folder}))
    assert split.classnames == ["black footed albatross", "cardinal"]
    assert split.size == 6
    loader = torch.utils.data.DataLoader(
        split.dataset(PREPROCESS, ["classification"]), batch_size=4, collate_fn=collate
    )
    rows = _rows(loader)
    assert sorted(rows) == list(range(6))
    assert [rows[i][0] for i in range(6)] == [0, 0, 0, 1, 1, 1]
    assert rows[0][1] == (20, 12)


def test_class_file_sets_order_and_names(folder, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cardinal\tnorthern cardinal\nblack_footed_albatross\n")
    split = load_split(EvalDataset(name="f", source={"kind": "image_folder", "path": folder}, classnames=classes))
    assert split.classnames == ["northern cardinal", "black footed albatross"]
    labels = [
        label
        for batch in torch.utils.data.DataLoader(
            split.dataset(PREPROCESS, ["classification"]), batch_size=6, collate_fn=collate
        )
        for label in batch["label"]
    ]
    assert labels == [0, 0, 0, 1, 1, 1]  # cardinal images come first now


def test_class_file_mismatch_names_the_classes(folder, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("cardinal\nblue_jay\n")
    with pytest.raises(ConfigError) as error:
        load_split(EvalDataset(name="f", source={"kind": "image_folder", "path": folder}, classnames=classes))
    message = str(error.value)
    assert "missing from folders under" in message and "'blue_jay'" in message
    assert "but not in class-name file" in message and "'black_footed_albatross'" in message


def test_descriptor_file_must_cover_every_class(folder, tmp_path, caplog):
    descriptors = tmp_path / "descriptors.json"
    descriptors.write_text(json.dumps({"cardinal": ["red crest"], "black footed albatross": ["long wings"]}))
    split = load_split(EvalDataset(name="f", source={"kind": "image_folder", "path": folder}, descriptors=descriptors))
    assert split.descriptors == {"black footed albatross": ["long wings"], "cardinal": ["red crest"]}
    assert list(split.descriptors) == split.classnames  # dataset order, not file order

    # A superset is read (Menon & Vondrick's loader allows it); the extra classes are counted in one line.
    descriptors.write_text(json.dumps({"owl": ["y"], "cardinal": ["red crest"], "black footed albatross": ["x"]}))
    with caplog.at_level("INFO", logger="grainclip.evaluate.datasets"):
        split = load_split(
            EvalDataset(name="f", source={"kind": "image_folder", "path": folder}, descriptors=descriptors)
        )
    assert list(split.descriptors) == split.classnames and split.descriptor_classes_ignored == 1
    assert [r.getMessage() for r in caplog.records] == [
        f"descriptor file {descriptors}: 1 class(es) not in the dataset are ignored"
    ]

    descriptors.write_text(json.dumps({"cardinal": ["red crest"], "black_footed_albatross": ["x"], "owl": ["y"]}))
    with pytest.raises(ConfigError) as error:
        load_split(EvalDataset(name="f", source={"kind": "image_folder", "path": folder}, descriptors=descriptors))
    assert str(error.value) == (
        f"descriptor file {descriptors} has no descriptors for 1 of the dataset's 2 classes: 'black footed albatross'"
    )

    descriptors.write_text(json.dumps({"cardinal": [], "black footed albatross": ["x"]}))
    with pytest.raises(ConfigError, match="class 'cardinal' needs a non-empty list"):
        load_split(EvalDataset(name="f", source={"kind": "image_folder", "path": folder}, descriptors=descriptors))


def test_task_needs_what_the_data_has(folder):
    with pytest.raises(ConfigError, match="task 'retrieval' needs captions"):
        load_split(EvalDataset(name="f", source={"kind": "image_folder", "path": folder}, tasks=["retrieval"]))


def _annotation_rows(tmp_path, labels, broken=()):
    rows = []
    for i, label in enumerate(labels):
        image = b"\x89PNG broken" if i in broken else encode_image(_image("white" if i % 2 else "black"))
        rows.append(
            {
                "image_id": f"img-{i}",
                "image": image,
                "caption": f"a photo of a {label}",
                "width": 20,
                "height": 12,
                "class_name": label,
                "descriptions": ["dot"],
                "status": "ok",
                "regions": [{"text": "dot", "box": [0.1, 0.1, 0.5, 0.5], "score": 1.0}],
            }
        )
    path = tmp_path / "shards"
    table = pa.Table.from_pylist(rows)
    write_shard(table.slice(0, 3), path / "part-0.parquet", "annotations")
    write_shard(table.slice(3), path / "part-1.parquet", "annotations")
    return path


@pytest.mark.parametrize("workers", [0, 2])
def test_parquet_stream_covers_every_row_once_and_reports_bad_images(tmp_path, workers):
    path = _annotation_rows(tmp_path, ["b", "a", "b", "c", "a"], broken={3})
    split = load_split(
        EvalDataset(
            name="p", source={"kind": "parquet", "path": path}, tasks=["classification", "retrieval", "grounding"]
        )
    )
    assert split.classnames == ["a", "b", "c"] and split.size == 5
    dataset = split.dataset(PREPROCESS, ["classification", "retrieval", "grounding"])
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate)
    seen, errors = {}, []
    for batch in loader:
        errors += batch["errors"]
        for i, label, caption, regions in zip(
            batch["index"].tolist(), batch["label"], batch["caption"], batch["regions"]
        ):
            assert i not in seen
            seen[i] = (label, caption, regions)
    assert sorted(seen) == [0, 1, 2, 4]
    assert [seen[i][0] for i in (0, 1, 2, 4)] == [1, 0, 1, 0]
    assert seen[4][1] == "a photo of a a" and seen[0][2] == [("dot", pytest.approx([0.1, 0.1, 0.5, 0.5]))]
    assert [(index, image_id) for index, image_id, _ in errors] == [(3, "img-3")]


def test_one_row_group_is_shared_between_workers(tmp_path):
    """Small shards are often a single row group: its record batches are dealt to the workers in turn."""
    from grainclip.evaluate.datasets import ParquetImages
    from grainclip.schema import list_row_groups

    path = tmp_path / "one.parquet"
    write_shard(
        pa.Table.from_pylist(
            [{"image_id": f"i{i}", "image": encode_image(_image("red")), "width": 20, "height": 12} for i in range(5)]
        ),
        path,
        "images",
    )
    assert len(list_row_groups(path)) == 1
    dataset = ParquetImages(list_row_groups(path), PREPROCESS, None, None, None, False, batch_rows=2)
    # DataLoader takes one sample from each worker in turn: worker 0 has rows 0,1,4 and worker 1 rows 2,3.
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2, collate_fn=collate)
    assert [int(batch["index"][0]) for batch in loader] == [0, 2, 1, 3, 4]


def test_parquet_labels_outside_the_class_file_rejected(tmp_path):
    path = _annotation_rows(tmp_path, ["a", "b", "zebra"])
    classes = tmp_path / "classes.txt"
    classes.write_text("a\nb\n")
    with pytest.raises(ConfigError, match=r"labels \['zebra'\] in column 'class_name' are not in the class list"):
        load_split(EvalDataset(name="p", source={"kind": "parquet", "path": path}, classnames=classes))


def test_parquet_limit(tmp_path):
    path = _annotation_rows(tmp_path, ["a", "b", "a", "b", "a"])
    split = load_split(EvalDataset(name="p", source={"kind": "parquet", "path": path}, limit=4))
    indices = [
        i
        for batch in torch.utils.data.DataLoader(
            split.dataset(PREPROCESS, ["classification"]), batch_size=8, collate_fn=collate
        )
        for i in batch["index"].tolist()
    ]
    assert split.size == 4 and indices == [0, 1, 2, 3]


def test_partsworld_split(partsworld_small):
    split = load_split(
        EvalDataset(
            name="novel",
            source={"kind": "partsworld", "path": partsworld_small, "split": "test_novel"},
            tasks=["classification", "retrieval", "grounding"],
        )
    )
    novel = load_classes(partsworld_small)["novel"]
    assert split.classnames == novel
    assert split.descriptors == {name: load_descriptors(partsworld_small)[name] for name in novel}
    assert split.has_regions and split.has_captions and split.size == 32
    with pytest.raises(ConfigError, match="no split 'test_unseen'"):
        load_split(
            EvalDataset(name="x", source={"kind": "partsworld", "path": partsworld_small, "split": "test_unseen"})
        )


def test_input_window_of_common_preprocess_pipelines():
    import open_clip

    shortest = open_clip.image_transform(64, is_train=False, resize_mode="shortest")
    np.testing.assert_allclose(input_window(shortest, 200, 100), [0.25, 0.0, 0.75, 1.0], atol=1e-6)
    np.testing.assert_allclose(input_window(shortest, 100, 300), [0.0, 1 / 3, 1.0, 2 / 3], atol=1e-6)
    squash = open_clip.image_transform(64, is_train=False, resize_mode="squash")
    np.testing.assert_allclose(input_window(squash, 200, 100), [0, 0, 1, 1], atol=1e-6)
    longest = open_clip.image_transform(64, is_train=False, resize_mode="longest")  # pads the short side
    np.testing.assert_allclose(input_window(longest, 200, 100), [0.0, -0.5, 1.0, 1.5], atol=1e-6)


def test_boxes_back_to_the_original_frame():
    window = np.array([0.25, 0.0, 0.75, 1.0])
    boxes = np.array([[0.0, 0.0, 1.0, 1.0], [0.5, 0.5, 1.0, 1.0]])
    np.testing.assert_allclose(to_original_frame(boxes, window), [[0.25, 0, 0.75, 1], [0.5, 0.5, 0.75, 1]])
    padded = np.array([0.0, -0.5, 1.0, 1.5])
    np.testing.assert_allclose(to_original_frame(np.array([[0, 0, 1, 0.5]]), padded), [[0, 0, 1, 0.5]])


def test_the_old_flat_dataset_spelling_maps_onto_a_source_and_says_so(partsworld_small, caplog):
    """`{type: partsworld, root: ...}` (before datasets had a `source`) still loads, with its old default split."""
    old = EvalDataset.model_validate({"name": "novel", "type": "partsworld", "root": str(partsworld_small)})
    new = EvalDataset(name="novel", source={"kind": "partsworld", "path": str(partsworld_small), "split": "test_novel"})
    assert old == new
    assert "old spelling" in caplog.text and "source: {kind: partsworld" in caplog.text
    folder = EvalDataset.model_validate({"name": "f", "type": "imagefolder", "root": "pets"})
    assert (folder.source.kind, folder.source.path) == ("image_folder", "pets")
    with pytest.raises(ValueError, match="unknown source kind 'timm'"):
        EvalDataset.model_validate({"name": "x", "type": "timm", "root": "."})


def test_a_source_without_a_local_form_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="dataset 'w': source kind 'webdataset' cannot be read without Ray"):
        load_split(EvalDataset(name="w", source={"kind": "webdataset", "path": str(tmp_path)}))
