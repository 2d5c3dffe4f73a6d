"""Base for grounders backed by a torch detector: device choice, batching, and failure isolation.

A subclass implements `_detect` for a batch of requests that each have at least one description. Requests
with no descriptions get no_regions; a batch that raises is split until the failing image is alone, so a
single bad image becomes a ground_failed row, while out-of-memory propagates (the worker is unhealthy).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import replace
from typing import ClassVar

from grainclip.annotate.base import Grounder, chunks, map_isolating_failures
from grainclip.annotate.image_prep import fit_within
from grainclip.annotate.types import Grounding, GroundRequest
from grainclip.config.annotate import GrounderConfig
from grainclip.config.base import ConfigError
from grainclip.devices import resolve_device
from grainclip.schema import Status


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

    @abstractmethod
    def _detect(self, requests: Sequence[GroundRequest]) -> list[Grounding]:
        """Ground a batch of requests that all have descriptions; may raise for the whole batch."""

    def ground(self, requests: Sequence[GroundRequest]) -> list[Grounding]:
        results: list[Grounding | None] = [None] * len(requests)
        todo: list[int] = []
        for index, request in enumerate(requests):
            if any(d.strip() for d in request.descriptions):
                todo.append(index)
            else:
                results[index] = Grounding([], Status.NO_REGIONS.value, "no descriptions to ground")
        for batch in chunks(todo, self.config.batch_size):
            groundings = map_isolating_failures(
                [self._fit(requests[i]) for i in batch],
                self._detect,
                lambda _request, exc: Grounding.failed(f"{type(exc).__name__}: {exc}"),
                fatal=self.fatal_errors,
            )
            for index, grounding in zip(batch, groundings, strict=True):
                results[index] = grounding
        return results  # type: ignore[return-value]

    def _fit(self, request: GroundRequest) -> GroundRequest:
        if request.image is None:
            return request  # fails in _detect, as its own ground_failed row
        return replace(request, image=fit_within(request.image, self.config.max_image_side))

    def info(self):
        return {
            **super().info(),
            "model": self.model_id,
            "device": str(self.device),
            "max_image_side": self.config.max_image_side,
        }

    def close(self) -> None:
        self.__dict__.pop("model", None)
