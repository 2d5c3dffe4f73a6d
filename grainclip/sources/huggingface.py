"""`huggingface`: a Hugging Face `datasets` dataset on disk, read through Ray Data without the `datasets` library.

`path` is a folder written by `Dataset.save_to_disk` (its `state.json` lists the Arrow shards in order), one
written by `DatasetDict.save_to_disk` (pick `split`), or any folder of the dataset's Parquet or Arrow files
(e.g. a hub snapshot's `data/`). The image column may be an `Image()` feature (struct of bytes and path),
raw bytes, or a string path; the caption column is any string column.

Rows are read in units of one Parquet row group / Arrow record batch, each in a Ray task, so the read
streams and spreads over the cluster. Without `id_column` a row's image_id is its index in the dataset (as in
`dataset[i]`), stable across reruns of the same files -- which the pipeline's resume relies on.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from grainclip.config.base import ConfigError
from grainclip.schema import RowGroup, list_row_groups, parquet_files
from grainclip.sources.base import Source

if TYPE_CHECKING:
    import ray.data


class HuggingFaceSource(Source):
    """A saved Hugging Face dataset: which folder, which split, and which columns hold what."""

    kind: Literal["huggingface"]
    path: str = Field(description="A save_to_disk folder, or a folder of the dataset's Parquet or Arrow files.")
    split: str | None = Field(None, description="Split folder of a DatasetDict save_to_disk folder.")
    image_column: str = Field("image", description="Image() feature, bytes, or a string path/URI.")
    caption_column: str | None = Field("caption", description="String column used as the caption; None: none.")
    id_column: str | None = Field(None, description="Column used as image_id; None: the row's index.")
    keep_columns: list[str] = Field(default_factory=list, description="Other columns carried into the rows.")

    def data_files(self) -> list[Path]:
        """The dataset's Parquet or Arrow files, in dataset order."""
        root = Path(self.path)
        if (root / "dataset_dict.json").is_file():
            splits = json.loads((root / "dataset_dict.json").read_text()).get("splits", [])
            if self.split not in splits:
                raise ConfigError(f"{root} holds a DatasetDict: set `split` to one of {splits} (got {self.split!r})")
            root = root / self.split
        elif self.split is not None:
            raise ConfigError(
                f"`split: {self.split}` is set but {root} is not a DatasetDict folder (no dataset_dict.json)"
            )
        if (root / "state.json").is_file():
            return [root / entry["filename"] for entry in json.loads((root / "state.json").read_text())["_data_files"]]
        arrow = sorted(p for p in root.rglob("*.arrow") if not p.name.startswith((".", "_")))
        parquet = parquet_files(root)
        if arrow and parquet:
            raise ConfigError(f"{root} holds both Parquet and Arrow files; point `path` at the folder of one of them")
        if not (arrow or parquet):
            raise FileNotFoundError(f"no Parquet or Arrow files under {root}")
        return arrow or parquet

    def units(self) -> list[RowGroup]:
        """One unit per Parquet row group or Arrow record batch, numbered through the whole dataset."""
        files = self.data_files()
        if files[0].suffix == ".parquet":
            return list_row_groups(files)
        units, start = [], 0
        for file in files:
            for index, rows in enumerate(_arrow_batch_sizes(file)):
                units.append(RowGroup(str(file), index, rows, start))
                start += rows
        if not units:
            raise FileNotFoundError(f"no rows in the Arrow files under {self.path}")
        return units

    def columns(self) -> dict[str, str | None]:
        """Which dataset column becomes which images-contract column (extra columns keep their names)."""
        return {
            "image": self.image_column,
            "caption": self.caption_column,
            "image_id": self.id_column,
            **{name: name for name in self.keep_columns},
        }

    def problems(self) -> list[Exception]:
        found = super().problems()
        if found:
            return found
        try:
            names = _schema(self.data_files()[0]).names
        except (ConfigError, FileNotFoundError) as exc:
            return [exc]
        missing = [c for c in self.columns().values() if c is not None and c not in names]
        if missing:
            return [ConfigError(f"huggingface source {self.path}: no column(s) {missing}; the dataset has {names}")]
        return []

    def read(self) -> ray.data.Dataset:
        import ray.data

        self.check()
        return ray.data.from_items([asdict(unit) for unit in self.units()]).map_batches(
            read_units, batch_size=1, batch_format="pyarrow", fn_kwargs={"columns": self.columns()}
        )


def read_units(units: pa.Table, columns: dict[str, str | None]) -> pa.Table:
    """Ray task: read units (Parquet row groups / Arrow batches) and map their columns to the images contract."""
    tables = []
    for unit in units.to_pylist():
        unit = RowGroup(**unit)
        wanted = sorted({c for c in columns.values() if c is not None})
        tables.append(to_images(_read_unit(unit, wanted), columns, unit.start))
    return pa.concat_tables(tables)


def to_images(table: pa.Table, columns: dict[str, str | None], start: int) -> pa.Table:
    """One unit's rows as images-contract columns: image bytes or URI, caption, image_id, kept columns."""
    image = table.column(columns["image"])
    if pa.types.is_struct(image.type):  # datasets' Image() feature: {bytes, path}; bytes win, like load_image_bytes
        image_bytes, image_uri = pc.struct_field(image, "bytes"), pc.struct_field(image, "path")
        image_uri = pc.if_else(pc.is_null(image_bytes), image_uri, pa.scalar(None, pa.string()))
    elif pa.types.is_string(image.type) or pa.types.is_large_string(image.type):
        image_bytes, image_uri = pa.nulls(table.num_rows, pa.binary()), image
    else:
        image_bytes, image_uri = image, pa.nulls(table.num_rows, pa.string())
    caption = table.column(columns["caption"]) if columns["caption"] else pa.nulls(table.num_rows, pa.string())
    ids = (
        table.column(columns["image_id"]).cast(pa.string())
        if columns["image_id"]
        else pa.array([str(start + i) for i in range(table.num_rows)], pa.string())
    )
    out: dict[str, Any] = {
        "image_id": ids,
        "image": image_bytes.cast(pa.binary()),
        "image_uri": image_uri.cast(pa.string()),
        "caption": caption.cast(pa.string()),
    }
    for name, column in columns.items():
        if name not in out:
            out[name] = table.column(column)
    return pa.table(out)


def _open_arrow(source: pa.MemoryMappedFile) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """Schema and record batches of an Arrow IPC file (random-access format) or stream (what save_to_disk writes)."""
    try:
        reader = pa.ipc.open_file(source)
        return reader.schema, [reader.get_batch(i) for i in range(reader.num_record_batches)]
    except pa.ArrowInvalid:
        source.seek(0)
        stream = pa.ipc.open_stream(source)
        return stream.schema, list(stream)


def _arrow_batch_sizes(path: Path) -> list[int]:
    with pa.memory_map(str(path)) as source:  # zero-copy: only the batch headers are touched
        return [batch.num_rows for batch in _open_arrow(source)[1]]


def _schema(path: Path) -> pa.Schema:
    if path.suffix == ".parquet":
        return pq.read_schema(path)
    with pa.memory_map(str(path)) as source:
        return _open_arrow(source)[0]


def _read_unit(unit: RowGroup, columns: list[str]) -> pa.Table:
    if unit.path.endswith(".parquet"):
        return pq.ParquetFile(unit.path).read_row_group(unit.index, columns=columns)
    # Not closed here: the batch's buffers point into the mapping, which lives as long as they do.
    batch = _open_arrow(pa.memory_map(unit.path))[1][unit.index]
    return pa.Table.from_batches([batch]).select(columns)
