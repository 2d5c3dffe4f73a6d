"""Detector grounders on the tiny offline models: box frames, phrase mapping, batching, failures, schema.

groundingdino-py runs in its own environment (transformers<5) inside a Ray task, as in the pipeline.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from grainclip import schema
from grainclip.annotate import GroundRequest, build_grounder
from grainclip.annotate.grounders.common import cxcywh_to_original, padded_square_to_original
from grainclip.annotate.grounders.phrases import assign_boxes, pack_chunks, phrase_text, token_spans
from grainclip.config.annotate import GrounderConfig
from grainclip.config.base import ConfigError
from grainclip.schema import Status

DESCRIPTIONS = ["red crest", "blue wings", "striped tail"]


def noise_image(width: int, height: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def images():
    return [noise_image(64, 64, 0), noise_image(96, 48, 1), noise_image(40, 80, 2), noise_image(64, 64, 3)]


def tiny_grounder(tiny_models, name, **overrides):
    return build_grounder(GrounderConfig(name=name, model=str(tiny_models[name]), **overrides))


@pytest.fixture(scope="module")
def grounding_dino(tiny_models):
    return tiny_grounder(tiny_models, "grounding-dino", box_threshold=0.0, text_threshold=0.0, batch_size=3)


@pytest.fixture(scope="module")
def owlv2(tiny_models):
    return tiny_grounder(tiny_models, "owlv2", box_threshold=0.0, batch_size=3)


# --- raw output -> normalised xyxy of the original image -----------------------------------------------


def test_detr_family_boxes_are_already_fractions_of_the_original_frame():
    """Grounding DINO (both implementations) predicts cxcywh relative to the unpadded resized image."""
    pred = np.array([[0.5, 0.5, 0.2, 0.4], [0.05, 0.9, 0.3, 0.4]], dtype=np.float32)
    np.testing.assert_allclose(cxcywh_to_original(pred), [[0.4, 0.3, 0.6, 0.7], [0.0, 0.7, 0.2, 1.0]], atol=1e-6)


@pytest.mark.parametrize(
    ("width", "height", "pred", "expected"),
    [
        (200, 100, [0.5, 0.25, 0.2, 0.1], [0.4, 0.4, 0.6, 0.6]),  # wide: padding below the image
        (100, 200, [0.25, 0.5, 0.1, 0.2], [0.4, 0.4, 0.6, 0.6]),  # tall: padding right of the image
        (200, 100, [0.5, 0.45, 0.2, 0.2], [0.4, 0.7, 0.6, 1.0]),  # reaches into the padding: clipped
        (128, 128, [0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.75, 0.75]),  # square: no padding
    ],
)
def test_owlv2_boxes_leave_the_padded_square(width, height, pred, expected):
    np.testing.assert_allclose(padded_square_to_original(np.array([pred]), width, height)[0], expected, atol=1e-6)


def test_owlv2_conversion_agrees_with_transformers_post_processing(owlv2, images):
    """Our frame conversion of the raw output equals the library's own, on a wide and a tall image."""
    import torch

    for image in images[1:3]:
        inputs = owlv2.processor(text=[DESCRIPTIONS], images=[image], return_tensors="pt")
        with torch.inference_mode():
            outputs = owlv2.model(**inputs)
        ours = padded_square_to_original(outputs.pred_boxes[0].numpy(), image.width, image.height)
        [reference] = owlv2.processor.post_process_grounded_object_detection(
            outputs, threshold=0.0, target_sizes=[(image.height, image.width)]
        )  # every box (all scores > 0), in query order, in original pixels
        scale = np.array([image.width, image.height] * 2, dtype=np.float32)
        np.testing.assert_allclose(ours, np.clip(reference["boxes"].numpy() / scale, 0, 1), atol=1e-5)


def test_grounding_dino_conversion_agrees_with_transformers_post_processing(grounding_dino, images):
    import torch

    image = images[1]
    processor = grounding_dino.processor
    inputs = processor(images=[image], text="red crest. blue wings.", return_tensors="pt")
    with torch.inference_mode():
        outputs = grounding_dino.model(**inputs)
    [reference] = processor.post_process_grounded_object_detection(
        outputs,
        input_ids=inputs["input_ids"],
        threshold=0.0,
        text_threshold=0.0,
        target_sizes=[(image.height, image.width)],
    )
    scale = np.array([image.width, image.height] * 2, dtype=np.float32)
    ours = cxcywh_to_original(outputs.pred_boxes[0].numpy())
    np.testing.assert_allclose(ours, np.clip(reference["boxes"].numpy() / scale, 0, 1), atol=1e-5)


