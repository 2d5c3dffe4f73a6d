"""Evaluation splits: where the images are, their labels, captions and regions, and the class list.

A dataset's source (grainclip.sources) gives its rows in one of two shapes, and each becomes an `EvalSplit`:

* class folders (`image_folder`): root/<class folder>/<image>. A class file fixes label order and display names.
* Parquet row groups in the images or annotations schema (`parquet`, `partsworld`), with a class-name column
  for classification, captions for retrieval and `regions` for grounding. A source may define its classes and
  descriptors itself (PartsWorld's classes.json and descriptors.json).

Class order is always explicit and checked: class files must match the folders or labels present, and a
descriptor file must cover every class of the split (more is fine); a mismatch is an error that names the classes.

Images are streamed: a torch DataLoader with worker processes reads, decodes and preprocesses them, so
memory does not grow with the split. Every sample carries its row index; a row whose image cannot be
decoded comes back as an error record (counted in the results), never silently dropped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.utils.data

from grainclip import storage
from grainclip.config.base import ConfigError
from grainclip.config.evaluate import EvalDataset
from grainclip.images import AlphaMode, ImageDecodeError, load_image
from grainclip.schema import RowGroup, parquet_file
from grainclip.sources import ClassFolderRows, TableRows

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------- classes
def read_class_file(path: Path) -> list[tuple[str, str]]:
    """(key, display name) per line, in label order. `key<TAB>name`, or `key` alone (underscores as spaces)."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        raise ConfigError(f"class-name file not found: {path}") from None
    entries = []
    for line in lines:
        if not line.strip():
            continue
        key, _, name = line.partition("\t")
        key = key.strip()
        entries.append((key, name.strip() or key.replace("_", " ")))
    if not entries:
        raise ConfigError(f"class-name file {path} lists no classes")
    for what, values in (("key", [k for k, _ in entries]), ("class name", [n for _, n in entries])):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise ConfigError(f"class-name file {path}: repeated {what}(s) {repeated}")
    return entries


def some_names(names: Sequence[str], shown: int = 5) -> str:
    """The first `shown` names and how many more: a mismatch over 500 classes stays one readable line."""
    listed = ", ".join(repr(name) for name in names[:shown])
    return listed + (f" and {len(names) - shown} more" if len(names) > shown else "")


def check_same_classes(expected: Sequence[str], found: Sequence[str], expected_from: str, found_from: str) -> None:
    """Raise ConfigError naming (compactly) the classes one side has and the other lacks."""
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing from {found_from}: {some_names(missing)}")
        if extra:
            parts.append(f"{len(extra)} in {found_from} but not in {expected_from}: {some_names(extra)}")
        raise ConfigError(f"classes of {found_from} do not match {expected_from}; " + "; ".join(parts))


def read_descriptors(path: Path, classnames: Sequence[str]) -> tuple[dict[str, list[str]], int]:
    """Menon & Vondrick JSON {class: [descriptor, ...]} for `classnames`, in their order, and how many other
    classes the file holds.

    The file may cover more classes than the split, as their own loader allows (a published file for a whole
    dataset, PartsWorld's one file for all splits): the extra classes are counted in one log line and in the
    results. A class of the split that the file lacks is an error naming it.
    """
    try:
        data = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise ConfigError(f"descriptor file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"descriptor file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"descriptor file {path} must map class names to lists of descriptors")
    missing = [name for name in classnames if name not in data]
    if missing:
        raise ConfigError(
            f"descriptor file {path} has no descriptors for {len(missing)} of the dataset's {len(classnames)} classes: "
            f"{some_names(missing)}"
        )
    extra = len(data) - len(classnames)
    if extra:
        log.info("descriptor file %s: %d class(es) not in the dataset are ignored", path, extra)
    descriptors = {}
    for name in classnames:
        values = data[name]
        if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
            raise ConfigError(f"descriptor file {path}: class {name!r} needs a non-empty list of non-empty strings")
        descriptors[name] = [v.strip() for v in values]
    return descriptors, extra


# ----------------------------------------------------------------------------------------------- the samples
def make_sample(
    index: int,
    data: bytes | None,
    uri: str | None,
    preprocess: Callable[[Image.Image], torch.Tensor],
    keep_image: bool,
    alpha: AlphaMode,
    **fields: Any,
) -> dict[str, Any]:
    """Decode and preprocess one row; a bad image becomes {'index', 'error', ...} instead of an exception."""
    try:
        image = load_image(data, uri, alpha=alpha)
    except ImageDecodeError as exc:
        return {"index": index, "error": str(exc), **fields}
    return {
        "index": index,
        "pixels": preprocess(image),
        "size": image.size,
        "image": image if keep_image else None,
        **fields,
    }


