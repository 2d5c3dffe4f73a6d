"""`parquet`: Parquet shards already in the images (or annotations) contract; extra columns are carried along."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from grainclip import storage
from grainclip.config.base import ConfigError
from grainclip.schema import list_row_groups, parquet_file, parquet_files, schema_problems
from grainclip.sources.base import Source, TableRows, is_local

if TYPE_CHECKING:
    import ray.data


def read_parquet_files(paths: list[str]) -> ray.data.Dataset:
    """A lazy Ray Dataset over every Parquet file under `paths` (files or folders); refuses an empty listing."""
    import ray.data

    files = [f for p in paths for f in parquet_files(p)]
    if not files:
        raise FileNotFoundError(f"no Parquet files under {', '.join(paths)}")
    filesystem, _ = storage.resolve(files[0])
    return ray.data.read_parquet([storage.resolve(f)[1] for f in files], filesystem=filesystem)


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