def test_oversized_images_are_downscaled_keeping_the_aspect_ratio():
    from grainclip.annotate.image_prep import fit_within

    small = Image.new("RGB", (100, 50))
    assert fit_within(small, 1600) is small
    assert fit_within(Image.new("RGB", (4000, 3000)), 1600).size == (1600, 1200)
    assert fit_within(Image.new("RGB", (30, 6000)), 1600).size == (8, 1600)


# --- Grounding DINO's text side ------------------------------------------------------------------------


def test_phrases_are_packed_into_prompts_that_fit_the_text_limit():
    descriptions = ["Red crest", "st. bernard ears", "a very long striped tail", "x"]
    chunks = pack_chunks(descriptions, token_counts=[2, 3, 5, 1], max_tokens=10)
    # 2 special tokens + (2 + 1) + (3 + 1) = 9 fit; the long one would make 15 -> its own prompt; "x" joins it.
    assert [c.text for c in chunks] == [
        "red crest. st  bernard ears.".replace("  ", " "),
        "a very long striped tail. x.",
    ]
    assert [c.first for c in chunks] == [0, 2]
    for chunk in chunks:
        phrases = [chunk.text[a:b] for a, b in chunk.spans]
        assert phrases == [phrase_text(d) for d in descriptions[chunk.first : chunk.first + len(phrases)]]
    assert pack_chunks(["too long for any prompt"], [50], max_tokens=10)[0].text == "too long for any prompt."


def test_token_spans_follow_the_tokenizer_offsets(grounding_dino):
    [chunk] = grounding_dino.chunks_for(DESCRIPTIONS)
    encoded = grounding_dino.tokenizer(chunk.text, return_offsets_mapping=True)
    spans = token_spans(np.array(encoded["offset_mapping"]), chunk.spans)
    for description, span in zip(DESCRIPTIONS, spans, strict=True):
        assert span.size >= 2
        assert grounding_dino.tokenizer.decode(np.array(encoded["input_ids"])[span]) == description


def test_boxes_go_to_the_description_holding_most_of_their_phrase():
    spans = [np.array([1, 2]), np.array([4, 5, 6])]
    probs = np.zeros((4, 8), dtype=np.float32)
    probs[0, [1, 2]] = [0.9, 0.8]  # query 0: all of description 0
    probs[1, [2, 4, 5]] = [0.95, 0.5, 0.6]  # query 1: one token of 0 (higher peak), two of 1 -> 1
    probs[2, [1]] = 0.2  # query 2: below the box threshold
    probs[3, [5]] = 0.6  # query 3: one token of 1
    queries, labels, scores = assign_boxes(probs, spans, box_threshold=0.3, text_threshold=0.25)
    assert queries.tolist() == [0, 1, 3] and labels.tolist() == [0, 1, 1]
    np.testing.assert_allclose(scores, [0.9, 0.6, 0.6])
    assert assign_boxes(probs, [np.array([], dtype=int)], 0.3, 0.25)[0].size == 0  # truncated-away phrase


# --- real detectors on the tiny models -----------------------------------------------------------------


@pytest.mark.parametrize("name", ["grounding-dino", "owlv2"])
def test_detectors_ground_batches_into_the_annotations_schema(name, request, images):
    grounder = request.getfixturevalue(name.replace("-", "_"))
    requests = [GroundRequest(str(i), image, DESCRIPTIONS) for i, image in enumerate(images)]
    results = grounder.ground(requests)
    assert len(results) == len(requests)
    rows = []
    for request_, result in zip(requests, results, strict=True):
        assert result.status in (Status.OK, Status.NO_REGIONS) and len(result.regions) <= 5
        assert {r.text for r in result.regions} <= set(DESCRIPTIONS)
        assert [r.score for r in result.regions] == sorted((r.score for r in result.regions), reverse=True)
        rows.append(
            {
                "image_id": request_.image_id,
                "width": request_.image.width,
                "height": request_.image.height,
                "descriptions": DESCRIPTIONS,
                "regions": [r.to_dict() for r in result.regions],
                "status": result.status,
                "error": result.error,
            }
        )
    schema.validate(pa.Table.from_pylist(rows), "annotations")
    assert any(r.status == Status.OK for r in results)
    # batching images of one size does not change what an image gets (Grounding DINO pads mixed sizes)
    assert grounder.ground([requests[0], requests[3]])[0] == grounder.ground(requests[:1])[0]
    info = grounder.info()
    assert info["name"] == name and info["simulated"] is False and info["box_threshold"] == 0.0