def collate(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the decodable samples; keep the failures as (index, image_id, reason) records."""
    good = [s for s in samples if "error" not in s]
    batch: dict[str, Any] = {
        "errors": [(s["index"], s.get("image_id"), s["error"]) for s in samples if "error" in s],
        "index": torch.tensor([s["index"] for s in good], dtype=torch.long),
        "pixels": torch.stack([s["pixels"] for s in good]) if good else None,
    }
    for key in ("size", "image", "label", "caption", "regions", "image_id"):
        batch[key] = [s.get(key) for s in good]
    return batch


class FolderImages(torch.utils.data.Dataset):
    """Map-style torch dataset over (path, label) pairs; nothing is read until an item is asked for."""

    def __init__(
        self, items: Sequence[tuple[Path, int]], preprocess: Callable, keep_images: int = 0, alpha: AlphaMode = "white"
    ) -> None:
        self.items, self.preprocess, self.keep_images, self.alpha = list(items), preprocess, keep_images, alpha

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.items[index]
        try:
            data = path.read_bytes()
        except OSError as exc:
            return {"index": index, "error": f"cannot read {path}: {exc}", "image_id": str(path)}
        return make_sample(
            index, data, None, self.preprocess, index < self.keep_images, self.alpha, label=label, image_id=str(path)
        )


class ParquetImages(torch.utils.data.IterableDataset):
    """Iterable torch dataset streaming Parquet record batches of `batch_rows` rows, dealt round-robin to workers.

    Dealing batches rather than whole row groups keeps every worker busy on small splits, whose shards are
    often a single row group. Each worker reads past the other workers' batches without decoding them: Arrow
    reads are cheap next to image decoding.
    """

    def __init__(
        self,
        groups: Sequence[RowGroup],
        preprocess: Callable,
        label_column: str | None,
        class_index: dict[str, int] | None,
        caption_column: str | None,
        with_regions: bool,
        keep_images: int = 0,
        batch_rows: int = 32,
        alpha: AlphaMode = "white",
    ) -> None:
        self.groups = list(groups)
        self.preprocess = preprocess
        self.label_column, self.class_index = label_column, class_index
        self.caption_column, self.with_regions = caption_column, with_regions
        self.keep_images, self.batch_rows, self.alpha = keep_images, batch_rows, alpha

    def __len__(self) -> int:
        return sum(g.rows for g in self.groups)

    def _columns(self, schema: pa.Schema) -> list[str]:
        wanted = ["image_id", "image", "image_uri", self.label_column, self.caption_column]
        wanted += ["regions"] if self.with_regions else []
        return [c for c in wanted if c and c in schema.names]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        unit = 0
        for group in self.groups:
            parquet = parquet_file(group.path)
            index, end = group.start, group.start + group.rows
            for batch in parquet.iter_batches(
                self.batch_rows, row_groups=[group.index], columns=self._columns(parquet.schema_arrow)
            ):
                rows = min(batch.num_rows, end - index)
                if unit % workers == worker:
                    for offset, row in enumerate(batch.slice(0, rows).to_pylist()):
                        yield self._sample(index + offset, row)
                unit += 1
                index += rows
                if index >= end:
                    break

    def _sample(self, index: int, row: dict[str, Any]) -> dict[str, Any]:
        fields: dict[str, Any] = {"image_id": row.get("image_id")}
        if self.label_column:
            fields["label"] = self.class_index[row[self.label_column]]
        if self.caption_column:
            fields["caption"] = row.get(self.caption_column)
        if self.with_regions:
            fields["regions"] = [(r["text"], r["box"]) for r in row.get("regions") or []]
        return make_sample(
            index,
            row.get("image"),
            row.get("image_uri"),
            self.preprocess,
            index < self.keep_images,
            self.alpha,
            **fields,
        )


# ------------------------------------------------------------------------------------------------ the splits
@dataclass
class EvalSplit:
    """One evaluation split: what it can be used for, and a factory for its streaming torch dataset."""

    name: str
    size: int
    make_dataset: Callable[[Callable, Sequence[str], int, AlphaMode], torch.utils.data.Dataset] = field(repr=False)
    classnames: list[str] | None = None
    descriptors: dict[str, list[str]] | None = None
    has_captions: bool = False
    has_regions: bool = False
    descriptor_classes_ignored: int = 0  # classes of the descriptor file that this split does not have

    def dataset(
        self, preprocess: Callable, tasks: Sequence[str], keep_images: int = 0, alpha: AlphaMode = "white"
    ) -> torch.utils.data.Dataset:
        """A fresh streaming dataset yielding preprocessed samples (the first `keep_images` also keep the image)."""
        return self.make_dataset(preprocess, tasks, keep_images, alpha)

    def check_tasks(self, tasks: Sequence[str]) -> None:
        needs = {
            "classification": ("class labels", self.classnames is not None),
            "retrieval": ("captions", self.has_captions),
            "grounding": ("annotated regions (the annotations schema)", self.has_regions),
        }
        for task in tasks:
            what, present = needs[task]
            if not present:
                raise ConfigError(f"dataset {self.name!r}: task {task!r} needs {what}, which this data does not have")


def folder_split(spec: EvalDataset, rows: ClassFolderRows) -> EvalSplit:
    """Class folders: labels from each file's first folder, in class-file order or sorted folder order."""
    root = rows.root
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if spec.classnames is None:
        entries = [(f, f.replace("_", " ")) for f in folders]
    else:
        entries = read_class_file(spec.classnames)
        check_same_classes(
            [k for k, _ in entries], folders, f"class-name file {spec.classnames}", f"folders under {root}"
        )
    if not entries:
        raise ConfigError(f"dataset {spec.name!r}: no class folders under {root}")
    labels = {folder: label for label, (folder, _) in enumerate(entries)}
    items = sorted((labels[f.parts[0]], root / f) for f in rows.files if len(f.parts) > 1 and f.parts[0] in labels)
    items = [(path, label) for label, path in items][: spec.limit]
    if not items:
        raise ConfigError(f"dataset {spec.name!r}: no image files in the class folders under {root}")
    classnames = [name for _, name in entries]
    descriptors, ignored = read_descriptors(spec.descriptors, classnames) if spec.descriptors else (None, 0)

    def make(preprocess: Callable, tasks: Sequence[str], keep_images: int, alpha: AlphaMode) -> FolderImages:
        return FolderImages(items, preprocess, keep_images, alpha)

    return EvalSplit(spec.name, len(items), make, classnames, descriptors, descriptor_classes_ignored=ignored)


def _first_rows(groups: list[RowGroup], limit: int | None) -> list[RowGroup]:
    """The row groups cut to the first `limit` rows."""
    if limit is None:
        return groups
    return [replace(g, rows=min(g.rows, limit - g.start)) for g in groups if g.start < limit]


def table_split(spec: EvalDataset, rows: TableRows) -> EvalSplit:
    """A split over Parquet row groups; classes from the class file, the source, or the sorted distinct labels."""
    name, label_column = spec.name, spec.label_column
    files = sorted({g.path for g in rows.groups})
    schema = parquet_file(files[0]).schema_arrow
    groups = _first_rows(rows.groups, spec.limit)
    class_entries = read_class_file(spec.classnames) if spec.classnames else None
    if class_entries is None and rows.classes is not None:
        class_entries = [(c, c) for c in rows.classes]
    classnames = class_index = None
    if label_column in schema.names:
        labels = pa.chunked_array([parquet_file(f).read(columns=[label_column]).column(0) for f in files])
        if labels.null_count:
            raise ConfigError(f"dataset {name!r}: {labels.null_count} row(s) have no {label_column!r}")
        present = sorted(pc.unique(labels).to_pylist())
        if class_entries is None:
            class_entries = [(label, label) for label in present]
        else:
            unknown = sorted(set(present) - {key for key, _ in class_entries})
            if unknown:
                raise ConfigError(
                    f"dataset {name!r}: labels {unknown} in column {label_column!r} are not in the class list"
                )
        classnames = [display for _, display in class_entries]
        class_index = {key: i for i, (key, _) in enumerate(class_entries)}
    caption_column = spec.caption_column
    has_captions = caption_column in schema.names
    has_regions = "regions" in schema.names
    descriptors = spec.descriptors or rows.descriptors
    descriptor_map, ignored = None, 0
    if descriptors is not None:
        if classnames is None:
            raise ConfigError(f"dataset {name!r}: descriptors given but the data has no {label_column!r} column")
        descriptor_map, ignored = read_descriptors(descriptors, classnames)

    def make(preprocess: Callable, tasks: Sequence[str], keep_images: int, alpha: AlphaMode) -> ParquetImages:
        return ParquetImages(
            groups,
            preprocess,
            label_column if "classification" in tasks else None,
            class_index,
            caption_column if "retrieval" in tasks else None,
            with_regions="grounding" in tasks,
            keep_images=keep_images,
            alpha=alpha,
        )

    size = sum(g.rows for g in groups)
    return EvalSplit(name, size, make, classnames, descriptor_map, has_captions, has_regions, ignored)


def load_split(spec: EvalDataset) -> EvalSplit:
    """Resolve a dataset config into a checked split (fails early, before any model runs)."""
    try:
        rows = spec.source.local_rows()
    except (ConfigError, FileNotFoundError) as exc:
        raise ConfigError(f"dataset {spec.name!r}: {exc}") from None
    # Two shapes of data, not a list of kinds: any source kind that yields one of them can be evaluated.
    split = folder_split(spec, rows) if isinstance(rows, ClassFolderRows) else table_split(spec, rows)
    split.check_tasks(spec.tasks)
    return split
