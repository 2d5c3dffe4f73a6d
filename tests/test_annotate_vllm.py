"""The in-process vLLM describer on the tiny chat LLM (text-only) and the tiny LLaVA (multimodal), the pipeline's
describe stage with batches in flight against the synchronous one on the same engine, and the whole notebook path
(annotate_rows) over a corpus of bad inputs with a real describer and a real detector. The same two engines first
show that vLLM runs each tiny model as transformers does (same chat tokens, same log-probs)."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from grainclip import schema
from grainclip.annotate import DescribeRequest, annotate_rows, build_describer, build_grounder
from grainclip.annotate.describers.chat import ChatPrompt
from grainclip.config.annotate import DescriberConfig, GrounderConfig
from grainclip.images import decode_image
from grainclip.pipelines.prepare import prepare_images
from grainclip.pipelines.stages import DESCRIBE_SECONDS, DescribeStage, InflightDescribeStage
from grainclip.schema import Status, read_table
from grainclip.testing.actors import run_as_async_actor
from grainclip.testing.bad_images import bad_images
from grainclip.testing.corpus import LONG_CAPTION, write_bad_input_corpus

pytestmark = pytest.mark.slow  # one vLLM engine start per model (~30-60 s each on 2 CPU cores)

LIMITS = {"max_descriptions": 3, "max_description_chars": 20, "max_caption_chars": 40}


def vllm_config(model, **overrides) -> DescriberConfig:
    return DescriberConfig(
        name="vllm",
        model=str(model),
        batch_size=8,
        sampling={"max_tokens": 160},
        engine={"dtype": "float32", "enforce_eager": True, "max_model_len": 1024},
        **{**LIMITS, **overrides},
    )


@pytest.fixture(scope="module")
def text_llm(tiny_models):
    describer = build_describer(vllm_config(tiny_models["llm"], max_alt_text_chars=20_000))
    yield describer
    describer.close()


@pytest.fixture(scope="module")
def vlm(tiny_models):
    describer = build_describer(vllm_config(tiny_models["vlm"]))
    yield describer
    describer.close()


@pytest.fixture(scope="module")
def stage_batches(partsworld_small) -> list[pa.Table]:
    """48 PartsWorld rows in Arrow batches of 12, as the describe stage receives them."""
    images = read_table(partsworld_small / "train" / "images", "images").slice(0, 48)
    return [prepare_images(images.slice(start, 12)) for start in range(0, images.num_rows, 12)]


@pytest.fixture(scope="module")
def sync_rows(text_llm, stage_batches) -> set[tuple]:
    stage = DescribeStage(text_llm.config, annotator=text_llm)
    return described(pa.concat_tables([stage(batch) for batch in stage_batches]))


def described(table: pa.Table) -> set[tuple]:
    """Every row's answer and token counts, to compare two runs set for set."""
    names = ["image_id", "status", "error", "llm_caption", "descriptions", "__gc_prompt_tokens", "__gc_output_tokens"]
    return {
        tuple(map(lambda v: tuple(v) if isinstance(v, list) else v, row))
        for row in zip(*table.select(names).to_pydict().values())
    }


def assert_within_limits(result):
    assert result.status == Status.OK, result.error
    assert 1 <= len(result.descriptions) <= LIMITS["max_descriptions"]
    assert all(0 < len(d) <= LIMITS["max_description_chars"] for d in result.descriptions)
    assert result.llm_caption is None or len(result.llm_caption) <= LIMITS["max_caption_chars"]


def ok_images() -> list[Image.Image]:
    return [decode_image(data) for name, (data, outcome) in sorted(bad_images().items()) if outcome == "ok"]


def greedy_first_steps(describer, prompt: ChatPrompt) -> tuple[list[int], dict[int, float]]:
    """The prompt's tokens as the describer's engine renders them, and the top-5 log-probs of the first greedy
    step (4 tokens are generated, through the engine's own chat rendering)."""
    from vllm import SamplingParams

    async def generate():
        final = None
        engine_input = await describer.chat_input(prompt)
        params = SamplingParams(max_tokens=4, temperature=0.0, logprobs=5)
        async for output in describer.engine.generate(engine_input, params, f"tiny-check-{id(prompt)}"):
            final = output
        return final

    final = describer.loop.run(generate())
    assert len(final.outputs[0].token_ids) == 4
    return list(final.prompt_token_ids), {token: item.logprob for token, item in final.outputs[0].logprobs[0].items()}


