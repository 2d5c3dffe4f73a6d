"""Versioned prompt templates for the LLM describers.

A template is immutable once released: change the wording under a new name (grain-v2, ...) so annotations
made with different prompts can be told apart. The manifest records the name and a hash of the content, so
even an edited template cannot pass for its old self. Everything goes in one user message: several chat
templates (LLaVA, Gemma, Mistral) reject a system role.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from grainclip.config.base import ConfigError


@dataclass(frozen=True)
class PromptTemplate:
    """`with_image` is used when the model sees the image, `text_only` when it gets the alt-text alone.

    Placeholders: {max_descriptions}, {caption} (the alt-text), and {caption_line}: `caption_line` with the
    alt-text filled in, or nothing when the image has none (so `with_image` works without alt-text).
    """

    name: str
    with_image: str
    text_only: str
    caption_line: str

    @property
    def sha256(self) -> str:
        content = json.dumps([self.with_image, self.text_only, self.caption_line])
        return hashlib.sha256(content.encode()).hexdigest()

    def render(self, caption: str | None, max_descriptions: int, sees_image: bool) -> str:
        caption_line = self.caption_line.format(caption=caption) if caption else ""
        template = self.with_image if sees_image else self.text_only
        return template.format(
            max_descriptions=max_descriptions, caption=caption or "", caption_line=caption_line
        ).strip()


_ANSWER_FORMAT = (
    "Answer with JSON only, no other text, in this form:\n"
    '{{"caption": "<one sentence>", "descriptions": ["<description>", "<description>"]}}'
)

GRAIN_V1 = PromptTemplate(
    name="grain-v1",
    with_image=(
        "Look at the image.{caption_line}\n"
        "1. Write one accurate, detailed caption of the image (one sentence).\n"
        "2. List up to {max_descriptions} short visual descriptions of distinct things one could point at in "
        "the image: object parts, colours, textures, shapes and patterns. Each description is a noun phrase of "
        'at most 8 words that names the part it describes, e.g. "red crest on the head" or "striped tail". '
        "Only describe what is visible.\n" + _ANSWER_FORMAT
    ),
    text_only=(
        'An image has this alt-text: "{caption}". You cannot see the image.\n'
        "1. Write one accurate, detailed caption of what such an image most likely shows (one sentence).\n"
        "2. List up to {max_descriptions} short visual descriptions of distinct things one could point at in "
        "such an image: object parts, colours, textures, shapes and patterns. Each description is a noun phrase "
        'of at most 8 words that names the part it describes, e.g. "red crest on the head" or "striped tail".\n'
        + _ANSWER_FORMAT
    ),
    caption_line=' Its alt-text is: "{caption}".',
)

PROMPTS: dict[str, PromptTemplate] = {GRAIN_V1.name: GRAIN_V1}


def get_prompt(name: str) -> PromptTemplate:
    try:
        return PROMPTS[name]
    except KeyError:
        raise ConfigError(f"unknown prompt template {name!r}; available: {', '.join(sorted(PROMPTS))}") from None


def description_json_schema(max_descriptions: int, max_description_chars: int, max_caption_chars: int) -> dict:
    """The answer's JSON schema, bounded so a constrained model (even a random one) must stop."""
    return {
        "type": "object",
        "properties": {
            "caption": {"type": "string", "maxLength": max_caption_chars},
            "descriptions": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": max_description_chars},
                "minItems": 1,
                "maxItems": max_descriptions,
            },
        },
        "required": ["caption", "descriptions"],
        "additionalProperties": False,
    }
