"""Write a PartsWorld dataset: image shards, ground-truth shards, class lists, descriptors and a manifest.

Every image has its own random generator seeded from (seed, split, index), so an image does not depend on
how many others are generated or how they are sharded, and the same seed gives identical Parquet content.
Classes are balanced within each split. Output layout (SPLIT: train, test_seen, test_novel, val_seen, val_novel):

    DIR/SPLIT/images/part-NNNNN.parquet   images schema + class_name
    DIR/SPLIT/truth/part-NNNNN.parquet    annotations schema + class_name

The validation splits exist so that recipes, alpha and step counts are chosen without looking at the test
splits. Their images come from another seed (seed + VAL_SEED_OFFSET) as well as from their own split codes,
so a validation image never repeats a test or training image, whatever seeds two datasets were made with.
    DIR/classes.json, DIR/descriptors.json, DIR/manifest.json
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

import grainclip
from grainclip import storage
from grainclip.articles import indefinite_article
from grainclip.config.base import ConfigError
from grainclip.partsworld.classes import CATALOGUE, COLOURED_PARTS, PATTERNED_PART, CreatureClass
from grainclip.partsworld.scene import Scene, sample_scene
from grainclip.schema import REGION_TYPE, write_shard

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
TRUTH_RUN_ID = "partsworld-truth"
SPLITS: dict[str, str] = {  # split -> class split
    "train": "seen",
    "test_seen": "seen",
    "test_novel": "novel",
    "val_seen": "seen",
    "val_novel": "novel",
}
_SPLIT_CODES = {name: code for code, name in enumerate(SPLITS)}  # part of each image's seed: append only
VAL_SPLITS = ("val_seen", "val_novel")
VAL_SEED_OFFSET = 1  # validation splits draw from seed + 1 (and their own split codes)
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 4096


@dataclass(frozen=True)
class PartsWorldPaths:
    """Where `generate` put everything; `images(split)` / `truth(split)` are shard directories.

    Paths are `Path`s for a local dataset and URI strings for one copied to object storage (read-only there).
    """

    root: Path | str
    classes: Path | str
    descriptors: Path | str
    manifest: Path | str

    def images(self, split: str) -> Path | str:
        return storage.join(self.root, _check_split(split), "images")

    def truth(self, split: str) -> Path | str:
        return storage.join(self.root, _check_split(split), "truth")

    @property
    def train_images(self) -> Path | str:
        return self.images("train")

    @property
    def train_truth(self) -> Path | str:
        return self.truth("train")

    @classmethod
    def at(cls, root: str | Path) -> PartsWorldPaths:
        root = storage.location(root)
        return cls(*(storage.join(root, leaf) for leaf in ("", "classes.json", "descriptors.json", "manifest.json")))


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown PartsWorld split {split!r}; expected one of {list(SPLITS)}")
    return split


def generate(
    out_dir: str | Path,
    n: int,
    seed: int,
    n_test: int | None = None,
    image_size: int = 224,
    shard_rows: int = 1000,
    n_val: int | None = None,
) -> PartsWorldPaths:
    """Generate `n` training images of seen classes, `n_test` (default n // 4) per test split and `n_val`
    (default n_test) per validation split.

    Raises ConfigError for impossible arguments and for an `out_dir` holding something other than PartsWorld.
    Re-generating into an existing PartsWorld directory replaces its shards.
    """
    n_test = max(1, n // 4) if n_test is None else n_test
    n_val = n_test if n_val is None else n_val
    _check_arguments(n, n_test, n_val, image_size, shard_rows)
    paths = PartsWorldPaths.at(out_dir)
    _prepare_directory(paths)
    counts = {"train": n, "test_seen": n_test, "test_novel": n_test, "val_seen": n_val, "val_novel": n_val}
    timings: dict[str, float] = {}
    for split, count in counts.items():
        started = time.perf_counter()
        labels = class_labels(split, count, seed)
        for shard, rows in enumerate(_chunks(range(count), shard_rows)):
            images, truth = _shard_tables(split, rows, labels, seed, image_size)
            name = f"part-{shard:05d}.parquet"
            write_shard(images, paths.images(split) / name, "images")
            write_shard(truth, paths.truth(split) / name, "annotations")
        timings[split] = round(time.perf_counter() - started, 3)
        log.info("partsworld %s: %d images in %.1f s", split, count, timings[split])
    _write_json(paths.classes, CATALOGUE.to_json())
    _write_json(paths.descriptors, CATALOGUE.descriptors())
    _write_json(
        paths.manifest,
        {
            "generator": "partsworld",
            "generator_version": GENERATOR_VERSION,
            "grainclip_version": grainclip.__version__,
            "seed": seed,
            "val_seed": seed + VAL_SEED_OFFSET,
            "image_size": image_size,
            "shard_rows": shard_rows,
            "counts": counts,
            "classes": {"seen": len(CATALOGUE.names("seen")), "novel": len(CATALOGUE.names("novel"))},
            "timing_s": timings,
        },
    )
    return paths


def _check_arguments(n: int, n_test: int, n_val: int, image_size: int, shard_rows: int) -> None:
    if n < 1:
        raise ConfigError(f"n (number of training images) must be at least 1, got {n}")
    if n_test < 1:
        raise ConfigError(f"n_test (images per test split) must be at least 1, got {n_test}")
    if n_val < 1:
        raise ConfigError(f"n_val (images per validation split) must be at least 1, got {n_val}")
    if not MIN_IMAGE_SIZE <= image_size <= MAX_IMAGE_SIZE:
        raise ConfigError(f"image_size must be between {MIN_IMAGE_SIZE} and {MAX_IMAGE_SIZE} pixels, got {image_size}")
    if shard_rows < 1:
        raise ConfigError(f"shard_rows must be at least 1, got {shard_rows}")


def _prepare_directory(paths: PartsWorldPaths) -> None:
    """Refuse to write into a foreign non-empty directory; clear the shards of a previous PartsWorld run."""
    root = paths.root
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output path {root} exists and is not a directory")
    if root.is_dir() and any(root.iterdir()) and not paths.manifest.exists():
        raise ConfigError(f"output directory {root} is not empty and holds no PartsWorld dataset; choose another")
    for split in SPLITS:
        for folder in (paths.images(split), paths.truth(split)):
            for stale in folder.glob("part-*.parquet"):
                stale.unlink()
    root.mkdir(parents=True, exist_ok=True)


def _chunks(indices: range, size: int) -> Iterator[range]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def split_seed(split: str, seed: int) -> list[int]:
    """The generator seed of a split: (dataset seed, split code), the seed offset for validation splits."""
    return [seed + VAL_SEED_OFFSET if split in VAL_SPLITS else seed, _SPLIT_CODES[split]]


def class_labels(split: str, count: int, seed: int) -> list[CreatureClass]:
    """Balanced class assignment for a split: each class appears count // k or count // k + 1 times."""
    classes = [CATALOGUE.by_name[name] for name in CATALOGUE.names(SPLITS[split])]
    order = np.random.default_rng(split_seed(split, seed)).permutation(np.resize(np.arange(len(classes)), count))
    return [classes[i] for i in order]


def _shard_tables(
    split: str, rows: range, labels: list[CreatureClass], seed: int, image_size: int
) -> tuple[pa.Table, pa.Table]:
    keys = ("image_id", "image", "caption", "class_name", "llm_caption", "descriptions", "regions")
    columns: dict[str, list] = {key: [] for key in keys}
    for index in rows:
        creature = labels[index]
        scene = sample_scene(np.random.default_rng([*split_seed(split, seed), index]), creature)
        image, regions = scene.render(image_size, image_size)
        columns["image_id"].append(f"pw-{split}-{index:06d}")
        columns["image"].append(_png(image))
        columns["caption"].append(alt_text(creature))
        columns["class_name"].append(creature.name)
        columns["llm_caption"].append(rich_caption(creature, scene))
        columns["descriptions"].append(creature.descriptors)
        columns["regions"].append([{"text": text, "box": list(box), "score": 1.0} for text, box in regions])
    size = pa.array([image_size] * len(rows), pa.int32())
    images = pa.table(
        {
            "image_id": pa.array(columns["image_id"], pa.string()),
            "image": pa.array(columns["image"], pa.binary()),
            "caption": pa.array(columns["caption"], pa.string()),
            "width": size,
            "height": size,
            "class_name": pa.array(columns["class_name"], pa.string()),
        }
    )
    truth = images.append_column("llm_caption", pa.array(columns["llm_caption"], pa.string()))
    truth = truth.append_column("descriptions", pa.array(columns["descriptions"], pa.list_(pa.string())))
    truth = truth.append_column("regions", pa.array(columns["regions"], pa.list_(REGION_TYPE)))
    truth = truth.append_column("status", pa.array(["ok"] * len(rows), pa.string()))
    truth = truth.append_column("run_id", pa.array([TRUTH_RUN_ID] * len(rows), pa.string()))
    return images, truth


def _png(image: Image.Image) -> bytes:
    """PNG at zlib level 1: ~7x faster to encode than the default level for ~40% more bytes on these images."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def alt_text(creature: CreatureClass) -> str:
    """The web-style caption: the class name and nothing else."""
    return f"a photo of {_a(creature.name)}"


def rich_caption(creature: CreatureClass, scene: Scene) -> str:
    """What an ideal captioner would write: the class, every bound attribute on its part, and the nuisances."""
    crest, wings, tail = (creature.bindings[part] for part in COLOURED_PARTS)
    pattern = creature.bindings[PATTERNED_PART]
    tone = "pale" if float(np.mean(scene.body_colour)) > 128 else "dark"
    return (
        f"A photo of {_a(creature.name)}, a {tone} creature facing {scene.facing} with {_a(crest)} crest, "
        f"{wings} wings, {_a(tail)} tail and {_a(pattern)} {PATTERNED_PART}, on a {scene.background.kind} background."
    )


def _a(word: str) -> str:
    return f"{indefinite_article(word)} {word}"


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def load_classes(root: str | Path) -> dict:
    """classes.json of a PartsWorld directory: seen/novel names, parts, attributes, bindings."""
    return _read_json(PartsWorldPaths.at(root).classes)


def load_descriptors(root: str | Path) -> dict[str, list[str]]:
    """descriptors.json of a PartsWorld directory: {class name: [descriptor, ...]} for every class."""
    return _read_json(PartsWorldPaths.at(root).descriptors)


def _read_json(path: Path | str) -> dict:
    if not storage.is_file(path):
        folder = str(path).rstrip("/").rsplit("/", 1)[0]
        raise FileNotFoundError(f"{path} not found: is {folder} a PartsWorld directory (grainclip synth)?")
    return json.loads(storage.read_text(path))
