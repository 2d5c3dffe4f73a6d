"""Streaming annotations Parquet into training batches for single-process runs (Ray Train uses ray_data.py).

Order: each epoch shuffles the Parquet row groups (seeded by (seed, epoch)), reads them in windows of
`shuffle_row_groups` groups and shuffles the rows inside each window, so memory is bounded by one window
whatever the dataset size. Row p of an epoch belongs to shard p mod S, with one shard per (rank, DataLoader
worker); each shard's stream runs through epochs forever and the trainer stops at its step count.

Resume: every batch carries its shard and that shard's cursor (rows consumed, skipped ones included).
`StreamPosition` records the cursors of the batches the trainer actually consumed (not the prefetched
ones), and a resumed stream starts each shard at its cursor and rotates the worker order so the DataLoader's
round-robin continues where it stopped. With per-sample randomness (samples.py) the resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from grainclip.config.base import ConfigError
from grainclip.schema import ANNOTATIONS_SCHEMA, RowGroup, SchemaError, parquet_file
from grainclip.train.samples import TRAINABLE_STATUSES, SampleBuilder, Skipped, SkipTally

READ_COLUMNS = ("image_id", "image", "image_uri", "caption", "llm_caption", "regions", "status")


def check_trainable(groups: list[RowGroup], num_shards: int) -> dict[str, int]:
    """Rows per status (read from the small status column only); fails early if nothing can train."""
    statuses: dict[str, int] = {}
    for path in sorted({group.path for group in groups}):
        for status in parquet_file(path).read(columns=["status"]).column("status").to_pylist():
            statuses[status] = statuses.get(status, 0) + 1
    trainable = sum(count for status, count in statuses.items() if status in TRAINABLE_STATUSES)
    if not trainable:
        raise SchemaError(f"no annotation row has a trainable status {sorted(TRAINABLE_STATUSES)}; found {statuses}")
    total = sum(statuses.values())
    if total < num_shards:
        raise SchemaError(f"{total} annotation rows cannot feed {num_shards} data shards (ranks x data.num_workers)")
    return statuses


class EpochOrder:
    """The deterministic row order of every epoch, and the rows of one shard of it, read window by window."""

    def __init__(self, groups: list[RowGroup], window: int, seed: int) -> None:
        self.groups = groups
        self.window = window
        self.seed = seed
        self.total_rows = sum(group.rows for group in groups)
        self._files: dict[str, pq.ParquetFile] = {}

    def windows(self, epoch: int) -> Iterator[tuple[list[RowGroup], np.ndarray]]:
        """(row groups, row permutation within their concatenation) for each window of the epoch."""
        rng = np.random.default_rng([self.seed, epoch])
        order = [self.groups[i] for i in rng.permutation(len(self.groups))]
        for start in range(0, len(order), self.window):
            groups = order[start : start + self.window]
            yield groups, rng.permutation(sum(group.rows for group in groups))

    def shard_size(self, shard: int, num_shards: int) -> int:
        return len(range(shard, self.total_rows, num_shards))

    def shard_rows(self, shard: int, num_shards: int, cursor: int) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """Yield (epoch, cursor after this row, row) for shard `shard`, starting `cursor` rows into its stream."""
        size = self.shard_size(shard, num_shards)
        epoch, offset = divmod(cursor, size)
        while True:
            start = shard + offset * num_shards  # position in the epoch of this shard's next row
            window_start = 0
            for groups, permutation in self.windows(epoch):
                window_end = window_start + len(permutation)
                first = max(start, window_start)
                first += (shard - first) % num_shards
                mine = np.arange(first, window_end, num_shards) - window_start
                if mine.size:
                    for row in self.read(groups).take(pa.array(permutation[mine])).to_pylist():
                        cursor += 1
                        yield epoch, cursor, row
                window_start = window_end
            epoch, offset = epoch + 1, 0

    def read(self, groups: list[RowGroup]) -> pa.Table:
        tables = []
        for group in groups:
            file = self._files.get(group.path) or self._files.setdefault(group.path, parquet_file(group.path))
            present = [name for name in READ_COLUMNS if name in file.schema_arrow.names]
            table = file.read_row_group(group.index, columns=present)
            for name in READ_COLUMNS:
                if name not in present:
                    table = table.append_column(
                        ANNOTATIONS_SCHEMA.field(name), pa.nulls(table.num_rows, ANNOTATIONS_SCHEMA.field(name).type)
                    )
            tables.append(table.select(list(READ_COLUMNS)))
        return pa.concat_tables(tables, promote_options="permissive")


class AnnotationStream(IterableDataset):
    """Endless samples of one (rank, worker) shard; skipped rows are counted on the next sample."""

    def __init__(
        self,
        order: EpochOrder,
        builder: SampleBuilder,
        rank: int = 0,
        world_size: int = 1,
        cursors: dict[int, int] | None = None,
        rotation: int = 0,
    ) -> None:
        self.order = order
        self.builder = builder
        self.rank = rank
        self.world_size = world_size
        self.cursors = cursors or {}
        self.rotation = rotation

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info else (1, 0)
        shard = self.rank * workers + (worker + self.rotation) % workers
        num_shards = self.world_size * workers
        size = self.order.shard_size(shard, num_shards)
        if size == 0:
            raise ValueError(f"{self.order.total_rows} annotation rows cannot feed {num_shards} data shards")
        skips = SkipTally()
        for epoch, cursor, row in self.order.shard_rows(shard, num_shards, self.cursors.get(shard, 0)):
            sample = self.builder(row, epoch)
            if isinstance(sample, Skipped):
                skips.add(sample)
                if skips.rows > size:
                    raise ValueError(f"no trainable row in data shard {shard} ({size} rows; skipped {skips.counts})")
                continue
            skips.stamp(sample)
            sample["shard"], sample["cursor"] = np.int64(shard), np.int64(cursor)
            yield sample


@dataclass
class StreamPosition:
    """Where the consumed data stream stands: per-shard cursors and the number of batches consumed."""

    num_shards: int
    batches: int = 0
    cursors: dict[int, int] = field(default_factory=dict)

    def advance(self, batch: dict[str, torch.Tensor]) -> None:
        self.cursors[int(batch["shard"][-1])] = int(batch["cursor"][-1])
        self.batches += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "num_shards": self.num_shards,
            "batches": self.batches,
            "cursors": {str(k): v for k, v in self.cursors.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], num_shards: int) -> StreamPosition:
        if "num_shards" not in state:
            raise ConfigError("the checkpoint was written by a Ray Train run (--workers N): resume it the same way")
        if state["num_shards"] != num_shards:
            raise ConfigError(
                f"cannot resume the data stream exactly: the checkpoint used {state['num_shards']} data shards "
                f"(ranks x data.num_workers), this run has {num_shards}; resume with the same settings"
            )
        return cls(num_shards, state["batches"], {int(k): v for k, v in state["cursors"].items()})


def make_loader(
    order: EpochOrder,
    builder: SampleBuilder,
    batch_size: int,
    num_workers: int,
    prefetch_batches: int,
    position: StreamPosition,
    rank: int = 0,
    world_size: int = 1,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader continuing the stream at `position` (each batch comes whole from one worker)."""
    workers = max(num_workers, 1)
    stream = AnnotationStream(order, builder, rank, world_size, position.cursors, rotation=position.batches % workers)
    return DataLoader(
        stream,
        batch_size=batch_size,
        num_workers=num_workers,
        prefetch_factor=prefetch_batches if num_workers else None,
        pin_memory=pin_memory,
        # Its own generator: the DataLoader's seed draw must not consume the global RNG that dropout uses,
        # or a resumed run's dropout masks would shift. (Samples carry their own seeds; workers need none.)
        generator=torch.Generator().manual_seed(0),
    )
