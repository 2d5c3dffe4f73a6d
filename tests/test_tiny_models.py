"""Each tiny offline model really runs in the library that consumes it; builds are cached and deterministic.

The tiny LLM and VLM are checked against transformers in test_annotate_vllm.py, on the engines that file starts
anyway (one vLLM engine start costs ~40 s here).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from grainclip.testing import (
    TINY_MODEL_NAMES,
    build_tiny_models,
    default_cache_dir,
    ensure_tiny_model,
    read_manifest,
    tiny_clip_name,
)

REPO = Path(__file__).resolve().parents[1]


def random_image(seed: int, size: tuple[int, int] = (80, 100)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------- cache


def test_every_model_is_built_labelled_and_reused_without_rebuilding(tiny_models: dict[str, Path]) -> None:
    assert set(tiny_models) == set(TINY_MODEL_NAMES)
    stamps = {}
    for name, folder in tiny_models.items():
        manifest = read_manifest(folder)
        assert manifest["name"] == name and "RANDOM" in manifest["notice"] and manifest["load"]
        stamps[name] = (folder / "grainclip-tiny.json").stat().st_mtime_ns
    again = [ensure_tiny_model(name, folder.parent) for name, folder in tiny_models.items()]
    assert [build.built for build in again] == [False] * len(again)
    assert {name: (folder / "grainclip-tiny.json").stat().st_mtime_ns for name, folder in tiny_models.items()} == stamps


def test_half_written_or_outdated_folders_are_rebuilt(tmp_path: Path) -> None:
    first = ensure_tiny_model("owlv2", tmp_path)
    assert first.built
    (first.path / "grainclip-tiny.json").unlink()  # as if a build died before finishing
    (tmp_path / ".owlv2.building-crashed").mkdir()
    assert ensure_tiny_model("owlv2", tmp_path).built
    assert not (tmp_path / ".owlv2.building-crashed").exists()
    manifest = read_manifest(first.path)
    manifest["recipe"] = -1
    (first.path / "grainclip-tiny.json").write_text(json.dumps(manifest))
    assert ensure_tiny_model("owlv2", tmp_path).built
    assert not ensure_tiny_model("owlv2", tmp_path).built
    with pytest.raises(ValueError, match="unknown tiny model"):
        build_tiny_models(tmp_path, ["owlv2", "gpt-5"])


@pytest.mark.parametrize("name", ["llm", "vlm", "grounding-dino", "owlv2", "clip"])
def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path, name: str) -> None:
    from safetensors.torch import load_file

    def weights(folder: Path, seed: int) -> dict:
        path = build_tiny_models(tmp_path / folder, [name], seed=seed)[name]
        (file,) = [p for p in path.glob("*.safetensors")]
        return load_file(file)

    a, b, c = weights(Path("a"), 0), weights(Path("b"), 0), weights(Path("c"), 1)
    assert a.keys() == b.keys() == c.keys()
    assert all(a[key].equal(b[key]) for key in a)
    assert not all(a[key].equal(c[key]) for key in a)


def test_cli_builds_the_chosen_models_and_rejects_unknown_names(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from grainclip.cli import app

    result = CliRunner().invoke(app, ["tiny-models", "--out", str(tmp_path), "--only", "owlv2,clip"])
    assert result.exit_code == 0, result.output
    assert "owlv2" in result.output and "clip" in result.output and "built" in result.output
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["clip", "owlv2"]
    result = CliRunner().invoke(app, ["tiny-models", "--out", str(tmp_path), "--only", "owlv2,nope"])
    assert result.exit_code == 2 and "nope" in result.output


def test_importing_grainclip_testing_loads_no_model_library() -> None:
    code = (
        "import sys, grainclip.testing; "
        "print([m for m in ('torch', 'transformers', 'open_clip', 'vllm', 'ray') if m in sys.modules])"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------------------- detectors


def test_grounding_dino_detects_and_post_processes(tiny_models: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["grounding-dino"])
    model = AutoModelForZeroShotObjectDetection.from_pretrained(tiny_models["grounding-dino"]).eval()
    inputs = processor(images=random_image(0), text=[["red crest", "blue tail"]], return_tensors="pt")
    ids = inputs["input_ids"][0].tolist()
    assert ids[0] == 101 and ids[-1] == 102 and ids.count(1012) == 2  # bert-base-uncased ids: phrases split at "."
    with torch.no_grad():
        outputs = model(**inputs)
    (result,) = processor.post_process_grounded_object_detection(
        outputs, input_ids=inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[(80, 100)]
    )
    assert result["boxes"].shape == (20, 4) and result["scores"].shape == (20,)
    boxes = result["boxes"]
    assert torch.isfinite(boxes).all() and (boxes[:, 2:] >= boxes[:, :2]).all()
    assert all("red crest" in label for label in result["text_labels"])


def test_owlv2_detects_and_post_processes(tiny_models: dict[str, Path]) -> None:
    import torch
    from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["owlv2"])
    model = AutoModelForZeroShotObjectDetection.from_pretrained(tiny_models["owlv2"]).eval()
    queries = [["red crest", "blue tail"]]
    inputs = processor(images=random_image(0), text=queries, return_tensors="pt")
    assert (inputs["input_ids"][:, 0] > 0).all()  # OWLv2 drops queries whose first id is 0
    with torch.no_grad():
        outputs = model(**inputs)
    (result,) = processor.post_process_grounded_object_detection(
        outputs, threshold=0.0, target_sizes=[(80, 100)], text_labels=queries
    )
    assert result["boxes"].shape == (16, 4)  # one box per 16-px patch of a 64-px image
    assert set(result["text_labels"]) <= {"red crest", "blue tail"}
    assert torch.isfinite(result["boxes"]).all() and ((result["scores"] >= 0) & (result["scores"] <= 1)).all()


# ---------------------------------------------------------------------------------------------- groundingdino-py


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_groundingdino_py_predicts_in_its_own_ray_environment(tiny_models: dict[str, Path], local_ray) -> None:
    import ray

    from grainclip.envs import groundingdino_local_runtime_env

    def groundingdino_predict(folder: str, image: np.ndarray, caption: str) -> dict:
        """Runs in the groundingdino env (defined here so Ray ships it by value): load_model + predict."""
        import torch
        import transformers
        from groundingdino.util.inference import load_model, predict

        model = load_model(f"{folder}/config.py", f"{folder}/checkpoint.pth", device="cpu")
        mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
        tensor = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - mean) / std
        boxes, scores, phrases = predict(model, tensor, caption, box_threshold=0.0, text_threshold=0.0, device="cpu")
        return {"boxes": boxes.tolist(), "phrases": phrases, "transformers": transformers.__version__}

    runtime_env = groundingdino_local_runtime_env(default_cache_dir() / "envs")
    task = ray.remote(num_cpus=1, runtime_env=runtime_env)(groundingdino_predict)
    image = np.asarray(random_image(0, size=(64, 96)))
    result = ray.get(task.remote(str(tiny_models["groundingdino-py"]), image, "red crest . blue tail"))
    assert result["transformers"].startswith("4.")
    boxes = np.array(result["boxes"])
    assert boxes.shape == (20, 4) and np.isfinite(boxes).all()  # all 20 queries pass threshold 0
    assert ((boxes >= 0) & (boxes <= 1)).all()  # normalised cxcywh
    caption_tokens = {"[CLS]", "red", "crest", "blue", "tail", "[SEP]"}  # text_threshold 0 keeps every token
    assert all(set(phrase.split()) <= caption_tokens for phrase in result["phrases"])


def test_groundingdino_pins_match_the_pyproject_extra() -> None:
    from grainclip.envs import GROUNDINGDINO_PIP, groundingdino_runtime_env

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert list(GROUNDINGDINO_PIP) == extras["groundingdino"]
    assert groundingdino_runtime_env() == {"pip": list(GROUNDINGDINO_PIP)}


# ---------------------------------------------------------------------------------------------- open_clip


def test_open_clip_builds_the_tiny_config_and_loads_its_weights(tiny_models: dict[str, Path]) -> None:
    import open_clip
    import torch
    from safetensors.torch import load_file

    folder = tiny_models["clip"]
    fresh = open_clip.create_model(tiny_clip_name(folder))
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    saved = load_file(folder / "open_clip_model.safetensors")
    assert all(saved[key].equal(value) for key, value in model.state_dict().items())
    assert fresh.state_dict().keys() == model.state_dict().keys()

    model.eval()
    with torch.no_grad():
        image = model.encode_image(preprocess(random_image(0)).unsqueeze(0), normalize=True)
        text = model.encode_text(tokenizer(["a red crest", "a blue tail"]), normalize=True)
    assert image.shape == (1, 32) and text.shape == (2, 32)
    assert tokenizer(["x"]).shape == (1, 16)
    assert torch.allclose(image.norm(dim=-1), torch.ones(1)) and not torch.allclose(text[0], text[1])
