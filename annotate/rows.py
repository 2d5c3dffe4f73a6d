"""Annotate rows of the `images` contract into rows of the `annotations` contract, without Ray.

This is the whole annotation step in plain Python for notebooks and small runs: decode each row (bad bytes
become decode_failed rows), describe, ground the described rows, and record one status per row. The Ray
pipeline runs the same steps as separate stages so the LLM and the detector scale independently; both call
the per-row rules here (`input_problems`, `grounding_outcome`), so a row ends with the same status either way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from grainclip.annotate.base import Describer, Grounder
from grainclip.annotate.types import DescribeRequest, Description, Grounding, GroundRequest
from grainclip.images import DEFAULT_MAX_PIXELS, ImageDecodeError, load_image
from grainclip.schema import Status, region_problem


def input_problems(image_id: Any, image: bytes | None, image_uri: str | None, caption: Any) -> list[str]:
    """Why a row breaks the images contract before its image is decoded (status invalid_input); [] if it does not.

    Empty bytes are not a missing image: they are an image that fails to decode (decode_failed).
    """
    problems = []
    if image_id is None or (isinstance(image_id, str) and not image_id.strip()):
        problems.append("row has no image_id")
    elif not isinstance(image_id, str):
        problems.append(f"image_id must be a string, got {type(image_id).__name__}")
    if image is None and not image_uri:
        problems.append("row has neither image bytes nor image_uri")
    if caption is not None and not isinstance(caption, str):
        problems.append(f"caption must be a string or null, got {type(caption).__name__}")
    return problems


def grounding_outcome(grounding: Grounding) -> tuple[list[dict[str, Any]], str, str | None]:
    """(regions, status, error) of a grounded row; a region breaking the contract fails the row (ground_failed)."""
    found = [region.to_dict() for region in grounding.regions]
    problems = [p for p in map(region_problem, found) if p]
    if problems:
        return [], Status.GROUND_FAILED.value, f"grounder returned an invalid region: {problems[0]}"
    return found, grounding.status, grounding.error


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
        problems = input_problems(row.get("image_id"), row.get("image"), row.get("image_uri"), row.get("caption"))
        if problems:
            row.update(status=Status.INVALID_INPUT.value, error="; ".join(problems))
            continue
        try:
            image = load_image(row.get("image"), row.get("image_uri"), max_pixels)
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
    regions, status, error = grounding_outcome(grounding)
    row.update(regions=regions, status=status, error=error)
