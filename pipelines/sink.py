"""The last stage: commit each batch as one annotations shard and hand the driver a one-row summary.

Why a `map_batches` commit stage and not `write_parquet` or a `Datasink`: `write_parquet` writes in place (a
kill leaves half-written files that a rerun would read) and neither gives the driver anything while the run
goes on. Here each task validates and writes its shard with `schema.write_shard` (temp file + rename, or one
PUT on object storage, so the file is whole or absent), under a name derived from its image_ids
(`RunDir.shard_path`: a retried task rewrites the same file), and returns a summary row -- statuses, an example
error per failed status, busy seconds and tokens per stage, the annotators' info(). The driver streams those
summaries (`Dataset.iter_batches`): that is the run's progress and the max-error-fraction check, with no extra
machinery. The same stats are written next to the shard (`RunDir.write_shard_stats`) so a killed attempt's
shards still count in the manifest.
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc

from grainclip import storage
from grainclip.pipelines.rundir import RunDir
from grainclip.pipelines.stages import (
    DESCRIBE_SECONDS,
    DESCRIBER_INFO,
    DESCRIPTIONS_FROM,
    GROUND_SECONDS,
    GROUNDER_INFO,
    OUTPUT_TOKENS,
    PROMPT_TOKENS,
    STATS_PREFIX,
)
from grainclip.schema import Status, write_shard

#: Statuses that count against `max_error_fraction` (no_regions is a valid outcome, not an error).
FAILED_STATUSES = frozenset(
    s.value for s in (Status.DESCRIBE_FAILED, Status.GROUND_FAILED, Status.DECODE_FAILED, Status.INVALID_INPUT)
)


def commit_shard(batch: pa.Table, output: str, run_id: str, compression: str) -> pa.Table:
    """Write `batch` as one shard of run `run_id` under `output`, then its stats; return the stats as one row."""
    run = RunDir(output)
    path = run.shard_path(batch.column("image_id").to_pylist())
    internal = [name for name in batch.column_names if name.startswith(STATS_PREFIX)]
    table = batch.drop_columns(internal)
    run_ids = pa.array([run_id] * table.num_rows, pa.string())
    index = table.schema.get_field_index("run_id")
    table = table.set_column(index, "run_id", run_ids) if index >= 0 else table.append_column("run_id", run_ids)
    write_shard(table, path, "annotations", compression=compression)

    statuses = table.column("status").to_pylist()
    examples: dict[str, str] = {}
    ids = table.column("image_id").to_pylist()
    for image_id, status, error in zip(ids, statuses, table.column("error").to_pylist()):
        if status in FAILED_STATUSES and status not in examples:
            examples[status] = f"{image_id}: {error or 'no message'}"  # the run's message names the input
    stats = {
        "file": storage.name(path),
        "rows": table.num_rows,
        "block_bytes": batch.nbytes,  # in memory, as it went through the stages (runner.check_read_ahead)
        "committed_at": time.time(),
        "node": socket.gethostname(),
        "statuses": dict(Counter(statuses)),
        "error_examples": examples,
        "describe_seconds": _sum(batch, DESCRIBE_SECONDS),
        "ground_seconds": _sum(batch, GROUND_SECONDS),
        "prompt_tokens": int(_sum(batch, PROMPT_TOKENS)),
        "output_tokens": int(_sum(batch, OUTPUT_TOKENS)),
        "describer": _info(batch, DESCRIBER_INFO),
        "grounder": _info(batch, GROUNDER_INFO),
        "descriptions_from": _info(batch, DESCRIPTIONS_FROM),  # an earlier run's, when the describer was reused
    }
    run.write_shard_stats(storage.name(path), stats)
    return pa.table({"stats": [json.dumps(stats)]})


def _sum(batch: pa.Table, name: str) -> float:
    if name not in batch.column_names:
        return 0.0
    return float(pc.sum(batch.column(name)).as_py() or 0.0)


def _info(batch: pa.Table, name: str) -> dict | None:
    if name not in batch.column_names or batch.num_rows == 0:
        return None
    return json.loads(batch.column(name)[0].as_py())
