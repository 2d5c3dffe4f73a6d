"""The source contract: one config model per kind, owning its validation, its paths and its readers.

A source is where images come from. The annotation pipeline reads it with `read()` (a lazy Ray Dataset of
rows in the `images` contract, extra columns carried along); the evaluator reads the kinds that can be
streamed without Ray with `local_rows()`. Everything else about a kind -- which of its fields are paths
(preflight checks them, `with_base` resolves them, the resume hash records the resolved ones), what the
simulated annotators should read -- is asked of the source object, never decided by testing its class.

Kinds live in this package, one module each, and resolve by `kind` through the `grainclip.sources`
entry-point group (`grainclip.sources.source_class`), so another package can add one. Readers import
Ray inside the method: grainclip.train and grainclip.evaluate import this package on machines without Ray.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import model_validator

from grainclip import storage
from grainclip.config.base import ConfigError, ConfigModel
from grainclip.schema import RowGroup

if TYPE_CHECKING:
    import ray.data


@dataclass(frozen=True)
class TableRows:
    """A source's rows as Parquet row groups in the images or annotations contract (extra columns kept).

    `classes` (label order) and `descriptors` (a Menon & Vondrick JSON covering at least those classes) are
    what the source itself defines about its labels, e.g. PartsWorld's classes.json; None when it has none.
    """

    groups: list[RowGroup]
    classes: list[str] | None = None
    descriptors: Path | str | None = None


@dataclass(frozen=True)
class ClassFolderRows:
    """A source's rows as image files (`files`, relative to `root`), each file's class its first folder."""

    root: Path
    files: list[Path]


def is_local(path: str) -> bool:
    """A plain local path, not a URL (`s3://...`) or a glob pattern: something resolved against a base folder."""
    return not storage.is_uri(path) and not is_pattern(path)


def is_pattern(path: str) -> bool:
    """A glob pattern, left to the reader that expands it."""
    return any(c in path for c in "*?[")


class Source(ConfigModel):
    """Base of every source kind. A subclass sets `kind: Literal["name"]` and lists its path fields."""

    kind: str
    #: Fields holding paths (str or a list of str; Path objects are accepted); None values are skipped.
    path_fields: ClassVar[tuple[str, ...]] = ("path",)
    #: The rows already hold an earlier run's descriptions, which the pipeline keeps: it runs no describe stage.
    carries_descriptions: ClassVar[bool] = False

    @model_validator(mode="before")
    @classmethod
    def _paths_as_strings(cls, data: Any) -> Any:
        """Accept `Path` objects where the YAML has strings (code builds configs too)."""
        if not isinstance(data, dict):
            return data

        def text(value: Any) -> Any:
            return os.fspath(value) if isinstance(value, os.PathLike) else value

        return {
            k: ([text(v) for v in value] if isinstance(value, list) else text(value)) if k in cls.path_fields else value
            for k, value in data.items()
        }

    def paths(self) -> list[str]:
        """Every path this source reads, as written in the config."""
        found: list[str] = []
        for name in self.path_fields:
            value = getattr(self, name)
            found += [str(v) for v in value] if isinstance(value, list) else [] if value is None else [str(value)]
        return found

    def missing_paths(self) -> list[str]:
        """The local and object-storage paths that do not exist (other URLs and globs are left to the reader).

        Asking object storage also surfaces a wrong endpoint, bucket or credentials here, before Ray starts.
        """
        checked = [p for p in self.paths() if not is_pattern(p) and (is_local(p) or p.startswith("s3://"))]
        for path in checked:
            storage.check_bucket(path)  # "no such bucket" says more than "path not found"
        return [p for p in checked if not storage.exists(p)]

    def problems(self) -> list[Exception]:
        """Everything that can be known wrong before anything is read, each as the error `check` would raise.

        Preflight reports all of them, one line each, before Ray starts. The base reports the local paths that
        do not exist (FileNotFoundError naming them all); kinds add what they know once their paths exist
        (columns, types, splits).
        """
        try:
            missing = self.missing_paths()
        except storage.StorageError as exc:  # unreachable endpoint, no bucket, no credentials: says it all
            return [exc]
        return [FileNotFoundError(f"source path(s) not found: {', '.join(missing)}")] if missing else []

    def check(self) -> None:
        """Refuse in one line what can be known wrong before anything is read (the first of `problems`)."""
        problems = self.problems()
        if problems:
            raise problems[0]

    def with_base(self, base: Path) -> Source:
        """This source with relative local paths resolved against `base` (runs record absolute paths)."""

        def resolve(value: str | None) -> str | None:
            return value if value is None or not is_local(value) or Path(value).is_absolute() else str(base / value)

        data = {}
        for name in self.path_fields:
            value = getattr(self, name)
            data[name] = [resolve(v) for v in value] if isinstance(value, list) else resolve(value)
        return self.model_copy(update=data)

    def annotator_truth(self) -> str | None:
        """Ground truth the simulated (`partsworld`) annotators read by default; None: they need `options.truth`."""
        return None

    def read(self) -> ray.data.Dataset:
        """A lazy, streaming Ray Dataset of the source's rows in the images contract."""
        raise NotImplementedError(f"source kind {self.kind!r} has no Ray reader")

    def local_rows(self) -> TableRows | ClassFolderRows:
        """The rows for a reader without Ray (the evaluator). Kinds that have no such form refuse."""
        raise ConfigError(
            f"source kind {self.kind!r} cannot be read without Ray (the evaluator reads Parquet shards and "
            "class folders of images)"
        )
