"""The values that flow through annotation: requests into describers/grounders and their results.

Plain dataclasses with no model code, so Ray stages, notebooks and tests build and inspect them freely.
Statuses are `grainclip.schema.Status` values (strings, so results pickle and serialise without the enum).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from grainclip.schema import Status

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True)
class Region:
    """One grounded description: `box` is normalised xyxy in [0, 1] of the ORIGINAL image frame."""

    text: str
    box: tuple[float, float, float, float]
    score: float

    def to_dict(self) -> dict[str, Any]:
        """The annotations-schema struct (`regions` list item)."""
        return {"text": self.text, "box": [float(v) for v in self.box], "score": float(self.score)}


@dataclass
class DescribeRequest:
    """An image to describe. `image` is None for text-only describers fed the caption alone."""

    image_id: str
    image: Image.Image | None
    caption: str | None


@dataclass
class Description:
    """A describer's answer for one request; on failure `status` says which and `error` says why."""

    llm_caption: str | None
    descriptions: list[str]
    status: str
    error: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0

    @classmethod
    def failed(cls, error: str, num_prompt_tokens: int = 0, num_output_tokens: int = 0) -> Description:
        return cls(None, [], Status.DESCRIBE_FAILED.value, error, num_prompt_tokens, num_output_tokens)


@dataclass
class GroundRequest:
    """An image and the descriptions to localise in it."""

    image_id: str
    image: Image.Image
    descriptions: list[str] = field(default_factory=list)


@dataclass
class Grounding:
    """A grounder's answer for one request. No box above threshold is status no_regions, not an error."""

    regions: list[Region]
    status: str
    error: str | None = None

    @classmethod
    def from_regions(cls, regions: list[Region]) -> Grounding:
        if regions:
            return cls(regions, Status.OK.value, None)
        return cls([], Status.NO_REGIONS.value, "no box scored above the threshold")

    @classmethod
    def failed(cls, error: str) -> Grounding:
        return cls([], Status.GROUND_FAILED.value, error)
