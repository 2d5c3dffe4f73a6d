"""`partsworld`: one split of a PartsWorld folder written by `grainclip synth` (layout: `PartsWorldPaths`).

The pipeline reads the split's images; the evaluator reads its ground truth (the annotations contract with the
images carried through, so it serves classification, retrieval and grounding) with the split's class list and
the dataset's descriptors. The simulated annotators default to the same truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from grainclip import storage
from grainclip.config.base import ConfigError
from grainclip.partsworld import SPLITS, PartsWorldPaths, load_classes
from grainclip.schema import list_row_groups
from grainclip.sources.base import Source, TableRows
from grainclip.sources.parquet import read_parquet_files

if TYPE_CHECKING:
    import ray.data


class PartsWorldSource(Source):
    """A PartsWorld dataset directory and one of its splits."""

    kind: Literal["partsworld"]
    path: str = Field(description="A folder written by `grainclip synth`.")
    split: str = Field("train", description="train, val_seen, val_novel, test_seen or test_novel.")

    @property
    def layout(self) -> PartsWorldPaths:
        return PartsWorldPaths.at(self.path)

    def _split_dir(self) -> Path | str:
        """The split's folder; ConfigError naming the splits present when it is not one of them."""
        root = self.layout.root
        if self.split not in SPLITS or not storage.is_dir(storage.join(root, self.split)):
            raise ConfigError(f"no split {self.split!r} under {root} (found {storage.list_dirs(root)})")
        return storage.join(root, self.split)

    def annotator_truth(self) -> str:
        root = self.layout.root
        return str(self.layout.truth(self.split) if self.split in SPLITS else storage.join(root, self.split))

    def problems(self) -> list[Exception]:
        found = super().problems()
        if found:
            return found
        try:
            self._split_dir()
        except ConfigError as exc:
            return [exc]
        return []

    def read(self) -> ray.data.Dataset:
        self.check()
        return read_parquet_files([str(self.layout.images(self.split))])

    def local_rows(self) -> TableRows:
        self._split_dir()
        layout = self.layout
        try:
            class_lists = load_classes(layout.root)
        except FileNotFoundError:
            raise ConfigError(f"{layout.classes} not found; is {layout.root} a PartsWorld folder?") from None
        key = SPLITS[self.split]
        if key not in class_lists:
            raise ConfigError(f"{storage.name(layout.classes)} has no {key!r} list (has {sorted(class_lists)})")
        truth = layout.truth(self.split)
        data = truth if storage.is_dir(truth) else layout.images(self.split)
        return TableRows(list_row_groups(data), classes=list(class_lists[key]), descriptors=layout.descriptors)
