"""Annotate rows of the `images` contract into rows of the `annotations` contract, without Ray.

This is the whole annotation step in plain Python for notebooks and small runs: decode each row (bad bytes
become decode_failed rows), describe, ground the described rows, and record one status per row. The Ray
pipeline runs the same steps as separate stages so the LLM and the detector scale independently.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from grainclip.annotate.base import Describer, Grounder
from grainclip.annotate.types import DescribeRequest, Description, Grounding, GroundRequest
from grainclip.images import DEFAULT_MAX_PIXELS, ImageDecodeError, decode_image, load_image_bytes
from grainclip.schema import Status


def input_problem(row: dict[str, Any]) -> str | None:
    """Why a row breaks the images contract (beyond its image bytes), or None."""
    image_id = row.get("image_id")
    if not isinstance(image_id, str) or not image_id.strip():
        return f"image_id must be a non-empty string, got {image_id!r}"
    caption = row.get("caption")
    if caption is not None and not isinstance(caption, str):
        return f"caption must be a string or null, got {type(caption).__name__}"
    return None


def annotate_rows(
    rows: Iterable[dict[str, Any]],
    describer: Describer,
    grounder: Grounder,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    run_id: str | None = None,
) -> list[dict[str, Any]]:
    """One annotations row per input row, same order; every row has a status and, if not ok, an error."""
    out = [{**row, "llm_caption": None, "descriptions": [], "regions": [], "run_id": run_id} for row in rows]
    images = {}
    for index, row in enumerate(out):
        problem = input_problem(row)
        if problem:
            row.update(status=Status.INVALID_INPUT.value, error=problem)
            continue
        try:
            image = decode_image(load_image_bytes(row.get("image"), row.get("image_uri")), max_pixels=max_pixels)
        except ImageDecodeError as exc:
            row.update(status=Status.DECODE_FAILED.value, error=str(exc))
            continue
        row["width"], row["height"] = row.get("width") or image.width, row.get("height") or image.height
        images[index] = image

    described = list(images)
    results = describer.describe(
        [DescribeRequest(out[i]["image_id"], images[i], out[i].get("caption")) for i in described]
    )
    for index, description in zip(described, results, strict=True):
        _apply_description(out[index], description)

    to_ground = [i for i in described if out[i]["status"] == Status.OK.value]
    groundings = grounder.ground(
        [GroundRequest(out[i]["image_id"], images[i], out[i]["descriptions"]) for i in to_ground]
    )
    for index, grounding in zip(to_ground, groundings, strict=True):
        _apply_grounding(out[index], grounding)
    return out


def _apply_description(row: dict[str, Any], description: Description) -> None:
    row.update(
        llm_caption=description.llm_caption,
        descriptions=list(description.descriptions),
        status=description.status,
        error=description.error,
    )


def _apply_grounding(row: dict[str, Any], grounding: Grounding) -> None:
    row.update(regions=[r.to_dict() for r in grounding.regions], status=grounding.status, error=grounding.error)
