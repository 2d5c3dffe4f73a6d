"""PartsWorld: class construction guarantees, geometry that matches the pixels, on-disk contracts, CLI."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from grainclip import schema
from grainclip.config.base import ConfigError
from grainclip.partsworld import (
    PALETTE,
    SPLITS,
    VAL_SPLITS,
    PartsWorldPaths,
    generate,
    load_classes,
    load_descriptors,
    make_scene,
)

COLOURED = ("crest", "wings", "tail")


def truth_rows(root: Path, split: str) -> list[dict]:
    return schema.read_table(PartsWorldPaths.at(root).truth(split), "annotations").to_pylist()


def colour_mask_box(image: Image.Image, colour: tuple[int, int, int]) -> tuple[float, float, float, float]:
    """Pixel-edge xyxy of all pixels that have exactly `colour`."""
    mask = np.all(np.asarray(image) == np.asarray(colour, dtype=np.uint8), axis=-1)
    assert mask.any(), f"no pixel of colour {colour}"
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def assert_boxes_match_part_pixels(image: Image.Image, regions: list[dict] | list[tuple], tolerance: float) -> None:
    """The box of each coloured part hugs exactly the pixels drawn in that part's palette colour."""
    width, height = image.size
    for region in regions:
        text, box = (region["text"], region["box"]) if isinstance(region, dict) else region
        colour_name, part = text.split(" ", 1)
        if part not in COLOURED:
            continue
        expected = np.asarray(box) * [width, height, width, height]
        found = np.asarray(colour_mask_box(image, PALETTE[colour_name]), dtype=float)
        assert np.abs(found - expected).max() <= tolerance, (text, found, expected, image.size)


# --- the class catalogue ----------------------------------------------------------------------------------


def test_novel_classes_rebind_seen_attributes(partsworld_small):
    classes = load_classes(partsworld_small)
    seen, novel, bindings = classes["seen"], classes["novel"], classes["bindings"]
    assert 12 <= len(seen) <= 24 and 12 <= len(novel) <= 24
    assert not set(seen) & set(novel)
    assert set(bindings) == set(seen) | set(novel)
    allowed = {value for values in classes["attributes"].values() for value in values}
    for name, binding in bindings.items():
        assert set(binding) <= set(classes["parts"]) and set(binding.values()) <= allowed, name

    def multiset(name: str) -> list[str]:
        return sorted(bindings[name].values())

    seen_multisets = [multiset(name) for name in seen]
    seen_pairs = {(part, value) for name in seen for part, value in bindings[name].items()}
    for name in novel:
        assert multiset(name) in seen_multisets, f"{name}: attribute multiset not shared by any seen class"
        assert bindings[name] not in [bindings[s] for s in seen], f"{name} duplicates a seen class"
        # Every (part, value) of a novel class is learnable from training data: only the combination is new.
        assert set(bindings[name].items()) <= seen_pairs, name
        # A model that sees only which values are present cannot beat 1/3 among the novel classes.
        assert sum(multiset(other) == multiset(name) for other in novel) >= 3, name


def test_descriptors_cover_every_class(partsworld_small):
    classes, descriptors = load_classes(partsworld_small), load_descriptors(partsworld_small)
    assert set(descriptors) == set(classes["seen"]) | set(classes["novel"])
    for name, phrases in descriptors.items():
        expected = [f"{value} {part}" for part, value in classes["bindings"][name].items()]
        assert phrases == expected, name
    assert len({tuple(p) for p in descriptors.values()}) == len(descriptors), "two classes share all descriptors"


def test_load_helpers_say_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="PartsWorld"):
        load_classes(tmp_path)
    with pytest.raises(ValueError, match="unknown PartsWorld class"):
        make_scene("not-a-class", 0)


# --- geometry ---------------------------------------------------------------------------------------------


def test_same_scene_has_the_same_normalised_boxes_at_any_size():
    for name, seed in (("florp", 0), ("zanthe", 5)):
        scene = make_scene(name, seed)
        renders = [scene.render(width, height) for width, height in ((224, 224), (320, 160), (150, 300))]
        for image, regions in renders:
            assert [text for text, _ in regions] == [text for text, _ in renders[0][1]]
            np.testing.assert_allclose([box for _, box in regions], [box for _, box in renders[0][1]], atol=1e-7)
            # ... and the pixels follow the boxes in every frame (catches a swapped width/height).
            assert_boxes_match_part_pixels(image, regions, tolerance=1.5)


