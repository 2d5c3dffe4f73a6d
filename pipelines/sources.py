"""Read a pipeline source into a Ray Dataset of rows in the `images` contract (extra columns carried along).

Every source ends in the same shape so the stages never care where rows came from:
- `parquet` / `partsworld`: Parquet shards already in the images contract (PartsWorld adds `class_name`).
- `image_folder`: rows point at the files (`image_uri`, absolute path) instead of copying their bytes; captions
  come from an optional CSV. The annotations then reference the same files.
- `webdataset`: tar shards read raw (no decoding in the reader: images stay encoded bytes and are decoded once,
  in the describe stage, with grainclip's rules); the sample key is the image_id.

`prepare_images` then conforms each batch to the contract, turns broken rows into `invalid_input` rows (never
dropping them) and removes rows already committed by an earlier attempt (exactly-once resume).
"""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from grainclip.config.base import ConfigError
from grainclip.config.pipeline import (
    ImageFolderSource,
    ParquetSource,
    PartsWorldSource,
    SourceConfig,
    WebDatasetSource,
)
from grainclip.pipelines.rundir import contains_sorted
from grainclip.pipelines.stages import set_column
from grainclip.schema import Status, conform, parquet_files

if TYPE_CHECKING:
    import ray.data

#: Columns the pipeline adds in front of the stages: the row's status so far (null: still to annotate) and why.
STATUS, ERROR = "status", "error"
MISSING_ID_PREFIX = "missing-id:"


def read_source(source: SourceConfig) -> ray.data.Dataset:
    """A lazy, streaming Ray Dataset over the source's rows (nothing is read until the plan executes)."""
    import ray.data

    if isinstance(source, (ParquetSource, PartsWorldSource)):
        return ray.data.read_parquet([str(p) for p in _parquet_paths(source)])
    if isinstance(source, ImageFolderSource):
        return ray.data.from_items(_image_folder_rows(source))
    if isinstance(source, WebDatasetSource):
        paths = [source.path] if isinstance(source.path, str) else source.path
        _require_paths(paths)
        dataset = ray.data.read_webdataset(paths, decoder=None)
        return dataset.map_batches(
            webdataset_to_images,
            batch_format="pyarrow",
            fn_kwargs={"image_extensions": source.image_extensions, "caption_extension": source.caption_extension},
        )
    raise ConfigError(f"unsupported source kind {source.kind!r}")  # unreachable: the config is a closed union


def _require_paths(paths: list[str]) -> None:
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"source path(s) not found: {', '.join(missing)}")


def _parquet_paths(source: ParquetSource | PartsWorldSource) -> list[Path]:
    if isinstance(source, PartsWorldSource):
        paths = [f"{source.path}/{source.split}/images"]
    else:
        paths = [source.path] if isinstance(source.path, str) else source.path
    _require_paths(paths)
    files = [f for p in paths for f in parquet_files(p)]
    if not files:
        raise FileNotFoundError(f"no Parquet files under {', '.join(paths)}")
    return files


def _image_folder_rows(source: ImageFolderSource) -> list[dict]:
    """One row per image: listed from the captions CSV, or every image file under the folder."""
    root = Path(source.path).resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {source.path}")
    if source.captions_csv is None:
        suffixes = {e.lower() for e in source.extensions}
        files = sorted(
            Path(d, f).relative_to(root)
            for d, _, names in os.walk(root)
            for f in names
            if Path(f).suffix.lower() in suffixes and not f.startswith(".")
        )
        if not files:
            raise FileNotFoundError(f"no image files with extensions {sorted(suffixes)} under {source.path}")
        return [{"image_id": str(f), "image_uri": str(root / f), "caption": None} for f in files]
    try:
        # A crawl's CSV may hold a line in another encoding: undecodable bytes become U+FFFD, not an error.
        with open(source.captions_csv, newline="", encoding="utf-8", errors="replace") as handle:
            reader = csv.DictReader(handle)
            missing = {"file_name", "caption"} - set(reader.fieldnames or [])
            if missing:
                raise ConfigError(
                    f"captions CSV {source.captions_csv} lacks column(s) {sorted(missing)} (has {reader.fieldnames})"
                )
            return [
                {
                    "image_id": row.get("image_id") or row["file_name"],
                    "image_uri": str(root / row["file_name"]),
                    "caption": row["caption"] or None,
                }
                for row in reader
            ]
    except FileNotFoundError:
        raise FileNotFoundError(f"captions CSV not found: {source.captions_csv}") from None


def webdataset_to_images(batch: pa.Table, image_extensions: list[str], caption_extension: str) -> pa.Table:
    """Raw WebDataset samples (one column per member extension) -> images-contract columns."""
    n = batch.num_rows
    images: list[bytes | None] = [None] * n
    for extension in image_extensions:
        if extension in batch.column_names:
            column = batch.column(extension).to_pylist()
            images = [have if have is not None else _bytes(new) for have, new in zip(images, column)]
    captions: list[str | None] = [None] * n
    if caption_extension in batch.column_names:
        captions = [_text(_bytes(v)) for v in batch.column(caption_extension).to_pylist()]
    return pa.table(
        {
            "image_id": batch.column("__key__"),
            "image": pa.array(images, pa.binary()),
            "caption": pa.array(captions, pa.string()),
        }
    )


def _bytes(value: object) -> bytes | None:
    """A member's raw bytes; the reader fills members a sample lacks with null or NaN (it builds pandas frames)."""
    return bytes(value) if isinstance(value, (bytes, bytearray)) else None


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", errors="replace") if value is not None else None


def prepare_images(batch: pa.Table, done_ids: np.ndarray | None = None) -> pa.Table:
    """Conform a source batch to the images contract, mark broken rows, drop rows committed before.

    Rows with no image_id get a stable synthetic id (`missing-id:<sha1 of the row's image>`) so they are
    written with status invalid_input instead of vanishing; rows with neither bytes nor a URI are
    invalid_input too. Missing `width`/`height` are filled in by the describe stage from the decoded image.
    `done_ids` is the sorted array of image_ids already committed (see `rundir.committed_ids`).
    """
    table = conform(batch, "images")
    ids = table.column("image_id").to_pylist()
    images = table.column("image").to_pylist()
    uris = table.column("image_uri").to_pylist()
    statuses: list[str | None] = [None] * table.num_rows
    errors: list[str | None] = [None] * table.num_rows
    for row, (image_id, image, uri) in enumerate(zip(ids, images, uris)):
        problems = []
        if not image_id or not image_id.strip():
            ids[row] = MISSING_ID_PREFIX + hashlib.sha1((image or b"") + (uri or "").encode()).hexdigest()
            problems.append("row has no image_id")
        if image is None and not uri:  # empty bytes are an image that fails to decode, not a missing one
            problems.append("row has neither image bytes nor image_uri")
        if problems:
            statuses[row], errors[row] = Status.INVALID_INPUT.value, "; ".join(problems)
    # set, not append: a source that is itself an annotations table carries old status/error columns
    table = set_column(table, "image_id", pa.array(ids, pa.string()))
    table = set_column(table, STATUS, pa.array(statuses, pa.string()))
    table = set_column(table, ERROR, pa.array(errors, pa.string()))
    if done_ids is not None and len(done_ids):
        table = table.filter(pa.array(~contains_sorted(done_ids, ids)))
    return table
