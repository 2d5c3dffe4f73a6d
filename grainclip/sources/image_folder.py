"""`image_folder`: image files in a folder, captions from an optional CSV.

Rows point at the files (`image_uri`, absolute path) instead of copying their bytes, so the annotations
reference the same files. The evaluator reads the same kind as class folders: `path/<class>/<images>`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from grainclip.config.base import ConfigError
from grainclip.sources.base import ClassFolderRows, Source

if TYPE_CHECKING:
    import ray.data

#: Columns a captions CSV must have (image_id is optional).
CSV_COLUMNS = ("file_name", "caption")
IMAGE_EXTENSIONS = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"]


class ImageFolderSource(Source):
    """A folder of image files, optionally with a captions CSV.

    The CSV has a `file_name` column (path relative to `path`, as in Hugging Face's imagefolder metadata), a
    `caption` column and optionally `image_id` (default: the file name). Without a CSV every image file
    under `path` is read, captions empty.
    """

    kind: Literal["image_folder"]
    path: str = Field(description="Folder of image files, read recursively (the evaluator: one folder per class).")
    captions_csv: str | None = Field(
        None,
        description="CSV with file_name, caption and optional image_id columns; None: every image file, no captions.",
    )
    extensions: list[str] = Field(
        default_factory=lambda: list(IMAGE_EXTENSIONS), description="File suffixes read as images."
    )

    path_fields: ClassVar[tuple[str, ...]] = ("path", "captions_csv")

    def image_files(self) -> list[Path]:
        """Every image file under the folder (hidden ones skipped), relative to it, sorted."""
        root = Path(self.path)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.path}")
        suffixes = {e.lower() for e in self.extensions}
        files = sorted(
            Path(d, f).relative_to(root)
            for d, _, names in os.walk(root)
            for f in names
            if Path(f).suffix.lower() in suffixes and not f.startswith(".")
        )
        if not files:
            raise FileNotFoundError(f"no image files with extensions {sorted(suffixes)} under {self.path}")
        return files

    def rows(self) -> list[dict]:
        """One row per image: listed from the captions CSV, or every image file under the folder."""
        root = Path(self.path).resolve()
        if self.captions_csv is None:
            return [{"image_id": str(f), "image_uri": str(root / f), "caption": None} for f in self.image_files()]
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.path}")
        try:
            # A crawl's CSV may hold a line in another encoding: undecodable bytes become U+FFFD, not an error.
            with open(self.captions_csv, newline="", encoding="utf-8", errors="replace") as handle:
                reader = csv.DictReader(handle)
                problem = self._columns_problem(reader.fieldnames)
                if problem is not None:
                    raise problem
                return [
                    {
                        "image_id": row.get("image_id") or row["file_name"],
                        "image_uri": str(root / row["file_name"]),
                        "caption": row["caption"] or None,
                    }
                    for row in reader
                ]
        except FileNotFoundError:
            raise FileNotFoundError(f"captions CSV not found: {self.captions_csv}") from None

    def _columns_problem(self, fieldnames: Sequence[str] | None) -> ConfigError | None:
        missing = sorted(set(CSV_COLUMNS) - set(fieldnames or []))
        if not missing:
            return None
        return ConfigError(
            f"captions CSV {self.captions_csv} lacks column(s) {missing} (has {list(fieldnames or [])}); it needs "
            f"{', '.join(CSV_COLUMNS)} (file_name relative to {self.path}) and optionally image_id"
        )

    def problems(self) -> list[Exception]:
        """Missing paths, a `path` that is not a folder, a captions CSV without its columns (header only)."""
        found = super().problems()
        if found:
            return found
        if not Path(self.path).is_dir():
            return [FileNotFoundError(f"image folder not found: {self.path} is not a folder")]
        if self.captions_csv is not None:
            with open(self.captions_csv, newline="", encoding="utf-8", errors="replace") as handle:
                problem = self._columns_problem(csv.DictReader(handle).fieldnames)
            return [problem] if problem is not None else []
        return []

    def read(self) -> ray.data.Dataset:
        import ray.data

        return ray.data.from_items(self.rows())

    def local_rows(self) -> ClassFolderRows:
        return ClassFolderRows(Path(self.path), self.image_files())