def test_truth_boxes_are_inside_the_image_and_hug_the_parts(partsworld_small):
    rows = [row for split in SPLITS for row in truth_rows(partsworld_small, split)]
    assert rows
    for row in rows:
        image = Image.open(io.BytesIO(row["image"]))
        assert image.size == (row["width"], row["height"]) == (64, 64)
        assert len(row["regions"]) == 4
        for region in row["regions"]:
            x1, y1, x2, y2 = region["box"]
            assert 0.0 <= x1 < x2 <= 1.0 and 0.0 <= y1 < y2 <= 1.0, region
            assert (x2 - x1) * 64 >= 2 and (y2 - y1) * 64 >= 2, f"part smaller than 2 px: {region}"
        assert_boxes_match_part_pixels(image.convert("RGB"), row["regions"], tolerance=1.5)


# --- the dataset on disk ----------------------------------------------------------------------------------


def test_layout_contracts_and_truth_content(partsworld_small):
    paths = PartsWorldPaths.at(partsworld_small)
    classes, descriptors = load_classes(partsworld_small), load_descriptors(partsworld_small)
    manifest = json.loads(paths.manifest.read_text())
    assert manifest["seed"] == 0 and manifest["image_size"] == 64
    assert manifest["counts"] == {"train": 64, "test_seen": 32, "test_novel": 32, "val_seen": 32, "val_novel": 32}
    assert manifest["val_seed"] == 1
    ids = []
    for split, class_split in SPLITS.items():
        images_file, truth_file = paths.images(split) / "part-00000.parquet", paths.truth(split) / "part-00000.parquet"
        assert schema.kind_of(images_file) == "images" and schema.kind_of(truth_file) == "annotations"
        images = schema.validate(pq.read_table(images_file), "images")
        truth = schema.validate(pq.read_table(truth_file), "annotations")
        assert images.num_rows == truth.num_rows == manifest["counts"][split]
        assert images.column("image_id").to_pylist() == truth.column("image_id").to_pylist()
        assert images.column("image").to_pylist() == truth.column("image").to_pylist()
        names = truth.column("class_name").to_pylist()
        assert set(names) <= set(classes[class_split])
        counts = Counter(names).values()
        assert max(counts) - min(counts) <= 1, f"{split}: classes are not balanced"
        for row in truth.to_pylist():
            name = row["class_name"]
            assert re.fullmatch(rf"a photo of an? {name}", row["caption"])
            assert row["descriptions"] == descriptors[name] == [r["text"] for r in row["regions"]]
            assert all(value in row["llm_caption"] for value in classes["bindings"][name].values())
            assert row["status"] == "ok" and row["run_id"] == "partsworld-truth" and row["error"] is None
            assert {r["score"] for r in row["regions"]} == {1.0}
        ids += truth.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)), "image_id must be unique across splits"


def test_novel_names_never_appear_in_training_data(partsworld_small):
    novel = load_classes(partsworld_small)["novel"]
    pattern = re.compile(r"\b(" + "|".join(novel) + r")\b")
    paths = PartsWorldPaths.at(partsworld_small)
    for folder in (paths.images("train"), paths.truth("train"), paths.truth("test_seen")):
        table = pq.read_table(folder).drop_columns(["image"])
        text = json.dumps(table.to_pylist())
        assert not pattern.search(text), f"novel class name in {folder}: {pattern.search(text).group(0)}"
    assert pattern.search(json.dumps(pq.read_table(paths.truth("test_novel")).column("class_name").to_pylist()))


def test_validation_splits_come_from_another_seed_and_leave_the_test_splits_unchanged(tmp_path):
    """Tuning on val_* must never see a test image: val images are new, and adding them changed no test image."""
    root = generate(tmp_path / "pw", n=8, n_test=6, n_val=9, seed=5, image_size=40).root
    shifted = generate(tmp_path / "shifted", n=8, n_test=6, n_val=9, seed=6, image_size=40).root
    images = {split: truth_rows(root, split) for split in SPLITS}
    assert [len(images[split]) for split in VAL_SPLITS] == [9, 9]
    for val, test in (("val_seen", "test_seen"), ("val_novel", "test_novel")):
        assert {row["class_name"] for row in images[val]} <= set(load_classes(root)[SPLITS[val]])
        assert SPLITS[val] == SPLITS[test]
    pixels = [row["image"] for rows in images.values() for row in rows]
    assert len(pixels) == len(set(pixels)), "a validation image repeats another split's image"
    # Another dataset seed's test splits (seed + 1, which the validation splits of seed 5 also build on) share
    # no image with seed 5's validation splits either.
    other = {row["image"] for split in SPLITS for row in truth_rows(shifted, split)}
    assert not other & {row["image"] for split in VAL_SPLITS for row in images[split]}
    # The test and training images do not depend on whether or how many validation images exist.
    fewer = generate(tmp_path / "fewer", n=8, n_test=6, n_val=1, seed=5, image_size=40).root
    for split in ("train", "test_seen", "test_novel"):
        assert [row["image"] for row in truth_rows(fewer, split)] == [row["image"] for row in images[split]]


