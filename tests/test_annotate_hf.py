"""The transformers (`hf`) describer on the tiny chat LLM and the tiny LLaVA, and the describer contract that
all LLM backends share (what is sent, empty captions, empty or garbage answers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from grainclip.annotate import DescribeRequest, build_describer
from grainclip.annotate.describers.chat import ChatPrompt, Completion
from grainclip.config.annotate import DescriberConfig
from grainclip.config.base import ConfigError, load_config
from grainclip.schema import Status


def noise_image(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def hf_config(model, **overrides) -> DescriberConfig:
    return DescriberConfig(
        name="hf", model=str(model), **{"sampling": {"max_tokens": 12}, "batch_size": 3, **overrides}
    )


@pytest.fixture(scope="module")
def text_llm(tiny_models):
    return build_describer(hf_config(tiny_models["llm"]))


@pytest.fixture(scope="module")
def vlm(tiny_models):
    return build_describer(hf_config(tiny_models["vlm"], sampling={"max_tokens": 12, "temperature": 1.0, "seed": 5}))


def test_text_only_model_is_detected_and_gets_the_alt_text(text_llm):
    assert text_llm.multimodal is False
    prompt = text_llm.to_prompt(DescribeRequest("a", noise_image(0), "a photo of a red bird"))
    assert prompt.image is None and '"a photo of a red bird"' in prompt.text and "cannot see" in prompt.text


def test_text_only_batch_gives_one_result_per_request_with_token_counts(text_llm):
    requests = [DescribeRequest(str(i), None, f"a photo of creature {i}") for i in range(5)]
    requests.insert(2, DescribeRequest("blank", None, "   "))
    results = text_llm.describe(requests)
    assert len(results) == 6
    assert results[2].status == Status.DESCRIBE_FAILED and "caption is empty" in results[2].error
    for result in results[:2] + results[3:]:
        # a random model writes garbage: the row records why, with the start of the output
        assert result.status in (Status.OK, Status.DESCRIBE_FAILED)
        assert result.num_prompt_tokens > 50 and 0 < result.num_output_tokens <= 12
        assert result.status == Status.OK or "unusable LLM output" in result.error
    info = text_llm.info()
    assert info["structured_output"] is False and info["multimodal"] is False and len(info["prompt_sha256"]) == 64


def test_long_alt_text_is_cut_before_the_prompt(text_llm):
    prompt = text_llm.to_prompt(DescribeRequest("a", None, "very " * 3000 + "long"))
    assert len(prompt.text) < 2500


def test_multimodal_model_sees_the_image_and_different_images_change_the_output(vlm):
    assert vlm.multimodal is True
    first, second = noise_image(1), noise_image(2)
    prompt = vlm.to_prompt(DescribeRequest("a", first, None))
    assert prompt.image is first and "alt-text" not in prompt.text
    [again] = vlm.complete([ChatPrompt(prompt.text, first)])
    assert again.text == vlm.complete([ChatPrompt(prompt.text, first)])[0].text  # seeded sampling
    assert again.text != vlm.complete([ChatPrompt(prompt.text, second)])[0].text
    # no image and no caption: nothing to describe; no image but a caption: the text-only prompt
    assert vlm.to_prompt(DescribeRequest("y", None, "a bird")).image is None
    results = vlm.describe(
        [DescribeRequest("x", None, None), DescribeRequest("y", None, "a bird"), DescribeRequest("z", first, "")]
    )
    assert results[0].status == Status.DESCRIBE_FAILED and "no image" in results[0].error
    assert results[1].num_prompt_tokens > 0 and results[2].num_prompt_tokens > 0


@pytest.mark.parametrize(
    ("text", "status", "error"),
    [
        ("", Status.DESCRIBE_FAILED, "empty LLM output"),
        ("lorem ipsum dolor", Status.DESCRIBE_FAILED, "no JSON object and no list"),
        (json.dumps({"caption": "a bird", "descriptions": ["red crest", "Red crest", "blue wings"]}), Status.OK, None),
    ],
)
def test_answers_become_descriptions_or_failed_rows(text_llm, text, status, error):
    result = text_llm.to_description(Completion(text, 10, 5))
    assert result.status == status and (result.num_prompt_tokens, result.num_output_tokens) == (10, 5)
    if error:
        assert error in result.error and not result.descriptions
    else:
        assert result.descriptions == ["red crest", "blue wings"] and result.llm_caption == "a bird"
    failed = text_llm.to_description(Completion(None, error="timeout"))
    assert failed.status == Status.DESCRIBE_FAILED and "timeout" in failed.error


def test_forcing_multimodal_on_a_text_only_model_is_a_config_error(tiny_models):
    with pytest.raises(ConfigError, match="no vision_config"):
        build_describer(hf_config(tiny_models["llm"], multimodal=True))


def test_swapping_the_model_is_one_yaml_line(tiny_models, tmp_path):
    """The same YAML with only `model` changed switches a vision-language model for a text-only one."""
    text = "name: hf\nmodel: {model}\nbatch_size: 2\nsampling: {{max_tokens: 4}}\n"
    builds = {}
    for name in ("vlm", "llm"):
        path = tmp_path / f"{name}.yaml"
        path.write_text(text.format(model=tiny_models[name]))
        builds[name] = build_describer(load_config(path, DescriberConfig))
    request = DescribeRequest("a", noise_image(0), "a photo of a bird")
    assert builds["vlm"].to_prompt(request).image is not None and builds["llm"].to_prompt(request).image is None
    for describer in builds.values():
        [result] = describer.describe([request])
        assert result.num_output_tokens > 0
