"""`webdataset`: tar shards read raw; each sample's key is its image_id, its first present image member its image.

No decoding in the reader: images stay encoded bytes and are decoded once, in the describe stage, with
grainclip's rules.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import pyarrow as pa
from pydantic import Field

from grainclip import storage
from grainclip.sources.base import Source

if TYPE_CHECKING:
    import ray.data


class WebDatasetSource(Source):
    """WebDataset tar shards (a file, a folder, a brace/glob pattern or URL, or a list of them; local or s3://)."""

    kind: Literal["webdataset"]
    path: str | list[str] = Field(description="A tar file, a folder of tars, a glob pattern, or a list of them.")
    image_extensions: list[str] = Field(
        default_factory=lambda: ["jpg", "jpeg", "png", "webp"],
        description="Member extensions read as the image; the first present wins.",
    )
    caption_extension: str = Field("txt", description="Member extension read as the caption.")

    def read(self) -> ray.data.Dataset:
        import ray.data

        self.check()
        paths, options = self.paths(), {}
        if all(path.startswith("s3://") for path in paths):  # grainclip's S3 settings, not Ray's own lookup
            options["filesystem"], paths = storage.resolve_all(paths)
        dataset = ray.data.read_webdataset(paths, decoder=None, **options)
        return dataset.map_batches(
            webdataset_to_images,
            batch_format="pyarrow",
            fn_kwargs={"image_extensions": self.image_extensions, "caption_extension": self.caption_extension},
        )


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