def test_readable_without_grainclip(partsworld_small):
    """pandas, polars and duckdb read the shards in a process that never imports grainclip."""
    script = f"""
import sys, duckdb, pandas, polars
root = {str(partsworld_small)!r}
frame = pandas.read_parquet(root + "/train/truth")
assert len(frame) == 64 and list(frame.regions.iloc[0][0]) == ["text", "box", "score"], frame.columns
assert polars.read_parquet(root + "/test_novel/images/*.parquet").height == 32
boxes = duckdb.sql("select unnest(regions).box as b from read_parquet('" + root + "/test_seen/truth/*.parquet')").fetchall()
assert len(boxes) == 32 * 4 and all(len(b[0]) == 4 for b in boxes)
assert "grainclip" not in sys.modules
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_deterministic_per_seed_and_independent_of_sharding(tmp_path):
    kwargs = dict(n=12, n_test=5, image_size=48)
    first = generate(tmp_path / "a", seed=3, **kwargs)
    again = generate(tmp_path / "b", seed=3, shard_rows=5, **kwargs)
    other = generate(tmp_path / "c", seed=4, **kwargs)
    for split in SPLITS:
        a_file = first.truth(split) / "part-00000.parquet"
        c_file = other.truth(split) / "part-00000.parquet"
        assert pq.read_table(again.truth(split)).equals(pq.read_table(a_file))
        assert not pq.read_table(a_file).column("image").equals(pq.read_table(c_file).column("image"))
    # Same seed and sharding in another process: byte-identical files.
    script = f"from grainclip.partsworld import generate; generate({str(tmp_path / 'd')!r}, seed=3, **{kwargs!r})"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    for file in sorted(first.root.rglob("*.parquet")):
        assert file.read_bytes() == (tmp_path / "d" / file.relative_to(first.root)).read_bytes(), file
    assert len(list(again.truth("train").glob("part-*.parquet"))) == 3


def test_regenerating_replaces_shards_and_foreign_directories_are_refused(tmp_path):
    paths = generate(tmp_path / "pw", n=7, n_test=2, seed=0, image_size=32, shard_rows=3)
    assert len(list(paths.images("train").glob("*.parquet"))) == 3
    generate(tmp_path / "pw", n=2, n_test=2, seed=0, image_size=32, shard_rows=3)
    assert pq.read_table(paths.images("train")).num_rows == 2
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        generate(tmp_path / "other", n=2, seed=0)
    for bad in (dict(n=0), dict(n=3, n_test=0), dict(n=3, n_val=0), dict(n=3, image_size=8)):
        with pytest.raises(ConfigError):
            generate(tmp_path / "bad", seed=0, **bad)


# --- command line -----------------------------------------------------------------------------------------


def test_cli_synth_writes_a_dataset(tmp_path):
    from grainclip.cli import app

    out = tmp_path / "pw"
    result = CliRunner().invoke(
        app, ["synth", "--out", str(out), "--n", "6", "--n-test", "3", "--seed", "2", "--image-size", "40"]
    )
    assert result.exit_code == 0, result.output
    counts = json.loads((out / "manifest.json").read_text())["counts"]
    assert counts == {"train": 6, "test_seen": 3, "test_novel": 3, "val_seen": 3, "val_novel": 3}
    assert Image.open(io.BytesIO(truth_rows(out, "train")[0]["image"])).size == (40, 40)


@pytest.mark.parametrize("bad", [["--n", "0"], ["--n", "-5"], ["--image-size", "4"]])
def test_cli_synth_rejects_bad_arguments_in_one_line(tmp_path, bad):
    from grainclip.cli import app

    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "pw"), *bad])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert not (tmp_path / "pw").exists()
