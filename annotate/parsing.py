"""Turn an LLM's answer into a caption and a clean list of descriptions, or a reason it cannot.

Models answer in many shapes even when asked for JSON: the JSON object itself, JSON inside a ``` fence or
after a sentence of prose, a bare JSON list, or a bulleted / numbered list under a "Caption:" line. The
parser accepts all of those. Then it cleans the items:

- whitespace collapsed, list markers, surrounding quotes and trailing periods stripped;
- duplicates removed case-insensitively (first spelling kept);
- items longer than `max_description_chars` are DROPPED, not truncated: a description is a short noun
  phrase for the text encoder, and an over-long item is the model rambling; a cut-off half-sentence would
  be a wrong label. Captions longer than `max_caption_chars` are cut at a word boundary instead (a long
  caption is still a caption);
- at most `max_descriptions` items are kept, in the model's order.

Empty output, output with no list and no JSON, or a list that is empty after cleaning raise ParseError
with the reason; the describer records it as describe_failed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

CAPTION_KEYS = ("caption", "llm_caption", "improved_caption")
DESCRIPTION_KEYS = ("descriptions", "description", "items", "parts")

_LIST_MARKER = re.compile(r"^\s*(?:[-*•·]|\d{1,2}[.)]|\(\d{1,2}\)|[a-z][.)])\s+", re.IGNORECASE)
_CAPTION_LINE = re.compile(r"^\s*(?:improved\s+)?caption\s*[:\-]\s*(.+)$", re.IGNORECASE)


class ParseError(ValueError):
    """The LLM output holds no usable descriptions; str() says why."""


@dataclass(frozen=True)
class ParsedAnswer:
    caption: str | None
    descriptions: list[str]


def parse_answer(
    text: str | None, max_descriptions: int, max_description_chars: int = 100, max_caption_chars: int = 400
) -> ParsedAnswer:
    if text is None or not text.strip():
        raise ParseError("empty LLM output")
    found = _from_json(text)
    if found is None:
        found = _from_lines(text)
    if found is None:
        raise ParseError("no JSON object and no list of descriptions in the LLM output")
    caption, items = found
    descriptions = clean_descriptions(items, max_descriptions, max_description_chars)
    if not descriptions:
        reason = "the description list is empty" if not items else "no description left after cleaning"
        raise ParseError(f"{reason} (items must be non-empty strings of at most {max_description_chars} chars)")
    return ParsedAnswer(clean_caption(caption, max_caption_chars), descriptions)


def _from_json(text: str) -> tuple[object, list] | None:
    """The first JSON object (or list) in `text` that carries descriptions; prose and fences around it are ignored."""
    decoder = json.JSONDecoder(strict=False)  # constrained decoders may emit raw control chars inside strings
    for match in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, list):
            return None, value
        if isinstance(value, dict):
            items = next((value[k] for k in DESCRIPTION_KEYS if k in value), None)
            if isinstance(items, str):
                items = [items]
            if isinstance(items, list):
                return next((value[k] for k in CAPTION_KEYS if k in value), None), items
    return None


def _from_lines(text: str) -> tuple[str | None, list[str]] | None:
    """A "Caption: ..." line and bulleted/numbered items; None when there are no list items at all."""
    caption, items = None, []
    for line in text.splitlines():
        caption_match = _CAPTION_LINE.match(line)
        if caption_match and caption is None:
            caption = caption_match.group(1)
        elif _LIST_MARKER.match(line):
            items.append(_LIST_MARKER.sub("", line, count=1))
    return (caption, items) if items else None


def _clean_text(value: str) -> str:
    text = " ".join(value.split())
    text = text.strip().strip("\"'`“”‘’").strip()
    return text.rstrip(".;,").strip()


def clean_descriptions(items: list, max_descriptions: int, max_chars: int) -> list[str]:
    seen: set[str] = set()
    cleaned: list[str] = []
    for item in items:
        if not isinstance(item, str):
            continue
        text = _clean_text(_LIST_MARKER.sub("", item, count=1))
        if not text or len(text) > max_chars or text.lower() in seen:
            continue
        seen.add(text.lower())
        cleaned.append(text)
    return cleaned[:max_descriptions]


def clean_caption(caption: object, max_chars: int) -> str | None:
    if not isinstance(caption, str):
        return None
    text = " ".join(caption.split()).strip().strip("\"'`“”").strip()
    if len(text) > max_chars:
        cut = text[:max_chars]
        text = cut[: cut.rfind(" ")] if " " in cut else cut
    return text or None
