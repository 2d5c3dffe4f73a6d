"""`parquet`: Parquet shards already in the images (or annotations) contract; extra columns are carried along."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import pyarrow as pa
from pydantic import Field

from grainclip.config.base import ConfigError
from grainclip.schema import RowGroup, list_row_groups, parquet_file, parquet_files, schema_problems
from grainclip.sources.base import Source, TableRows, is_local

if TYPE_CHECKING:
    import ray.data


def read_parquet_files(paths: list[str]) -> ray.data.Dataset:
    """A lazy Ray Dataset over every Parquet file under `paths` (files or folders, local or s3://): one unit of
    work per row group. Refuses a listing without rows.

    Not `ray.data.read_parquet`: its read worker keeps ~20 MiB of private memory per 4-MiB file it has read
    (benchmarks/RESULTS.md), so on one node it grows with the number of files without bound, and its V2 reader
    starts a listing task and a pool of footer-reading actors for every read. Here the driver lists the row
    groups once (footers only) and each task reads its row group with pyarrow and hands the memory back, so a
    reader holds one row group whatever the dataset's size.
    """
    return read_listed_row_groups(list_row_groups(paths))


def read_listed_row_groups(groups: Sequence[RowGroup], columns: Sequence[str] | None = None) -> ray.data.Dataset:
    """`read_parquet_files` over row groups already listed (a caller reading the same files several times);
    `columns`: only these (None: all)."""
    import ray.data

    units = ray.data.from_items([asdict(group) for group in groups], override_num_blocks=len(groups))
    read = partial(read_row_groups, columns=list(columns) if columns is not None else None)
    return units.map_batches(read, batch_size=1, batch_format="pyarrow")


def read_row_groups(units: pa.Table, columns: list[str] | None = None) -> pa.Table:
    """Ray task: the rows of the listed row groups as they are in the files (`columns`, or all)."""
    tables = []
    for unit in units.to_pylist():
        group = RowGroup(**unit)
        tables.append(parquet_file(group.path).read_row_group(group.index, columns=columns))
    table = pa.concat_tables(tables, promote_options="permissive")
    pa.default_memory_pool().release_unused()
    return table


def contract_problems(paths: list[str]) -> list[Exception]:
    """One error per distinct schema problem of the Parquet files under `paths`, naming a file that has it.

    A thousand shards without `image_id` make one line (with the count), not a thousand.
    """
    files = [f for p in paths for f in parquet_files(p)]
    if paths and not files:
        return [FileNotFoundError(f"no Parquet files under {', '.join(paths)}")]
    where: dict[str, list[Path | str]] = {}
    for file in files:
        for problem in schema_problems(parquet_file(file).schema_arrow, "images"):
            where.setdefault(problem, []).append(file)
    return [
        ConfigError(
            f"parquet source {found[0]}"
            + (f" (and {len(found) - 1} more file(s))" if len(found) > 1 else "")
            + f": {problem}; the images contract is image_id (string), image (bytes) or image_uri, caption "
            "(docs/sources.md)"
        )
        for problem, found in where.items()
    ]


class ParquetSource(Source):
    """One Parquet file, a folder of shards, or a list of either."""

    kind: Literal["parquet"]
    path: str | list[str] = Field(description="A Parquet file, a folder of shards, or a list of either.")

    def problems(self) -> list[Exception]:
        """Missing paths, then each file's columns and types against the images contract (footers only)."""
        found = super().problems()
        if found:
            return found
        return contract_problems([p for p in self.paths() if is_local(p) or p.startswith("s3://")])

    def read(self) -> ray.data.Dataset:
        self.check()
        return read_parquet_files(self.paths())

    def local_rows(self) -> TableRows:
        self.check()
        return TableRows(list_row_groups(self.paths()))
