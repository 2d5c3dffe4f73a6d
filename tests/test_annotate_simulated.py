"""Annotator plumbing without models: registry and plugins, configs, the simulated PartsWorld annotators,
the box frame across render sizes, and annotate_rows on a real PartsWorld dataset."""

from __future__ import annotations

import textwrap

import numpy as np
import pyarrow as pa
import pytest

from grainclip import schema
from grainclip.annotate import (
    DESCRIBERS_GROUP,
    GROUNDERS_GROUP,
    DescribeRequest,
    GroundRequest,
    annotate_rows,
    available,
    build_describer,
    build_grounder,
)
from grainclip.annotate.grounders.common import select_regions
from grainclip.config.annotate import DescriberConfig, GrounderConfig
from grainclip.config.base import ConfigError, load_config, parse_config
from grainclip.partsworld import PALETTE, make_scene
from grainclip.schema import Status


@pytest.fixture(scope="module")
def truth(partsworld_small):
    return partsworld_small / "train" / "truth"


@pytest.fixture(scope="module")
def truth_rows(truth):
    return schema.read_table(truth, "annotations").to_pylist()


def describer(truth, **options):
    return build_describer(DescriberConfig(name="partsworld", options={"truth": str(truth), **options}))


def grounder(truth, box_threshold=0.3, **options):
    options = {"truth": str(truth), **options}
    return build_grounder(GrounderConfig(name="partsworld", box_threshold=box_threshold, options=options))


# --- registry and config -------------------------------------------------------------------------------


def test_builtins_are_registered_as_entry_points():
    assert {"partsworld", "vllm", "openai", "hf"} <= set(available(DESCRIBERS_GROUP))
    assert {"partsworld", "grounding-dino", "owlv2", "groundingdino-py"} <= set(available(GROUNDERS_GROUP))


def test_unknown_names_list_the_available_ones():
    with pytest.raises(ConfigError, match=r"unknown describer 'gpt-9'; available: .*partsworld"):
        build_describer(DescriberConfig(name="gpt-9"))
    with pytest.raises(ConfigError, match=r"unknown grounder 'yolo'; available: .*owlv2"):
        build_grounder(GrounderConfig(name="yolo"))


def test_a_third_party_plugin_is_selected_by_name_from_yaml(tmp_path, monkeypatch):
    """A package that declares an entry point in grainclip.describers is usable without touching grainclip."""
    (tmp_path / "echo_plugin.py").write_text(
        textwrap.dedent(
            """
            from grainclip.annotate import Describer, Description

            class EchoDescriber(Describer):
                def describe(self, requests):
                    return [Description(r.caption, [r.caption or "nothing"], "ok") for r in requests]
            """
        )
    )
    dist = tmp_path / "echo_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[grainclip.describers]\necho = echo_plugin:EchoDescriber\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config_file = tmp_path / "describer.yaml"
    config_file.write_text("name: echo\nbatch_size: 4\n")
    plugin = build_describer(load_config(config_file, DescriberConfig))
    assert type(plugin).__name__ == "EchoDescriber" and "echo" in available(DESCRIBERS_GROUP)
    assert plugin.describe([DescribeRequest("x", None, "a red bird")])[0].descriptions == ["a red bird"]


def test_an_entry_point_that_is_not_an_annotator_is_refused(tmp_path, monkeypatch):
    (tmp_path / "not_a_plugin.py").write_text("class Thing:\n    pass\n")
    dist = tmp_path / "not_a_plugin-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: not-a-plugin\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[grainclip.grounders]\nthing = not_a_plugin:Thing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="not a grainclip Grounder"):
        build_grounder(GrounderConfig(name="thing"))