@pytest.mark.parametrize("name", ["grounding-dino", "owlv2"])
def test_zero_detections_and_empty_descriptions_are_no_regions(name, tiny_models, images):
    strict = tiny_grounder(tiny_models, name, box_threshold=1.0)
    results = strict.ground([GroundRequest("a", images[0], DESCRIPTIONS), GroundRequest("b", images[1], ["", " "])])
    assert [r.status for r in results] == [Status.NO_REGIONS, Status.NO_REGIONS]
    assert results[0].error == "no box scored above the threshold" and "no descriptions" in results[1].error


@pytest.mark.parametrize("name", ["grounding-dino", "owlv2"])
def test_odd_images_and_over_long_descriptions_are_grounded(name, request):
    """1x1, 12-megapixel and extreme aspect ratios, and a description longer than the text tower's limit (truncated)."""
    grounder = request.getfixturevalue(name.replace("-", "_"))
    long_description = "red " * 60 + "crest"
    requests = [
        GroundRequest("pixel", Image.new("RGB", (1, 1), (200, 10, 10)), DESCRIPTIONS),
        GroundRequest("strip", noise_image(300, 10, 4), DESCRIPTIONS),
        GroundRequest("big", noise_image(4000, 3000, 6), DESCRIPTIONS),
        GroundRequest("long", noise_image(64, 64, 5), [long_description, "wings"]),
    ]
    for result in grounder.ground(requests):
        assert result.status in (Status.OK, Status.NO_REGIONS), result.error
        assert all(schema.region_problem(r.to_dict()) is None for r in result.regions)


@pytest.mark.parametrize("name", ["grounding-dino", "owlv2"])
def test_one_broken_image_fails_alone(name, request, images):
    grounder = request.getfixturevalue(name.replace("-", "_"))
    requests = [
        GroundRequest("good", images[0], DESCRIPTIONS),
        GroundRequest("broken", None, DESCRIPTIONS),
        GroundRequest("good2", images[3], DESCRIPTIONS),
    ]
    results = grounder.ground(requests)
    assert results[1].status == Status.GROUND_FAILED and results[1].error
    assert results[0] == grounder.ground(requests[:1])[0] and results[2].status != Status.GROUND_FAILED


def test_descriptions_beyond_the_text_limit_are_grounded_in_several_prompts(grounding_dino, images, monkeypatch):
    descriptions = [f"{colour} {part}" for colour in ("red", "blue", "green") for part in ("crest", "wings", "tail")]
    monkeypatch.setattr(grounding_dino, "max_text_len", 12)  # a few phrases per prompt
    chunks = grounding_dino.chunks_for(descriptions)
    assert len(chunks) >= 3 and sum(len(c.spans) for c in chunks) == len(descriptions)
    [result] = grounding_dino.ground([GroundRequest("x", images[0], descriptions)])
    assert result.status == Status.OK and {r.text for r in result.regions} <= set(descriptions)


def test_groundingdino_py_needs_a_model_folder():
    with pytest.raises(ConfigError, match="needs `model`"):
        build_grounder(GrounderConfig(name="groundingdino-py"))


