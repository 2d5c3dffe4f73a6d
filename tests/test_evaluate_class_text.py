"""Class text: Menon & Vondrick's descriptor sentence rule on every branch, templates, per-class averaging
and the text-embedding cache, with a real tiny open_clip model."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from grainclip.config.base import ConfigError
from grainclip.evaluate import class_text
from grainclip.evaluate.class_text import (
    DEFAULT_TEMPLATES,
    TextEmbeddingCache,
    class_embeddings,
    class_prompts,
    descriptor_prompts,
    descriptor_sentence,
    load_templates,
)
from grainclip.model_api import LoadedModel

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.mark.parametrize(
    ("descriptor", "sentence"),
    [
        ("a long beak", "which is a long beak"),  # 'a'
        ("an orange crest", "which is an orange crest"),  # 'an'
        ("antennae on its head", "which is antennae on its head"),  # character prefix 'a', as in their code
        ("has four legs", "which has four legs"),
        ("often seen near water", "which often seen near water"),
        ("typically brown", "which typically brown"),
        ("may have spots", "which may have spots"),
        ("can fly", "which can fly"),
        ("used for cutting", "which is used for cutting"),
        ("red crest", "which has red crest"),  # everything else
        ("A long beak", "which has A long beak"),  # the test is case-sensitive
    ],
)
def test_descriptor_sentence_rule(descriptor, sentence):
    assert descriptor_sentence(descriptor) == sentence


def test_descriptor_prompts_join_template_and_sentence():
    prompts = descriptor_prompts("florp", ["red crest", "a tail"], ["a photo of a {}.", "art of {}"])
    assert prompts == [
        "a photo of a florp, which has red crest",
        "a photo of a florp, which is a tail",
        "art of florp, which has red crest",
        "art of florp, which is a tail",
    ]


@pytest.mark.parametrize(
    ("classname", "prompt"),
    [
        ("overskirt", "a photo of an overskirt."),  # vowel letter
        ("cardinal", "a photo of a cardinal."),  # consonant letter
        ("Egyptian cat", "a photo of an Egyptian cat."),  # the rule reads the letter, not its case
        ("unicorn", "a photo of a unicorn."),  # documented exceptions: vowel letter, consonant sound
        ("one-piece swimsuit", "a photo of a one-piece swimsuit."),
        ("euphonium", "a photo of a euphonium."),
        ("umbrella", "a photo of an umbrella."),  # 'u' is otherwise a vowel sound
        ("hourglass", "a photo of an hourglass."),  # silent h
        ("horse", "a photo of a horse."),
    ],
)
def test_article_before_the_class_name_fits_it(classname, prompt):
    assert class_prompts(classname, ["a photo of a {}."]) == [prompt]


def test_article_rule_keeps_the_template_text_around_it():
    templates = ["An {} in the wild.", "an image showing a {}.", "a photo of an {}.", "art of {}", "a banana and a {}"]
    assert class_prompts("owl", templates) == [
        "An owl in the wild.",
        "an image showing an owl.",
        "a photo of an owl.",
        "art of owl",
        "a banana and an owl",
    ]
    assert class_prompts("kiwi", templates)[:3] == [
        "A kiwi in the wild.",
        "an image showing a kiwi.",
        "a photo of a kiwi.",
    ]


def test_templates_file(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("# my set\nitap of a {}.\n\n  a {} in the wild  \n")
    assert load_templates(path) == ["itap of a {}.", "a {} in the wild"]
    assert load_templates(None) == list(DEFAULT_TEMPLATES)
    path.write_text("a photo\n")
    with pytest.raises(ConfigError, match=r"template 1 'a photo' must contain `\{\}` exactly once"):
        load_templates(path)
    path.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no templates"):
        load_templates(path)
    with pytest.raises(ConfigError, match="not found"):
        load_templates(tmp_path / "missing.txt")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> LoadedModel:
    from grainclip.evaluate.models import load_open_clip

    path = tmp_path_factory.mktemp("clip") / "eval-text-clip.json"
    path.write_text(json.dumps(TINY_CLIP))
    torch.manual_seed(0)
    return load_open_clip(str(path), None, torch.device("cpu"))


def _encode_one(loaded: LoadedModel, text: str) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(loaded.model.encode_text(loaded.tokenizer([text])), dim=-1)[0]


def test_class_embedding_is_the_renormalised_mean_of_its_prompts(tiny_clip):
    templates = ["a photo of a {}.", "a drawing of a {}."]
    descriptors = {"florp": ["red crest", "has wings"], "zanthe": ["blue tail"]}
    cache = TextEmbeddingCache()
    plain = class_embeddings(tiny_clip, ["florp", "zanthe"], templates, "cpu", cache=cache)
    described = class_embeddings(tiny_clip, ["florp", "zanthe"], templates, "cpu", descriptors, cache=cache)
    expected_plain = F.normalize(
        torch.stack([_encode_one(tiny_clip, t.format("zanthe")) for t in templates]).mean(0), dim=0
    )
    sentences = [
        "a photo of a florp, which has red crest",
        "a photo of a florp, which has wings",
        "a drawing of a florp, which has red crest",
        "a drawing of a florp, which has wings",
    ]
    expected_described = F.normalize(torch.stack([_encode_one(tiny_clip, s) for s in sentences]).mean(0), dim=0)
    assert torch.allclose(plain[1], expected_plain, atol=1e-5)
    assert torch.allclose(described[0], expected_described, atol=1e-5)
    assert torch.allclose(plain.norm(dim=1), torch.ones(2), atol=1e-5)


def test_cache_encodes_once_and_notices_new_weights(tiny_clip):
    cache = TextEmbeddingCache()
    texts = ["a photo of a florp.", "a photo of a zanthe."]
    first = cache.encode(tiny_clip, texts, "cpu")
    again = cache.encode(tiny_clip, texts, "cpu")
    assert cache.encoded_texts == 2 and again is first
    cache.encode(tiny_clip, texts[:1], "cpu")  # a different text list is a different entry
    assert cache.encoded_texts == 3
    with torch.no_grad():  # what an optimizer step does: update weights in place
        tiny_clip.model.text_projection.add_(0.1 * torch.randn_like(tiny_clip.model.text_projection))
    after = cache.encode(tiny_clip, texts, "cpu")
    assert cache.encoded_texts == 5
    assert not torch.allclose(after, first)


def test_default_cache_is_used_by_class_embeddings(tiny_clip):
    before = class_text.TEXT_CACHE.encoded_texts
    class_embeddings(tiny_clip, ["quorvel"], DEFAULT_TEMPLATES, "cpu")
    class_embeddings(tiny_clip, ["quorvel"], DEFAULT_TEMPLATES, "cpu")
    assert class_text.TEXT_CACHE.encoded_texts - before == len(DEFAULT_TEMPLATES)
