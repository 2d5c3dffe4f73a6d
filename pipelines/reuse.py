"""Stage reuse: ground an earlier run's descriptions again, without loading any LLM.

Swapping the grounder (or its threshold) must not re-run the describer, by far the expensive stage. A pipeline
whose source is `{kind: annotations_run, path: RUN}` reads RUN's committed rows (the images contract carried
through, plus llm_caption and descriptions) and its plan has no describe stage:

    read RUN/annotations -> prepare_images -> keep_descriptions (task) -> GroundStage -> commit_shard

- A row RUN described (its descriptions are non-empty) goes to the grounder as `ok`; any other row keeps RUN's
  status and error (describe_failed, decode_failed, ...), so every row of RUN is accounted for again.
- Provenance: the new run's manifest (`descriptions_from`) and every shard's stats record which run the
  descriptions came from, and its describer info() (model, prompt hash) becomes the new run's `describer`.
  A resume refuses when RUN has since been replaced by another run (the rows would mix two describers).
- Exactly-once resume is the ordinary one: committed image_ids are filtered out in prepare_images.

A describer change re-runs both stages: point a normal run at RUN's own source instead. The kind lives here,
not in grainclip.sources, because it reads the run directory the pipelines own; it is registered in the
`grainclip.sources` entry-point group like any other kind.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, ClassVar, Literal

import pyarrow as pa
from pydantic import Field

from grainclip.config.base import ConfigError
from grainclip.pipelines.manifest import DescriptionsFrom, RunManifest
from grainclip.pipelines.rundir import RunDir, existing_run
from grainclip.pipelines.stages import DESCRIBER_INFO, DESCRIPTIONS_FROM, STATS_PREFIX, constant, set_column
from grainclip.schema import Status
from grainclip.sources import parse_source
from grainclip.sources.base import Source
from grainclip.sources.parquet import read_parquet_files

if TYPE_CHECKING:
    import ray.data

log = logging.getLogger(__name__)

#: The earlier run's outcome of each row, kept under internal names (prepare_images resets status/error).
EARLIER_STATUS, EARLIER_ERROR = STATS_PREFIX + "earlier_status", STATS_PREFIX + "earlier_error"


class AnnotationsRunSource(Source):
    """The committed rows of an earlier `grainclip pipeline run` (its `output`), to be grounded again."""

    kind: Literal["annotations_run"]
    path: str = Field(description="An earlier run directory (local or s3://) whose descriptions are grounded again.")
    carries_descriptions: ClassVar[bool] = True

    def earlier(self) -> tuple[RunDir, RunManifest]:
        """The earlier run; ConfigError (one line) when `path` is not a run directory with committed rows."""
        return existing_run(self.path)

    def check(self) -> None:
        super().check()
        _, manifest = self.earlier()
        if manifest.status != "complete":
            log.warning(
                "run %s at %s is %s: only its %d committed row(s) are reused",
                manifest.run_id,
                self.path,
                manifest.status,
                manifest.rows,
            )

    def annotator_truth(self) -> str | None:
        """The truth the earlier run's source offered (a PartsWorld run's grounder reads the same truth)."""
        try:
            _, manifest = self.earlier()
            return parse_source(manifest.resume_config["source"]).annotator_truth()
        except (ConfigError, KeyError, ValueError):
            return None  # not readable yet: check() reports it before anything runs

    def provenance(self) -> DescriptionsFrom:
        """What the new run records about where its descriptions came from."""
        _, manifest = self.earlier()
        origin = manifest.descriptions_from.origin_run_id if manifest.descriptions_from else manifest.run_id
        return DescriptionsFrom(
            run_id=manifest.run_id, path=self.path, config_hash=manifest.config_hash, origin_run_id=origin
        )

    def describer_info(self) -> dict:
        """The earlier run's describer info() (model, prompt hash, environment): it produced these descriptions."""
        _, manifest = self.earlier()
        return manifest.annotators.get("describer") or {}

    def read(self) -> ray.data.Dataset:
        self.check()
        run, _ = self.earlier()
        dataset = read_parquet_files([str(run.annotations)])
        return dataset.map_batches(_keep_earlier_outcome, batch_format="pyarrow")


def _keep_earlier_outcome(batch: pa.Table) -> pa.Table:
    """RUN's status and error under internal names; prepare_images then starts every row afresh."""
    for old, new in (("status", EARLIER_STATUS), ("error", EARLIER_ERROR)):
        batch = set_column(batch, new, batch.column(old).cast(pa.string()))
    return batch


def check_unchanged(source: AnnotationsRunSource, manifest: RunManifest) -> None:
    """Refuse to resume when the descriptions' run was replaced since this run started (rows would mix)."""
    now, then = source.provenance(), manifest.descriptions_from
    if then is not None and now.run_id != then.run_id:
        raise ConfigError(
            f"{source.path} now holds run {now.run_id}, but run {manifest.run_id} kept the descriptions of run "
            f"{then.run_id}; resuming would mix two describers -- use a new output directory or --force-new-run"
        )


def keep_descriptions(batch: pa.Table, describer_info: str, descriptions_from: str) -> pa.Table:
    """Rows the earlier run described go to the grounder as `ok`; the others keep the earlier outcome.

    Rows prepare_images marked invalid_input stay so. Each row carries the earlier describer's info and the
    provenance, which the sink writes into the shard's stats.
    """
    statuses = batch.column("status").to_pylist()
    errors = batch.column("error").to_pylist()
    descriptions = batch.column("descriptions").to_pylist()
    earlier_statuses = batch.column(EARLIER_STATUS).to_pylist()
    earlier_errors = batch.column(EARLIER_ERROR).to_pylist()
    for row, status in enumerate(statuses):
        if status is not None:
            continue
        if descriptions[row]:
            statuses[row], errors[row] = Status.OK.value, None
        else:
            statuses[row] = earlier_statuses[row] or Status.DESCRIBE_FAILED.value
            errors[row] = earlier_errors[row] or "the reused run has no descriptions for this row"
    n = batch.num_rows
    batch = set_column(batch, "status", pa.array(statuses, pa.string()))
    batch = set_column(batch, "error", pa.array(errors, pa.string()))
    batch = set_column(batch, DESCRIBER_INFO, constant(describer_info, n))
    return set_column(batch, DESCRIPTIONS_FROM, constant(descriptions_from, n))


def reuse_kwargs(source: AnnotationsRunSource) -> dict[str, str]:
    """keep_descriptions' fn_kwargs, read once on the driver."""
    return {
        "describer_info": json.dumps(source.describer_info(), sort_keys=True, default=str),
        "descriptions_from": source.provenance().model_dump_json(),
    }