@pytest.mark.slow
def test_groundingdino_py_runs_in_its_own_environment_through_ray(tiny_models, images):
    """The original implementation, in a Ray task whose runtime env holds transformers<5 (as the pipeline runs it)."""
    import ray

    from grainclip.annotate.grounders.groundingdino_py import GroundingDinoPyGrounder
    from grainclip.envs import GROUNDINGDINO_PIP, groundingdino_local_runtime_env
    from grainclip.testing import default_cache_dir

    assert GroundingDinoPyGrounder.runtime_env == {"pip": list(GROUNDINGDINO_PIP)}
    config = GrounderConfig(
        name="groundingdino-py",
        model=str(tiny_models["groundingdino-py"]),
        box_threshold=0.0,
        text_threshold=0.0,
        options={"image_size": 64},
    )
    requests = [GroundRequest(str(i), image, DESCRIPTIONS) for i, image in enumerate(images)]

    def ground(config, requests):
        import transformers

        from grainclip.annotate import build_grounder

        grounder = build_grounder(config)
        return transformers.__version__, grounder.info(), grounder.ground(requests)

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        runtime_env = groundingdino_local_runtime_env(default_cache_dir() / "envs")
        task = ray.remote(num_cpus=1, runtime_env=runtime_env)(ground)
        version, info, results = ray.get(task.remote(config, requests), timeout=300)
    finally:
        ray.shutdown()
    assert version.startswith("4.") and info["name"] == "groundingdino-py" and info["config_file"].endswith(".py")
    assert len(results) == len(images) and all(r.status == Status.OK for r in results)
    for result in results:
        assert {r.text for r in result.regions} <= set(DESCRIPTIONS) and 0 < len(result.regions) <= 5
        assert all(schema.region_problem(r.to_dict()) is None for r in result.regions)
    assert results[0].regions != results[3].regions  # different pixels, different boxes


# --- CPU preparation overlapping the forward pass ------------------------------------------------------


def ground_stage_batch(images: list[Image.Image]) -> pa.Table:
    """A described batch as the ground stage receives it: every image twice over (three grounder batches of 3
    at batch_size 3), one row without descriptions and one whose bytes do not decode."""
    from grainclip.images import encode_image

    rows = [
        {"image_id": f"{i}", "image": encode_image(image), "descriptions": DESCRIPTIONS[: 1 + i % 3]}
        for i, image in enumerate(images * 2)
    ]
    rows += [
        {"image_id": "empty", "image": encode_image(images[0]), "descriptions": []},
        {"image_id": "garbage", "image": b"not an image", "descriptions": DESCRIPTIONS},
    ]
    for row in rows:
        row.update(image_uri=None, status=Status.OK.value, error=None)
    return pa.Table.from_pylist(rows)


@pytest.mark.parametrize("name", ["grounding-dino", "owlv2"])
def test_the_overlap_changes_no_row(name, tiny_models, images, one_thread):
    """The ground stage with batches prepared ahead on the prefetch thread writes exactly the rows (regions,
    statuses, errors, in order) that preparing each batch just before its forward pass writes."""
    from grainclip.pipelines.stages import GROUND_SECONDS, GroundStage

    batch = ground_stage_batch(images)
    outputs = {}
    for ahead in (0, 2):
        config = GrounderConfig(
            name=name,
            model=str(tiny_models[name]),
            box_threshold=0.0,
            text_threshold=0.0,
            batch_size=3,
            prefetch_batches=ahead,
        )
        stage = GroundStage(config)
        outputs[ahead] = stage(batch).drop_columns([GROUND_SECONDS])
        stage.annotator.close()
    assert outputs[2].equals(outputs[0])
    statuses = outputs[0].column("status").to_pylist()
    assert statuses[-2:] == [Status.NO_REGIONS, Status.DECODE_FAILED] and Status.OK in statuses[:-2]
    assert all(outputs[0].column("regions").to_pylist()[:-2])  # every grounded row has boxes at threshold 0


@pytest.mark.parametrize("name", ["grounding-dino", "owlv2"])
def test_a_broken_image_among_prefetched_batches_fails_alone(name, request, images, monkeypatch):
    """A batch whose preparation raises on the prefetch thread is rerun and split as without the overlap."""
    grounder = request.getfixturevalue(name.replace("-", "_"))
    assert grounder.config.prefetch_batches == 1 and grounder.config.batch_size == 3
    requests = [GroundRequest(str(i), image, DESCRIPTIONS) for i, image in enumerate(images * 2)]
    requests.insert(4, GroundRequest("broken", None, DESCRIPTIONS))  # in the second of three batches
    results = grounder.ground(requests)
    assert [r.status == Status.GROUND_FAILED for r in results] == [i == 4 for i in range(len(requests))]
    monkeypatch.setattr(grounder, "config", grounder.config.model_copy(update={"prefetch_batches": 0}))
    assert grounder.ground(requests) == results
