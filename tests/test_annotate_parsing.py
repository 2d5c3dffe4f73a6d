"""LLM answer parsing and prompt templates: every answer shape a model produces, and every way it goes wrong."""

from __future__ import annotations

import json

import pytest

from grainclip.annotate.parsing import ParseError, parse_answer
from grainclip.annotate.prompts import PROMPTS, description_json_schema, get_prompt
from grainclip.config.base import ConfigError


def parse(text, n=5, item_chars=40, caption_chars=60):
    return parse_answer(text, max_descriptions=n, max_description_chars=item_chars, max_caption_chars=caption_chars)


def test_plain_json():
    answer = parse('{"caption": "A bird on a branch.", "descriptions": ["red crest", "blue wings"]}')
    assert answer.caption == "A bird on a branch."
    assert answer.descriptions == ["red crest", "blue wings"]


def test_json_in_code_fence_with_stray_prose():
    text = (
        'Sure! Here is the JSON:\n```json\n{"caption": "a cat", "descriptions": ["striped tail"]}\n```\nHope it helps.'
    )
    answer = parse(text)
    assert (answer.caption, answer.descriptions) == ("a cat", ["striped tail"])


def test_json_skips_unrelated_objects_and_accepts_control_characters():
    text = 'meta {"note": 1} then {"caption": "x\ty", "descriptions": ["a\tb"]}'
    answer = parse(text)
    assert answer.caption == "x y"  # whitespace collapsed, raw tab accepted (strict=False)
    assert answer.descriptions == ["a b"]


def test_bare_json_list_and_alternate_keys():
    assert parse('["red crest", "blue wings"]').descriptions == ["red crest", "blue wings"]
    answer = parse('{"improved_caption": "c", "items": "one item"}')
    assert (answer.caption, answer.descriptions) == ("c", ["one item"])


def test_bullets_numbering_and_caption_line():
    text = """Caption: A small bird perched on a wire.
Descriptions:
- red crest on the head
* Blue wings.
1. striped tail
2) "yellow beak"
• round black eye
"""
    answer = parse(text, n=10)
    assert answer.caption == "A small bird perched on a wire."
    assert answer.descriptions == [
        "red crest on the head",
        "Blue wings",
        "striped tail",
        "yellow beak",
        "round black eye",
    ]


def test_duplicates_are_removed_case_insensitively_keeping_the_first_spelling():
    answer = parse('{"caption": "c", "descriptions": ["Red crest", "red crest", "RED CREST.", "tail"]}')
    assert answer.descriptions == ["Red crest", "tail"]


def test_over_long_items_are_dropped_and_long_captions_cut_at_a_word():
    long_item = "a very long rambling description " * 3
    caption = "word " * 30
    answer = parse(json.dumps({"caption": caption, "descriptions": [long_item, "short one"]}))
    assert answer.descriptions == ["short one"]
    assert len(answer.caption) <= 60 and not answer.caption.endswith(" ") and set(answer.caption.split()) == {"word"}


def test_at_most_n_descriptions_in_model_order():
    answer = parse(json.dumps({"caption": "c", "descriptions": [f"part {i}" for i in range(9)]}), n=3)
    assert answer.descriptions == ["part 0", "part 1", "part 2"]


def test_non_string_items_are_ignored_and_missing_caption_is_none():
    answer = parse('{"descriptions": [1, null, {"x": 2}, "wing"]}')
    assert answer.caption is None and answer.descriptions == ["wing"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   \n ", "empty"),
        (None, "empty"),
        ("asdkj qwe zzz lorem", "no JSON object and no list"),
        ('{"caption": "c", "descriptions": []}', "empty"),
        ('{"caption": "c", "descriptions": ["   ", "..."]}', "no description left"),
        ('{"caption": "c", "descriptions": ["' + "x" * 80 + '"]}', "no description left"),
        ('{"caption": "only a caption"}', "no JSON object and no list"),
        ('{"caption": "c", "descriptions": ["a", "b"', "no JSON object and no list"),
    ],
)
def test_unusable_output_raises_with_a_reason(text, reason):
    with pytest.raises(ParseError, match=reason):
        parse(text)


def test_prompt_renders_with_and_without_image_and_caption():
    prompt = get_prompt("grain-v1")
    with_caption = prompt.render("a {weird} caption", 4, sees_image=True)
    assert 'alt-text is: "a {weird} caption"' in with_caption and "up to 4" in with_caption
    assert "alt-text" not in prompt.render(None, 4, sees_image=True)
    text_only = prompt.render("a bird", 3, sees_image=False)
    assert '"a bird"' in text_only and "cannot see the image" in text_only


def test_prompt_hash_tracks_content_and_unknown_names_list_the_known_ones():
    hashes = {p.sha256 for p in PROMPTS.values()}
    assert len(hashes) == len(PROMPTS) and all(len(h) == 64 for h in hashes)
    with pytest.raises(ConfigError, match="grain-v1"):
        get_prompt("nope")


def test_json_schema_is_bounded():
    schema = description_json_schema(5, 80, 300)
    items = schema["properties"]["descriptions"]
    assert items["maxItems"] == 5 and items["items"]["maxLength"] == 80
    assert schema["properties"]["caption"]["maxLength"] == 300
