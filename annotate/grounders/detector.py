"""Base for grounders backed by a torch detector: device choice, batching, overlap, and failure isolation.

A subclass splits its work on a batch of requests (each with at least one description) in two: `_prepare`, the
CPU side (processor calls, tokenising), and `_run`, the forward pass and post-processing. While the model runs
one batch, one prefetch thread resizes and prepares the next ones (`prefetch_batches` ahead), so the CPU work
overlaps the forward pass instead of adding to it. The overlap changes when work happens, never what is
computed: the rows are the same with `prefetch_batches: 0`.

Requests with no descriptions get no_regions; a batch that raises (in either half) is rerun serially and split
until the failing image is alone, so a single bad image becomes a ground_failed row, while out-of-memory
propagates (the worker is unhealthy).
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, ClassVar, TypeVar

from grainclip.annotate.base import Grounder, chunks, map_isolating_failures
from grainclip.annotate.image_prep import fit_within
from grainclip.annotate.types import Grounding, GroundRequest
from grainclip.config.annotate import GrounderConfig
from grainclip.config.base import ConfigError
from grainclip.devices import resolve_device
from grainclip.schema import Status

T = TypeVar("T")
R = TypeVar("R")


def prefetched(call: Callable[[T], R], items: Iterable[T], ahead: int, executor: ThreadPoolExecutor) -> Iterator[R]:
    """`call(item)` for each item, in order, with up to `ahead` later items already running on `executor`.

    The consumer works on result k while items k+1 .. k+ahead are computed; `ahead` 0 calls inline. An exception
    of `call` is raised when its result is reached; leaving early cancels what has not started.
    """
    if not ahead:
        yield from map(call, items)
        return
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(executor.submit(call, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


class DetectorGrounder(Grounder):
    #: the checkpoint used when `config.model` is not set (None: the config must name one)
    default_model: ClassVar[str | None] = None

    def __init__(self, config: GrounderConfig) -> None:
        super().__init__(config)
        import torch

        self.device = resolve_device(config.device)
        model_id = config.model or self.default_model
        if model_id is None:
            raise ConfigError(f"grounder {config.name!r} needs `model` (a checkpoint id or a local folder)")
        self.model_id = model_id
        self.fatal_errors: tuple[type[BaseException], ...] = (MemoryError, torch.OutOfMemoryError)
        self._prefetcher: ThreadPoolExecutor | None = None
        # One `_prepare` at a time: a fast tokenizer must not be reconfigured (padding, truncation) while another
        # thread encodes with it, and a failed batch's serial rerun may overlap the next batch's prefetch.
        self._preparing = threading.Lock()

    @abstractmethod
    def _prepare(self, requests: Sequence[GroundRequest]) -> Any:
        """The CPU side of a batch: the model inputs `_run` takes. Runs on the prefetch thread; may raise."""

    @abstractmethod
    def _run(self, requests: Sequence[GroundRequest], prepared: Any) -> list[Grounding]:
        """Forward pass and post-processing of a prepared batch, one Grounding per request; may raise."""

    def _prepare_locked(self, requests: Sequence[GroundRequest]) -> Any:
        with self._preparing:
            return self._prepare(requests)

    def _detect(self, requests: Sequence[GroundRequest]) -> list[Grounding]:
        """Both halves, serially: how a failed batch is rerun and split."""
        return self._run(requests, self._prepare_locked(requests))

    def _fit_and_prepare(self, requests: Sequence[GroundRequest]) -> tuple[list[GroundRequest], Any, bool]:
        """(fitted requests, prepared inputs, whether preparing succeeded): a failure is handled on the caller's
        side, by the serial rerun; out-of-memory propagates."""
        fitted = [self._fit(request) for request in requests]
        try:
            return fitted, self._prepare_locked(fitted), True
        except self.fatal_errors:
            raise
        except Exception:  # noqa: BLE001 -- the rerun in `ground` isolates and reports the failing rows
            return fitted, None, False

    def ground(self, requests: Sequence[GroundRequest]) -> list[Grounding]:
        results: list[Grounding | None] = [None] * len(requests)
        todo: list[int] = []
        for index, request in enumerate(requests):
            if any(d.strip() for d in request.descriptions):
                todo.append(index)
            else:
                results[index] = Grounding([], Status.NO_REGIONS.value, "no descriptions to ground")
        batches = list(chunks(todo, self.config.batch_size))
        ahead = self.config.prefetch_batches if len(batches) > 1 else 0  # one batch: nothing to overlap with
        if ahead and self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(1, thread_name_prefix=f"{self.config.name}-prefetch")
        work = ([requests[i] for i in batch] for batch in batches)
        for batch, (fitted, prepared, ready) in zip(
            batches, prefetched(self._fit_and_prepare, work, ahead, self._prefetcher), strict=True
        ):
            try:
                groundings = self._run(fitted, prepared) if ready else None
            except self.fatal_errors:
                raise
            except Exception:  # noqa: BLE001 -- rerun serially below, split until the failing rows are alone
                groundings = None
            if groundings is None:
                groundings = map_isolating_failures(
                    fitted,
                    self._detect,
                    lambda _request, exc: Grounding.failed(f"{type(exc).__name__}: {exc}"),
                    fatal=self.fatal_errors,
                )
            for index, grounding in zip(batch, groundings, strict=True):
                results[index] = grounding
        return results  # type: ignore[return-value]

    def _fit(self, request: GroundRequest) -> GroundRequest:
        if request.image is None:
            return request  # fails in _prepare, as its own ground_failed row
        return replace(request, image=fit_within(request.image, self.config.max_image_side))

    def info(self):
        return {
            **super().info(),
            "model": self.model_id,
            "device": str(self.device),
            "max_image_side": self.config.max_image_side,
        }

    def close(self) -> None:
        if self._prefetcher is not None:
            self._prefetcher.shutdown(wait=True, cancel_futures=True)
            self._prefetcher = None
        self.__dict__.pop("model", None)
