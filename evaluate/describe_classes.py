"""Descriptors for class names nobody has described yet, written by any grainclip describer.

Each class name becomes a text-only describe request whose alt-text is "a photo of a/an {class}", so the
describer's own versioned prompt (e.g. grain-v1's text-only variant: "list short visual descriptions of
parts, colours, textures...") produces the descriptors, exactly as it would for an image with that alt-text.
The result is the Menon & Vondrick JSON format the evaluator reads: {class name: [descriptor, ...]}.
Multimodal describers answer from the alt-text here, as no image is sent.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from grainclip.evaluate.class_text import class_prompt

if TYPE_CHECKING:
    from grainclip.annotate.base import Describer

DEFAULT_CAPTION = "a photo of a {}"


class DescribeClassesError(RuntimeError):
    """The describer gave no usable descriptors for some classes; the message names them and says why."""


def describe_classes(
    classnames: Sequence[str], describer: Describer, caption_template: str = DEFAULT_CAPTION
) -> dict[str, list[str]]:
    """{class: descriptors} in `classnames` order; raises DescribeClassesError if any class got none."""
    from grainclip.annotate.types import DescribeRequest
    from grainclip.schema import Status

    requests = [
        DescribeRequest(image_id=f"class-{i}", image=None, caption=class_prompt(caption_template, name))
        for i, name in enumerate(classnames)
    ]
    answers = describer.describe(requests)
    failed = {
        name: answer.error
        for name, answer in zip(classnames, answers, strict=True)
        if answer.status != Status.OK.value or not answer.descriptions
    }
    if failed:
        shown = "; ".join(f"{name!r}: {error}" for name, error in list(failed.items())[:5])
        raise DescribeClassesError(f"{len(failed)} of {len(classnames)} classes got no descriptors ({shown})")
    return {name: list(answer.descriptions) for name, answer in zip(classnames, answers, strict=True)}


def write_descriptors(descriptors: dict[str, list[str]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(descriptors, indent=2, ensure_ascii=False) + "\n")
    return path
