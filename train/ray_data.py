"""The Ray Data pipeline that feeds Ray Train workers: Parquet rows -> fixed-shape sample columns.

Decoding, augmentation and tokenisation run in a pool of Ray Data actors (on any node of the cluster), not in
the training workers. The pipeline lists every epoch the run needs explicitly (read, shuffle the block order
with an epoch seed, tag rows with their epoch) and unions them, because a sample's randomness is a function
of (seed, epoch, image_id) and a Ray Data stage cannot otherwise know which pass over the data it is in.
Output blocks hold exactly one per-worker batch and the order is preserved, so Ray Train's equal streaming
split deals them out round-robin: a global batch is consecutive rows of the stream, as in a single process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import ray.data
from PIL import Image

from grainclip.config.train import TrainConfig
from grainclip.images import encode_image
from grainclip.schema import RowGroup, parquet_file
from grainclip.sources.parquet import read_listed_row_groups

if TYPE_CHECKING:
    from grainclip.train.samples import SampleBuilder

log = logging.getLogger(__name__)

EPOCH_COLUMN = "_epoch"


class PrepareSamples:
    """Ray Data stage (callable class, one per actor): rows -> stacked samples; skips are counted on the
    next sample of the block (or the last one when the skipped rows end the block).

    The builder comes as an object-store reference, and this module imports torch (through samples.py) only
    inside the stage: Ray Data's coordinators (SplitCoordinator, DatasetManager) deserialize the whole plan, and a
    SampleBuilder in it made each of them import torch and torchvision (~12 CPU-s apiece per run)."""

    def __init__(self, builder_ref: ray.ObjectRef) -> None:
        from grainclip.train.samples import Skipped, SkipTally

        builder = self.builder = ray.get(builder_ref)
        blank = {
            "image_id": "template",
            "image": encode_image(Image.new("RGB", (8, 8))),
            "caption": "x",
            "status": "ok",
        }
        template = builder(blank, 0)
        assert not isinstance(template, Skipped), template
        SkipTally().stamp(template)  # the skip columns, at zero
        self.empty = {
            key: np.zeros((0, *np.shape(value)), dtype=np.asarray(value).dtype) for key, value in template.items()
        }

    def __call__(self, table: pa.Table) -> dict[str, np.ndarray]:
        from grainclip.train.samples import Skipped, SkipTally

        samples, skips = [], SkipTally()
        for row in table.to_pylist():
            sample = self.builder(row, row[EPOCH_COLUMN])
            if isinstance(sample, Skipped):
                skips.add(sample)
                continue
            samples.append(skips.stamp(sample))
        if not samples:
            log.warning(
                "a block of %d annotation rows had no trainable row (skipped: %s)", table.num_rows, skips.counts
            )
            return dict(self.empty)
        skips.stamp(samples[-1])
        return {key: np.stack([sample[key] for sample in samples]) for key in self.empty}


def tag_epoch(table: pa.Table, epoch: int) -> pa.Table:
    return table.append_column(EPOCH_COLUMN, pa.array(np.full(table.num_rows, epoch, dtype=np.int64)))


def epochs_needed(cfg: TrainConfig, start_step: int, trainable_rows: int) -> int:
    """Passes over the data for the remaining steps, plus one spare for rows that fail to decode."""
    rows = (cfg.steps - start_step) * cfg.optim.grad_accum_steps * cfg.batch_size * cfg.workers
    return math.ceil(rows / max(trainable_rows, 1)) + 1


def training_dataset(
    cfg: TrainConfig, groups: Sequence[RowGroup], builder: SampleBuilder, start_epoch: int, epochs: int
) -> ray.data.Dataset:
    """`groups`: the row groups of `cfg.data.train`, listed once by the caller (who checked them)."""
    from grainclip.train.data import READ_COLUMNS  # the driver's import only: data.py imports torch

    columns = [name for name in READ_COLUMNS if name in parquet_file(groups[0].path).schema_arrow.names]
    passes = [
        read_listed_row_groups(groups, columns)
        .randomize_block_order(seed=cfg.seed + epoch)
        .map_batches(partial(tag_epoch, epoch=epoch), batch_format="pyarrow", batch_size=None)
        for epoch in range(start_epoch, start_epoch + epochs)
    ]
    dataset = passes[0].union(*passes[1:]) if len(passes) > 1 else passes[0]
    samples = dataset.map_batches(
        PrepareSamples,
        fn_constructor_kwargs={"builder_ref": ray.put(builder)},
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max(cfg.data.workers(builder.image_size), 1)),
    )
    # Blocks of exactly one worker batch: with order preserved, the equal streaming split then deals them out
    # round-robin (each block goes to the worker with the fewest rows), so global batch k = stream rows k*W*B..
    return samples.repartition(target_num_rows_per_block=cfg.batch_size, strict=True)
