"""Arrow schemas of the two Parquet contracts every stage shares, with validation and shard I/O.

`images` is what the pipeline reads; `annotations` is what it writes and what the trainer and evaluator read.
The schema name and version are stored in each file's metadata so any Arrow reader can tell what it holds
and a future version can be migrated instead of guessed. Extra columns (e.g. PartsWorld's `class_name`)
are allowed and carried through; the required ones must have the declared types.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from grainclip import storage

log = logging.getLogger(__name__)

SCHEMA_VERSION = "1"
METADATA_KEY = b"grainclip.schema"


class Status(str, enum.Enum):
    """Outcome of one image through the annotation pipeline; every row carries exactly one."""

    OK = "ok"
    NO_REGIONS = "no_regions"  # described, but the grounder kept no box above threshold
    DESCRIBE_FAILED = "describe_failed"  # LLM error, empty or unparseable output
    GROUND_FAILED = "ground_failed"  # detector raised on this image
    DECODE_FAILED = "decode_failed"  # bytes are not a readable image, or exceed the pixel limit
    INVALID_INPUT = "invalid_input"  # row breaks the images contract (missing id/bytes, bad caption)


STATUSES = tuple(s.value for s in Status)

BOX_TYPE = pa.list_(pa.float32(), 4)
REGION_TYPE = pa.struct([pa.field("text", pa.string()), pa.field("box", BOX_TYPE), pa.field("score", pa.float32())])

IMAGES_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),
        pa.field("image", pa.binary()),
        pa.field("image_uri", pa.string()),
        pa.field("caption", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
    ]
)

ANNOTATIONS_SCHEMA = pa.schema(
    [
        *IMAGES_SCHEMA,  # the input row is carried through unchanged
        pa.field("llm_caption", pa.string()),
        pa.field("descriptions", pa.list_(pa.string())),
        pa.field("regions", pa.list_(REGION_TYPE)),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("run_id", pa.string()),
    ]
)

SCHEMAS: dict[str, pa.Schema] = {"images": IMAGES_SCHEMA, "annotations": ANNOTATIONS_SCHEMA}


class SchemaError(ValueError):
    """A table or row breaks a grainclip data contract; the message names the column and row."""


def schema_for(kind: str) -> pa.Schema:
    try:
        return SCHEMAS[kind]
    except KeyError:
        raise SchemaError(f"unknown table kind {kind!r}; expected one of {sorted(SCHEMAS)}") from None


def with_metadata(schema: pa.Schema, kind: str) -> pa.Schema:
    return schema.with_metadata({**(schema.metadata or {}), METADATA_KEY: f"{kind}/{SCHEMA_VERSION}".encode()})


def conform(table: pa.Table, kind: str) -> pa.Table:
    """Order and cast the contract's columns, fill missing nullable ones with nulls, keep extra columns.

    Raises SchemaError when a required column is missing or a column cannot be cast (e.g. text in `width`).
    """
    schema = schema_for(kind)
    columns, fields = [], []
    for field in schema:
        if field.name in table.column_names:
            column = table.column(field.name)
            if not column.type.equals(field.type):
                try:
                    column = column.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise SchemaError(
                        f"{kind}: column {field.name!r} has type {column.type}, expected {field.type} ({exc})"
                    ) from None
        elif field.nullable:
            column = pa.nulls(table.num_rows, field.type)
        else:
            raise SchemaError(f"{kind}: required column {field.name!r} is missing (have {table.column_names})")
        columns.append(column)
        fields.append(field)
    for name in table.column_names:
        if name not in schema.names:
            columns.append(table.column(name))
            fields.append(table.schema.field(name))
    return pa.Table.from_arrays(columns, schema=with_metadata(pa.schema(fields), kind))


def schema_problems(schema: pa.Schema, kind: str) -> list[str]:
    """What keeps a file with `schema` from `conform`ing to contract `kind`, known from its schema alone.

    Preflight reads only the files' footers, so a missing `image_id` or a text `width` is refused before Ray
    starts instead of failing inside a read task. A column whose cast could only fail on some values (text to
    integer) counts as a problem: a crawl's Parquet would then fail half-way.
    """
    problems = []
    for field in schema_for(kind):
        if field.name not in schema.names:
            if not field.nullable:
                problems.append(f"required column {field.name!r} is missing (have {schema.names})")
            continue
        have = schema.field(field.name).type
        if have.equals(field.type):
            continue
        text_to_other = (pa.types.is_string(have) or pa.types.is_large_string(have)) and not (
            pa.types.is_string(field.type) or pa.types.is_binary(field.type)
        )
        try:
            pa.array([], type=have).cast(field.type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            text_to_other = True
        if text_to_other:
            problems.append(f"column {field.name!r} has type {have}, expected {field.type}")
    return problems


def validate(table: pa.Table, kind: str) -> pa.Table:
    """Conform `table` and check the value rules the types cannot express; returns the conformed table."""
    table = conform(table, kind)
    problems = list(_value_problems(table, kind))
    if problems:
        shown = "; ".join(problems[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        raise SchemaError(f"{kind}: {len(problems)} invalid value(s): {shown}{more}")
    return table


def _value_problems(table: pa.Table, kind: str) -> Iterator[str]:
    ids = table.column("image_id")
    if ids.null_count:
        yield f"image_id is null in {ids.null_count} row(s)"
    empty = pc.sum(pc.equal(pc.utf8_length(ids), 0)).as_py() or 0
    if empty:
        yield f"image_id is empty in {empty} row(s)"
    for name in ("width", "height"):
        bad = pc.sum(pc.less_equal(table.column(name), 0)).as_py() or 0
        if bad:
            yield f"{name} <= 0 in {bad} row(s)"
    if kind == "images":
        neither = pc.sum(pc.and_(pc.is_null(table.column("image")), pc.is_null(table.column("image_uri")))).as_py()
        if neither:
            yield f"{neither} row(s) have neither image bytes nor image_uri"
        return
    statuses = table.column("status")
    unknown = pc.sum(pc.invert(pc.is_in(statuses, value_set=pa.array(STATUSES)))).as_py() or 0
    if unknown:
        yield f"status not in {list(STATUSES)} in {unknown} row(s)"
    regions = table.column("regions").to_pylist()
    for row, (image_id, row_regions) in enumerate(zip(ids.to_pylist(), regions)):
        for k, region in enumerate(row_regions or []):
            problem = region_problem(region)
            if problem:
                yield f"row {row} (image_id={image_id!r}) region {k}: {problem}"


def region_problem(region: dict) -> str | None:
    """Why a region dict breaks the contract, or None. Boxes are normalised xyxy in [0, 1] with x1<=x2, y1<=y2."""
    text, box, score = region.get("text"), region.get("box"), region.get("score")
    if not isinstance(text, str) or not text.strip():
        return "text is empty"
    if box is None or len(box) != 4:
        return f"box must have 4 numbers, got {box!r}"
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in box):
        return f"box has a non-finite value {list(box)}"
    shown = [round(v, 4) for v in box]
    if not all(0.0 <= v <= 1.0 for v in box):
        return f"box {shown} is outside [0, 1] (boxes are normalised xyxy)"
    if box[0] > box[2] or box[1] > box[3]:
        return f"box {shown} has x1 > x2 or y1 > y2"
    if score is None or not math.isfinite(score):
        return f"score {score!r} is not a finite number"
    return None


def parquet_file(path: str | Path) -> pq.ParquetFile:
    """A Parquet file on local disk or object storage, opened for its footer and row groups."""
    filesystem, inner = storage.resolve(path)
    return pq.ParquetFile(inner, filesystem=filesystem)


def kind_of(path: str | Path) -> str | None:
    """The contract a Parquet file declares in its metadata (`images`/`annotations`), or None."""
    meta = parquet_file(path).schema_arrow.metadata or {}
    value = meta.get(METADATA_KEY)
    return value.decode().split("/")[0] if value else None


def write_shard(table: pa.Table, path: str | Path, kind: str, compression: str = "zstd") -> str:
    """Validate and commit one Parquet shard whole (`storage.write_bytes`): a crash never leaves half a file."""
    table = validate(table, kind)
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer, compression=compression)
    storage.write_bytes(path, buffer.getvalue().to_pybytes())
    return str(path)


def parquet_files(path: str | Path) -> list[Path | str]:
    """Parquet files under a file or directory (local or object storage), sorted, ignoring hidden/temporary files."""
    if storage.is_file(path):
        return [storage.location(path)]
    files = storage.list_files(path, ".parquet")
    if not files and not storage.is_dir(path):
        raise FileNotFoundError(f"no Parquet file or directory at {path}")
    return files


@dataclass(frozen=True)
class RowGroup:
    """One independently readable slice of a file, the unit readers deal out to workers and shards.

    For Parquet a row group (`index` into the file's row groups); for an Arrow IPC stream (a Hugging Face
    `save_to_disk` shard) a record batch. `start` is the listing-wide index of its first row.
    """

    path: str
    index: int
    rows: int
    start: int = 0


def list_row_groups(path: str | Path | Sequence[str | Path]) -> list[RowGroup]:
    """The non-empty row groups of every Parquet file under `path` (a file, a folder, or a list), in order.

    Raises FileNotFoundError when there is no file or no row: nothing downstream can do anything with none.
    """
    paths = [path] if isinstance(path, (str, Path)) else list(path)
    groups, start = [], 0
    for file in (f for p in paths for f in parquet_files(p)):
        metadata = parquet_file(file).metadata
        for index in range(metadata.num_row_groups):
            rows = metadata.row_group(index).num_rows
            if rows:
                groups.append(RowGroup(str(file), index, rows, start))
                start += rows
    if not groups:
        raise FileNotFoundError(f"no rows in the Parquet files under {', '.join(map(str, paths))}")
    return groups


def read_table(path: str | Path, kind: str, columns: Sequence[str] | None = None) -> pa.Table:
    """Read all shards under `path` into one conformed table (small data; stream with `iter_batches`)."""
    files = parquet_files(path)
    if not files:
        raise FileNotFoundError(f"no Parquet files under {path}")
    table = parquet_dataset(files).to_table(columns=columns)
    return table if columns else conform(table, kind)


def parquet_dataset(files: Sequence[str | Path]) -> ds.Dataset:
    """A pyarrow dataset over Parquet files that all live on one filesystem (local or one object store)."""
    filesystem, inner = storage.resolve_all(files)
    return ds.dataset(inner, format="parquet", filesystem=filesystem)


def iter_batches(
    path: str | Path, columns: Sequence[str] | None = None, batch_size: int = 256
) -> Iterable[pa.RecordBatch]:
    """Stream record batches from every shard under `path`; memory stays flat in dataset size."""
    dataset = parquet_dataset(parquet_files(path))
    yield from dataset.to_batches(columns=columns, batch_size=batch_size)
