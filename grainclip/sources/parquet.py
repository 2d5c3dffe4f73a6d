"""`parquet`: Parquet shards already in the images (or annotations) contract; extra columns are carried along."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from grainclip.schema import list_row_groups, parquet_files
from grainclip.sources.base import Source, TableRows

if TYPE_CHECKING:
    import ray.data


def read_parquet_files(paths: list[str]) -> ray.data.Dataset:
    """A lazy Ray Dataset over every Parquet file under `paths` (files or folders); refuses an empty listing."""
    import ray.data

    files = [f for p in paths for f in parquet_files(p)]
    if not files:
        raise FileNotFoundError(f"no Parquet files under {', '.join(paths)}")
    return ray.data.read_parquet([str(f) for f in files])


class ParquetSource(Source):
    """One Parquet file, a folder of shards, or a list of either."""

    kind: Literal["parquet"]
    path: str | list[str]

    def read(self) -> ray.data.Dataset:
        self.check()
        return read_parquet_files(self.paths())

    def local_rows(self) -> TableRows:
        self.check()
        return TableRows(list_row_groups([Path(p) for p in self.paths()]))
