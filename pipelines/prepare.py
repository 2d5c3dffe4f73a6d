"""Conform each source batch to the images contract in front of the model stages.

Every source kind (grainclip.sources) ends in the images contract, extra columns carried along, so the stages
never care where rows came from. `prepare_images` then conforms each batch, turns broken rows into
`invalid_input` rows by the same rules as `annotate_rows` (never dropping them) and removes rows already
committed by an earlier attempt (exactly-once resume).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

from grainclip.annotate.rows import input_problems
from grainclip.id_arrays import contains_sorted
from grainclip.pipelines.stages import set_column
from grainclip.schema import Status, conform

#: Columns the pipeline adds in front of the stages: the row's status so far (null: still to annotate) and why.
STATUS, ERROR = "status", "error"
MISSING_ID_PREFIX = "missing-id:"


def prepare_images(batch: pa.Table, done_ids: np.ndarray | None = None) -> pa.Table:
    """Conform a source batch to the images contract, mark broken rows, drop rows committed before.

    Rows with no image_id get a stable synthetic id (`missing-id:<sha1 of the row's image>`) so they are
    written with status invalid_input instead of vanishing (resume and deduplication key on the id). Missing
    `width`/`height` are filled in by the describe stage from the decoded image. `done_ids` is the sorted
    array of image_ids already committed (see `rundir.committed_ids`).
    """
    table = conform(batch, "images")
    ids = table.column("image_id").to_pylist()
    images = table.column("image").to_pylist()
    uris = table.column("image_uri").to_pylist()
    captions = table.column("caption").to_pylist()
    statuses: list[str | None] = [None] * table.num_rows
    errors: list[str | None] = [None] * table.num_rows
    for row, (image_id, image, uri, caption) in enumerate(zip(ids, images, uris, captions)):
        problems = input_problems(image_id, image, uri, caption)
        if problems:
            statuses[row], errors[row] = Status.INVALID_INPUT.value, "; ".join(problems)
        if not image_id or not image_id.strip():
            ids[row] = MISSING_ID_PREFIX + hashlib.sha1((image or b"") + (uri or "").encode()).hexdigest()
    # set, not append: a source that is itself an annotations table carries old status/error columns
    table = set_column(table, "image_id", pa.array(ids, pa.string()))
    table = set_column(table, STATUS, pa.array(statuses, pa.string()))
    table = set_column(table, ERROR, pa.array(errors, pa.string()))
    if done_ids is not None and len(done_ids):
        table = table.filter(pa.array(~contains_sorted(done_ids, ids)))
    return table
