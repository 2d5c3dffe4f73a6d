"""`partsworld` describer: PartsWorld's true part descriptions, with seeded description noise.

Stands in for an MLLM where no weights exist; every manifest marks it `simulated: true`. Noise knobs mimic an
LLM's typical mistakes: `drop_prob` omits a true description, `substitute_prob` replaces one with a
description of another creature that shares a word with it (right part, wrong attribute, or the reverse).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field

from grainclip.annotate.base import Describer
from grainclip.annotate.partsworld_truth import TruthOptions, TruthRecord, TruthReplay, words
from grainclip.annotate.types import DescribeRequest, Description
from grainclip.schema import Status


class PartsWorldDescriberOptions(TruthOptions):
    drop_prob: float = Field(0.0, ge=0.0, le=1.0)
    substitute_prob: float = Field(0.0, ge=0.0, le=1.0)


class PartsWorldDescriber(TruthReplay, Describer):
    options_model = PartsWorldDescriberOptions

    def describe(self, requests: Sequence[DescribeRequest]) -> list[Description]:
        return self.replay(requests, "describe", self._describe_one, Description.failed)

    def _describe_one(self, request: DescribeRequest, record: TruthRecord, rng: np.random.Generator) -> Description:
        true_set = {d.lower() for d in record.descriptions}
        descriptions: list[str] = []
        for text in record.descriptions:
            drop, substitute = rng.random(), rng.random()
            if drop < self.options.drop_prob:
                continue
            if substitute < self.options.substitute_prob:
                text = self._substitute(text, true_set, rng) or text
            if text.lower() not in {d.lower() for d in descriptions}:
                descriptions.append(text)
        descriptions = descriptions[: self.config.max_descriptions]
        if not descriptions:
            return Description.failed("simulated describer kept no description (all dropped by drop_prob)")
        return Description(record.llm_caption, descriptions, Status.OK.value, None)

    def _substitute(self, text: str, true_set: set[str], rng) -> str | None:
        """A wrong description sharing a word with `text`; None when the pool has no such description."""
        shared = [d for d in self.truth.description_pool if d.lower() not in true_set and words(d) & words(text)]
        return shared[rng.integers(len(shared))] if shared else None