def assert_logprobs_agree(vllm_step: dict[int, float], hf_logits) -> None:
    """vLLM's top-5 log-probs at one step equal transformers' log-softmax there (same greedy token too)."""
    hf = hf_logits.float().log_softmax(-1)
    for token, logprob in vllm_step.items():
        assert hf[token].item() == pytest.approx(logprob, abs=1e-3)
    assert max(vllm_step, key=vllm_step.get) == int(hf.argmax())


def test_the_tiny_llm_generates_in_transformers_and_vllm_alike(text_llm, tiny_models):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    text = "Describe a red crest and blue wings."
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llm"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llm"])
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    generated = model.generate(**chat, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, chat["input_ids"].shape[1] + 4)

    prompt_ids, first_step = greedy_first_steps(text_llm, ChatPrompt(text, None))
    assert prompt_ids == chat["input_ids"][0].tolist()  # same chat template and tokenizer
    with torch.no_grad():
        logits = model(**chat).logits[0, -1]
    assert_logprobs_agree(first_step, logits)


def test_the_tiny_vlm_generates_in_transformers_and_vllm_alike_and_sees_the_image(vlm, tiny_models):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    text = "Write a caption and descriptions."
    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    model = AutoModelForImageTextToText.from_pretrained(tiny_models["vlm"])
    first_steps = []
    for image in ok_images()[:2]:
        messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        assert (inputs["input_ids"] == model.config.image_token_id).sum() == 16
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
        prompt_ids, first_step = greedy_first_steps(vlm, ChatPrompt(text, image))
        assert prompt_ids == inputs["input_ids"][0].tolist()
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        assert_logprobs_agree(first_step, logits)
        first_steps.append(first_step)
    assert first_steps[0] != first_steps[1]  # the image reaches the language model


def test_text_only_model_with_structured_output_answers_parseable_json(text_llm):
    assert text_llm.multimodal is False
    requests = [DescribeRequest(str(i), None, f"a photo of creature number {i}") for i in range(6)]
    requests.append(DescribeRequest("empty", None, ""))
    results = text_llm.describe(requests)
    assert results[-1].status == Status.DESCRIBE_FAILED and "caption is empty" in results[-1].error
    for result in results[:-1]:
        assert_within_limits(result)
        assert result.num_prompt_tokens > 50 and 0 < result.num_output_tokens <= 160
    info = text_llm.info()
    assert info["structured_output"] is True and info["engine"]["max_model_len"] == 1024 and info["vllm_version"]


def test_text_prompts_skip_the_chat_renderer_and_keep_its_tokens(text_llm, vlm):
    """The tokenizer path (one call per batch) gives exactly the tokens of vLLM's chat renderer; a multimodal model
    keeps the renderer."""
    assert text_llm.templates_text_itself is True and vlm.templates_text_itself is False
    captions = ["a red bird", "two cats on a mat, one asleep", "caf\u00e9 \u6f22\u5b57 \u00fc"]
    prompts = [text_llm.to_prompt(DescribeRequest(str(i), None, c)) for i, c in enumerate(captions)]
    for prompt, ids in zip(prompts, text_llm.template_tokens([p.text for p in prompts]), strict=True):
        assert list(text_llm.loop.run(text_llm.chat_input(prompt))["prompt_token_ids"]) == ids


def test_a_prompt_too_long_for_the_engine_fails_alone(text_llm):
    requests = [
        DescribeRequest("a", None, "a red bird"),
        DescribeRequest("long", None, LONG_CAPTION),
        DescribeRequest("b", None, "a blue fish"),
    ]
    results = text_llm.describe(requests)
    assert results[1].status == Status.DESCRIBE_FAILED and "LLM request failed" in results[1].error
    assert_within_limits(results[0])
    assert_within_limits(results[2])


def test_multimodal_model_gets_the_image(vlm):
    assert vlm.multimodal is True and vlm.info()["multimodal"] is True
    images = [image.resize((64, 64)) for image in ok_images()[:4]]
    prompt = vlm.to_prompt(DescribeRequest("a", images[0], "a photo")).text
    answers = [c.text for c in vlm.complete([ChatPrompt(prompt, image) for image in images])]
    assert len(set(answers)) > 1  # same prompt, different pixels -> different answers
    for result in vlm.describe([DescribeRequest(str(i), image, "a photo") for i, image in enumerate(images)]):
        assert_within_limits(result)