@pytest.mark.parametrize(
    ("cls", "data", "message"),
    [
        (GrounderConfig, {"box_threshold": 1.5}, "box_threshold"),
        (GrounderConfig, {"max_regions": 0}, "max_regions"),
        (GrounderConfig, {"batch_size": 0}, "batch_size"),
        (GrounderConfig, {"box_treshold": 0.3}, "box_treshold: unknown key"),
        (DescriberConfig, {"batch_size": -1}, "batch_size"),
        (DescriberConfig, {"sampling": {"temperature": -1}}, "sampling.temperature"),
        (DescriberConfig, {"engine": {"gpu_memory_utilization": 1.2}}, "engine.gpu_memory_utilization"),
        (DescriberConfig, {"name": "vllm"}, "needs `model`"),
    ],
)
def test_config_errors_name_the_field(cls, data, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(data, cls)


def test_backend_options_are_validated_by_the_backend(truth):
    with pytest.raises(ConfigError, match="drop_prob"):
        describer(truth, drop_prob=2.0)
    with pytest.raises(ConfigError, match="jiter: unknown key"):
        grounder(truth, jiter=0.1)
    with pytest.raises(ConfigError, match="truth not found"):
        grounder(truth / "missing")


# --- simulated describer -------------------------------------------------------------------------------


def test_simulated_describer_without_noise_returns_the_truth(truth, truth_rows):
    rows = truth_rows[:8]
    results = describer(truth).describe([DescribeRequest(r["image_id"], None, r["caption"]) for r in rows])
    for row, result in zip(rows, results, strict=True):
        assert result.status == Status.OK and result.error is None
        assert result.descriptions == row["descriptions"] and result.llm_caption == row["llm_caption"]


def test_simulated_describer_noise_is_seeded_per_image(truth, truth_rows):
    requests = [DescribeRequest(r["image_id"], None, None) for r in truth_rows]
    noisy = describer(truth, drop_prob=0.3, substitute_prob=0.4, seed=7)
    first = noisy.describe(requests)
    assert first == describer(truth, drop_prob=0.3, substitute_prob=0.4, seed=7).describe(requests)
    assert first[5:9] == noisy.describe(requests[5:9])  # independent of batch composition
    assert first != describer(truth, drop_prob=0.3, substitute_prob=0.4, seed=8).describe(requests)

    kept = substituted = total = 0
    for row, result in zip(truth_rows, first, strict=True):
        total += len(row["descriptions"])
        for text in result.descriptions:
            if text in row["descriptions"]:
                kept += 1
            else:  # a wrong description that shares its part or its attribute with a true one
                substituted += 1
                assert any(set(text.split()) & set(t.split()) for t in row["descriptions"])
    assert 0.2 < kept / total < 0.6 and 0.1 < substituted / total < 0.5


def test_simulated_describer_unknown_image_is_a_failed_row(truth):
    [result] = describer(truth).describe([DescribeRequest("not-in-truth", None, "x")])
    assert result.status == Status.DESCRIBE_FAILED and "not in the PartsWorld truth" in result.error
    assert describer(truth).info()["simulated"] is True


# --- simulated grounder --------------------------------------------------------------------------------


def test_simulated_grounder_without_noise_returns_the_true_boxes(truth, truth_rows):
    row = truth_rows[0]
    [result] = grounder(truth).ground([GroundRequest(row["image_id"], None, row["descriptions"])])
    assert result.status == Status.OK
    found = {r.text: np.array(r.box) for r in result.regions}
    expected = {r["text"]: np.array(r["box"]) for r in row["regions"]}
    assert found.keys() == expected.keys()
    for text, box in expected.items():
        np.testing.assert_allclose(found[text], box, atol=1e-6)
    assert all(0.5 <= r.score <= 1.0 for r in result.regions)


def test_simulated_grounder_matches_wrong_descriptions_by_shared_words(truth, truth_rows):
    row = truth_rows[0]
    part = row["regions"][0]["text"].split()[-1]  # e.g. "crest"
    request = GroundRequest(row["image_id"], None, [f"zebra-striped {part}"])
    [region] = grounder(truth, box_threshold=0.05).ground([request])[0].regions
    np.testing.assert_allclose(region.box, row["regions"][0]["box"], atol=1e-6)
    assert region.score <= 1 / 3  # scaled by the word overlap (1 of 3 words) ...
    assert grounder(truth).ground([request])[0].status == Status.NO_REGIONS  # ... so the default 0.3 drops it


def test_simulated_grounder_noise_knobs(truth, truth_rows):
    requests = [GroundRequest(r["image_id"], None, r["descriptions"]) for r in truth_rows[:20]]
    assert all(g.status == Status.NO_REGIONS for g in grounder(truth, miss_prob=1.0).ground(requests))

    jittered = grounder(truth, jitter=0.1, seed=3).ground(requests)
    assert jittered == grounder(truth, jitter=0.1, seed=3).ground(requests)  # reruns are identical
    exact = grounder(truth).ground(requests)
    moved = [
        np.abs(np.subtract(a.box, b.box)).max()
        for ga, gb in zip(jittered, exact, strict=True)
        for a, b in zip(sorted(ga.regions, key=lambda r: r.text), sorted(gb.regions, key=lambda r: r.text), strict=True)
    ]
    assert 0 < np.median(moved) < 0.1

    spurious = grounder(truth, spurious_prob=1.0, miss_prob=1.0).ground(requests)
    assert all(g.status == Status.OK and len(g.regions) >= 1 for g in spurious)


def test_same_scene_at_two_resolutions_gives_the_same_normalised_boxes(tmp_path):
    """The box frame is the original image's, whatever its size or aspect ratio."""
    scene = make_scene("florp", seed=11)
    _, regions = scene.render(64, 64)
    truth_row = {
        "image_id": "scene",
        "caption": "a photo of a florp",
        "width": 64,
        "height": 64,
        "status": "ok",
        "descriptions": [t for t, _ in regions],
        "regions": [{"text": t, "box": list(b), "score": 1.0} for t, b in regions],
    }
    schema.write_shard(pa.Table.from_pylist([truth_row]), tmp_path / "truth" / "part-0.parquet", "annotations")
    simulated = grounder(tmp_path, jitter=0.0)
    outputs = []
    for width, height in [(64, 64), (200, 120)]:
        image, _ = scene.render(width, height)
        [result] = simulated.ground([GroundRequest("scene", image, truth_row["descriptions"])])
        boxes = {r.text: np.array(r.box) for r in result.regions}
        outputs.append(boxes)
        # The crest's colour lies inside its box in this render's pixel frame, and nowhere far outside it.
        crest_text = next(t for t in boxes if t.endswith("crest"))
        colour = np.array(PALETTE[crest_text.split()[0]])
        pixels = np.asarray(image).astype(int)
        ys, xs = np.nonzero(np.abs(pixels - colour).sum(axis=-1) < 30)
        x1, y1, x2, y2 = boxes[crest_text] * [width, height, width, height]
        inside = (xs >= x1 - 1) & (xs <= x2 + 1) & (ys >= y1 - 1) & (ys <= y2 + 1)
        assert xs.size and inside.mean() > 0.95
    assert outputs[0].keys() == outputs[1].keys()
    for text in outputs[0]:
        np.testing.assert_allclose(outputs[0][text], outputs[1][text], atol=1e-6)


# --- shared selection ----------------------------------------------------------------------------------


def test_select_regions_thresholds_nms_per_description_and_top_k():
    config = GrounderConfig(box_threshold=0.3, nms_iou=0.5, max_regions=3)
    boxes = np.array(
        [
            [0.1, 0.1, 0.5, 0.5],  # a, 0.9
            [0.11, 0.1, 0.5, 0.5],  # a, 0.8: suppressed by the first (same description)
            [0.11, 0.1, 0.5, 0.5],  # b, 0.7: kept (NMS is per description)
            [0.6, 0.6, 0.9, 0.9],  # a, 0.3: not above the threshold
            [0.2, 0.2, 0.2, 0.6],  # b, 0.95: degenerate (zero width)
            [-0.2, 0.5, 0.4, 1.3],  # c, 0.6: clipped into the image
            [0.7, 0.1, 0.9, 0.3],  # c, 0.5: fourth best -> cut by top-3
        ]
    )
    scores = np.array([0.9, 0.8, 0.7, 0.3, 0.95, 0.6, 0.5])
    labels = np.array([0, 0, 1, 0, 1, 2, 2])
    regions = select_regions(["a", "b", "c"], boxes, scores, labels, config)
    assert [(r.text, round(r.score, 2)) for r in regions] == [("a", 0.9), ("b", 0.7), ("c", 0.6)]
    assert regions[2].box == pytest.approx((0.0, 0.5, 0.4, 1.0))
    assert select_regions(["", "b"], boxes[:1], scores[:1], np.array([0]), config) == []  # blank text


# --- annotate_rows -------------------------------------------------------------------------------------


def test_annotate_rows_on_partsworld_conforms_to_the_annotations_schema(partsworld_small, truth):
    images = schema.read_table(partsworld_small / "train" / "images", "images").to_pylist()[:16]
    rows = annotate_rows(images, describer(truth, drop_prob=0.2), grounder(truth, jitter=0.05), run_id="t")
    table = schema.validate(pa.Table.from_pylist(rows), "annotations")
    assert table.column("image_id").to_pylist() == [r["image_id"] for r in images]
    assert set(table.column("status").to_pylist()) <= {"ok", "no_regions", "describe_failed"}
    assert table.column("status").to_pylist().count("ok") >= 12
    assert "class_name" in table.column_names  # extra columns are carried through
    assert all(r["run_id"] == "t" for r in rows)


# --- failure isolation ---------------------------------------------------------------------------------


def test_a_failing_batch_is_split_until_the_bad_rows_are_alone():
    from grainclip.annotate.base import map_isolating_failures

    calls: list[list[int]] = []

    def run(batch):
        calls.append(list(batch))
        if 5 in batch or 11 in batch:
            raise ValueError("bad row")
        return [item * 10 for item in batch]

    results = map_isolating_failures(list(range(16)), run, lambda item, exc: f"failed {item}: {exc}")
    assert results == [i * 10 if i not in (5, 11) else f"failed {i}: bad row" for i in range(16)]
    assert len(calls) < 16  # halving, not one call per row

    def dead(batch):
        raise MemoryError

    with pytest.raises(MemoryError):
        map_isolating_failures([1, 2, 3], dead, lambda item, exc: None, fatal=(MemoryError,))
