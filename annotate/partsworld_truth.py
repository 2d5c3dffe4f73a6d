"""Ground truth and seeded noise for the simulated PartsWorld annotators.

PartsWorld's generator knows every part's description and box, so where no LLM or detector weights exist
the simulated describer/grounder replay that truth through configurable noise that mimics what real
annotators get wrong (missing and hallucinated descriptions, loose, missed and spurious boxes). Noise is
drawn from a generator seeded by (seed, image_id), so a rerun or a restarted Ray actor gives identical output.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import pyarrow.compute as pc
from pydantic import Field

from grainclip import schema, storage
from grainclip.config.annotate import DescriberConfig, GrounderConfig
from grainclip.config.base import ConfigError, ConfigModel, parse_config
from grainclip.id_arrays import fixed_width_bytes
from grainclip.storage import Location

log = logging.getLogger(__name__)

Request = TypeVar("Request")
Result = TypeVar("Result")


@dataclass(frozen=True)
class TruthRecord:
    llm_caption: str | None
    descriptions: tuple[str, ...]
    region_texts: tuple[str, ...]
    region_boxes: np.ndarray  # (R, 4) normalised xyxy of the original image


class TruthIndex:
    """Every annotations-schema Parquet file under `path` (a PartsWorld root or its truth folder), by image_id.

    Only a sorted id array (`grainclip.id_arrays`, built from the Arrow buffers without a Python string per id)
    and each id's (file, row) are held: a file's records are built when one of its ids is asked for, and the last
    few files are kept (requests arrive shard by shard). That is ~24 bytes per image instead of every record in
    every simulated actor (about 1 GB each at a million images). Where an id is in several files the last file
    wins.
    """

    CACHED_FILES = 4

    def __init__(self, path: str | Path) -> None:
        path = storage.location(path)
        if not storage.exists(path):
            raise ConfigError(f"PartsWorld truth not found at {path} (options.truth: the dataset dir or its truth dir)")
        files = [f for f in schema.parquet_files(path) if schema.kind_of(f) == "annotations"]
        if not files:
            raise ConfigError(f"no annotations Parquet (PartsWorld truth) under {path}")
        self.path, self.files = path, files
        ids, file_of, row_of, pool = [], [], [], set()
        for index, file in enumerate(files):
            parquet = schema.parquet_file(file)
            present = [c for c in ("image_id", "descriptions") if c in parquet.schema_arrow.names]
            table = parquet.read(columns=present)
            ids.append(fixed_width_bytes(table.column("image_id")))
            file_of.append(np.full(table.num_rows, index, dtype=np.int32))
            row_of.append(np.arange(table.num_rows, dtype=np.int32))
            if "descriptions" in present:
                pool.update(pc.unique(pc.list_flatten(table.column("descriptions"))).drop_null().to_pylist())
        encoded = np.concatenate(ids)
        order = np.argsort(encoded, kind="stable")
        self._ids = encoded[order]
        self._file = np.concatenate(file_of)[order]
        self._row = np.concatenate(row_of)[order]
        self._cache: OrderedDict[int, list[TruthRecord]] = OrderedDict()
        self.description_pool = sorted(pool)
        log.info("PartsWorld truth: %d images from %d file(s) under %s", len(self._last_positions()), len(files), path)

    def get(self, image_id: str) -> TruthRecord | None:
        probe = image_id.encode()
        position = int(np.searchsorted(self._ids, probe, side="right")) - 1  # the last file holding the id
        if position < 0 or self._ids[position] != probe:
            return None
        return self._records(int(self._file[position]))[int(self._row[position])]

    def items(self) -> Iterator[tuple[str, TruthRecord]]:
        """Every (image_id, record), in id order; an id held by several files once (the last file wins)."""
        for position in self._last_positions():
            record = self._records(int(self._file[position]))[int(self._row[position])]
            yield self._ids[position].decode(), record

    def _last_positions(self) -> np.ndarray:
        """Where each distinct id's last entry sits in the sorted arrays (the file that wins)."""
        if not len(self._ids):
            return np.array([], dtype=np.int64)
        return np.flatnonzero(np.append(self._ids[1:] != self._ids[:-1], True))

    def _records(self, index: int) -> list[TruthRecord]:
        """Every record of file `index`, in row order (kept for the next requests, the oldest file dropped)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        table = schema.read_table(self.files[index], "annotations")
        records = []
        for row in table.select(["llm_caption", "descriptions", "regions"]).to_pylist():
            regions = row["regions"] or []
            records.append(
                TruthRecord(
                    llm_caption=row["llm_caption"],
                    descriptions=tuple(row["descriptions"] or ()),
                    region_texts=tuple(r["text"] for r in regions),
                    region_boxes=np.asarray([r["box"] for r in regions], dtype=np.float32).reshape(-1, 4),
                )
            )
        self._cache[index] = records
        if len(self._cache) > self.CACHED_FILES:
            self._cache.popitem(last=False)
        return records


class TruthOptions(ConfigModel):
    """The options both simulated annotators take; each adds its own noise knobs."""

    truth: Location = Field(
        description="PartsWorld dataset dir (or its truth dir) holding annotations Parquet, local or s3://."
    )
    seed: int = 0


class TruthReplay:
    """Mixin for the simulated describer and grounder: options parsed and truth indexed once, recorded in `info`.

    Listed before the Describer/Grounder base, so `super()` reaches the annotator's own `__init__` and `info`.
    """

    simulated: ClassVar[bool] = True
    kind: ClassVar[str]
    options_model: ClassVar[type[TruthOptions]]

    def __init__(self, config: DescriberConfig | GrounderConfig) -> None:
        super().__init__(config)
        self.options = parse_config(config.options, self.options_model, source=f"{self.kind}.options (partsworld)")
        self.truth = TruthIndex(self.options.truth)

    def replay(
        self,
        requests: Sequence[Request],
        stream: str,
        replay_one: Callable[[Request, TruthRecord, np.random.Generator], Result],
        failed: Callable[[str], Result],
    ) -> list[Result]:
        """Each request's truth and its own noise generator to `replay_one`; an image not in the truth fails alone."""
        results = []
        for request in requests:
            image_id = request.image_id
            record = self.truth.get(image_id)
            if record is None:
                results.append(failed(f"image_id {image_id!r} is not in the PartsWorld truth at {self.truth.path}"))
            else:
                results.append(replay_one(request, record, rng_for(self.options.seed, stream, image_id)))
        return results

    def info(self) -> dict[str, Any]:
        return {**super().info(), "truth": str(self.options.truth), **self.options.model_dump(exclude={"truth"})}


def rng_for(seed: int, stream: str, image_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, stream, image_id): stable across processes and reruns."""
    digest = hashlib.sha256(f"{stream}\0{image_id}".encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def words(text: str) -> set[str]:
    return set(text.lower().replace(",", " ").split())


def word_overlap(a: str, b: str) -> float:
    """Jaccard overlap of the word sets: how much a detector keyed on words would confuse a with b."""
    wa, wb = words(a), words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 0.0
