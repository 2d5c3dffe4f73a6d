"""The two annotator interfaces every backend implements and every caller (Ray stage, notebook) uses.

An annotator is stateful: it loads its model once in `__init__` and then serves many batches. `describe` /
`ground` take a batch and return a result per request, same length and order. A problem with one row (an
unparseable answer, a detector error on one image) becomes that row's status and error; only a broken
backend (dead engine, out of memory) raises, so the caller's retry machinery (Ray restarting the actor)
can take over.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

from grainclip.annotate.types import DescribeRequest, Description, Grounding, GroundRequest
from grainclip.config.annotate import DescriberConfig, GrounderConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def map_isolating_failures(
    items: Sequence[T],
    run_batch: Callable[[Sequence[T]], list[R]],
    on_failure: Callable[[T, Exception], R],
    fatal: tuple[type[BaseException], ...] = (),
) -> list[R]:
    """Run a whole batch; if it raises, split it in halves until the failing rows are alone.

    One bad row (a prompt too long for the engine, an image the detector rejects) then costs about
    2·log2(batch) extra calls instead of taking its neighbours down. Exceptions in `fatal` (a dead engine,
    out of memory) propagate: the backend itself is broken.
    """
    try:
        return run_batch(items)
    except fatal:
        raise
    except Exception as error:
        if len(items) == 1:
            return [on_failure(items[0], error)]
        log.warning(
            "batch of %d failed (%s: %s); splitting it to isolate the bad rows", len(items), type(error).__name__, error
        )
    middle = len(items) // 2
    return map_isolating_failures(items[:middle], run_batch, on_failure, fatal) + map_isolating_failures(
        items[middle:], run_batch, on_failure, fatal
    )


class Annotator(ABC):
    """What both kinds share: built from a config, described in the run manifest, closed when the stage ends."""

    #: "describer" or "grounder": the manifest's kind, and the config section the annotator's options come from.
    kind: ClassVar[str]
    #: True for annotators that read ground truth instead of running a model (labelled in every manifest).
    simulated: ClassVar[bool] = False
    #: Ray runtime_env the backend needs (None: the main environment); callers running it in Ray apply it.
    runtime_env: ClassVar[dict[str, Any] | None] = None

    def __init__(self, config: DescriberConfig | GrounderConfig) -> None:
        self.config = config

    @classmethod
    def problems(cls, config: DescriberConfig | GrounderConfig, workers_on_cpu: bool) -> list[str]:
        """What is certainly wrong with `config` for this backend, known without loading the model.

        Preflight calls it before Ray starts, so e.g. an engine argument above the model's limit is one line
        instead of an actor crash minutes later. `workers_on_cpu`: the stage's actors get no GPU.
        """
        return []

    def info(self) -> dict[str, Any]:
        """What the run manifest records about this annotator (never secrets)."""
        return {
            "kind": self.kind,
            "name": self.config.name,
            "class": f"{type(self).__module__}.{type(self).__qualname__}",
            "model": self.config.model,
            "simulated": self.simulated,
        }

    def close(self) -> None:
        """Release the model (engines, threads, servers). Idempotent."""


class Describer(Annotator):
    """Turns images (and/or their alt-text) into an improved caption and short visual descriptions."""

    kind = "describer"
    config: DescriberConfig
    #: Batches one pipeline actor hands to `describe_async` at once unless the stage config sets
    #: `batches_in_flight`; 1: the backend serves one batch at a time through `describe`.
    default_batches_in_flight: ClassVar[int] = 1

    @abstractmethod
    def describe(self, requests: Sequence[DescribeRequest]) -> list[Description]:
        """One Description per request, same order; per-row problems are statuses, never exceptions."""

    async def describe_async(self, requests: Sequence[DescribeRequest]) -> list[Description]:
        """`describe` for a caller that keeps several batches in flight; only backends that can serve them
        concurrently implement it. Per-row problems are statuses; raising means the backend is broken."""
        raise NotImplementedError(f"{type(self).__name__} serves one batch at a time: it has no describe_async")

    @classmethod
    def serves_batches_concurrently(cls) -> bool:
        return cls.describe_async is not Describer.describe_async


class Grounder(Annotator):
    """Localises descriptions in images as normalised boxes of the original image frame."""

    kind = "grounder"
    config: GrounderConfig

    @abstractmethod
    def ground(self, requests: Sequence[GroundRequest]) -> list[Grounding]:
        """One Grounding per request, same order; per-row problems are statuses, never exceptions."""

    def info(self) -> dict[str, Any]:
        return {
            **super().info(),
            "box_threshold": self.config.box_threshold,
            "text_threshold": self.config.text_threshold,
            "nms_iou": self.config.nms_iou,
            "max_regions": self.config.max_regions,
        }