def test_bad_inputs_become_rows_with_a_status_never_an_exception(vlm, tiny_models, tmp_path):
    """Corrupt, truncated, zero-byte, CMYK, 16-bit, RGBA, huge (bomb) images and empty captions, end to end."""
    corpus = write_bad_input_corpus(tmp_path)
    rows = pq.read_table(corpus["images"]).to_pylist()
    expected = json.loads(corpus["expected"].read_text())
    grounder = build_grounder(GrounderConfig(name="owlv2", model=str(tiny_models["owlv2"]), box_threshold=0.0))
    out = annotate_rows(rows, vlm, grounder, run_id="bad-inputs")
    assert [r["image_id"] for r in out] == [r["image_id"] for r in rows]  # no row lost or reordered
    for row in out:
        assert row["status"] in schema.STATUSES
        if expected[row["image_id"]] == "error":
            assert row["status"] == Status.DECODE_FAILED and row["error"], row["image_id"]
        else:
            assert row["status"] in (Status.OK, Status.NO_REGIONS), (row["image_id"], row["error"])
    by_id = {r["image_id"]: r for r in out}
    assert "over the limit" in by_id["bomb_header"]["error"]
    assert by_id["cmyk_jpeg"]["status"] == by_id["gray_16bit_png"]["status"] == by_id["rgba"]["status"] == Status.OK
    schema.validate(pa.Table.from_pylist(out), "annotations")

    tight = annotate_rows(rows[:3], vlm, grounder, max_pixels=100)  # the pixel limit is the caller's
    assert all(r["status"] == Status.DECODE_FAILED and r["error"] for r in tight)
    assert any("over the limit of 100" in r["error"] for r in tight)


def test_image_sizes_do_not_change_the_request_contract(vlm):
    """Tiny and large images both go through (vLLM's processor resizes); results keep the request order."""
    images = [Image.new("RGB", (1, 1), (255, 0, 0)), Image.new("RGB", (640, 320), (0, 0, 255))]
    results = vlm.describe([DescribeRequest(str(i), image, None) for i, image in enumerate(images)])
    assert len(results) == 2
    for result in results:
        assert_within_limits(result)


def test_batches_in_flight_give_the_rows_of_the_synchronous_stage(text_llm, stage_batches, sync_rows):
    stage = InflightDescribeStage(text_llm.config, batches_in_flight=3, annotator=text_llm)
    started = time.perf_counter()
    table = pa.concat_tables(run_as_async_actor(stage, stage_batches, max_concurrency=3))
    elapsed = time.perf_counter() - started
    assert described(table) == sync_rows  # greedy, fixed seeds: the same rows, whatever ran beside them
    assert sum(1 for row in sync_rows if row[1] == Status.OK) >= len(sync_rows) // 2
    assert all(row[5] > 50 and row[6] > 0 for row in sync_rows)
    # Overlapping batches share their wall time: the per-row seconds still sum to the actor's busy time.
    assert 0 < sum(table.column(DESCRIBE_SECONDS).to_pylist()) <= elapsed * 1.01


def test_a_bad_prompt_among_batches_in_flight_fails_alone(text_llm, stage_batches, sync_rows):
    bad = stage_batches[1]
    captions = bad.column("caption").to_pylist()
    captions[4] = LONG_CAPTION  # longer than max_model_len once rendered: the engine rejects that request alone
    batches = [
        *stage_batches[:1],
        bad.set_column(bad.schema.get_field_index("caption"), "caption", pa.array(captions)),
        *stage_batches[2:],
    ]
    stage = InflightDescribeStage(text_llm.config, batches_in_flight=3, annotator=text_llm)
    rows = described(pa.concat_tables(run_as_async_actor(stage, batches, max_concurrency=3)))
    bad_id = bad.column("image_id")[4].as_py()
    (failed,) = [row for row in rows if row[0] == bad_id]
    assert failed[1] == Status.DESCRIBE_FAILED and "LLM request failed" in failed[2], failed
    assert {row for row in rows if row[0] != bad_id} == {row for row in sync_rows if row[0] != bad_id}
