"""Each tiny offline model really runs in the library that consumes it; builds are cached and deterministic.

The vLLM checks run in a child process (this file is also a script, see the bottom): an in-process vLLM engine
rebinds torch threads and initialises torch.distributed, which must not leak into other tests.
"""

from __future__ import annotations

import json
import os
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
VLLM_PROMPT = "Describe a red crest and blue wings."
VLM_PROMPT = "Write a caption and descriptions."


def random_image(seed: int, size: tuple[int, int] = (80, 100)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8))


def vlm_messages(image_part: dict) -> list[dict]:
    """One user turn with an image and text (the image part is spelled differently by vLLM and transformers)."""
    return [{"role": "user", "content": [image_part, {"type": "text", "text": VLM_PROMPT}]}]


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


# ---------------------------------------------------------------------------------------------- LLM / VLM


@pytest.fixture(scope="module")
def vllm_outputs(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Greedy generations with top-5 log-probs from one vLLM engine per model, run in a child process."""
    work = tmp_path_factory.mktemp("vllm")
    images = []
    for seed in (0, 1):
        random_image(seed).save(work / f"image{seed}.png")
        images.append(str(work / f"image{seed}.png"))
    out = work / "outputs.json"
    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    command = [sys.executable, __file__, str(tiny_models["llm"]), str(tiny_models["vlm"]), *images, str(out)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


def assert_logprobs_agree(vllm_step: dict[str, float], hf_logits) -> None:
    """vLLM's top-5 log-probs at one step equal transformers' log-softmax there (same greedy token too)."""
    hf = hf_logits.float().log_softmax(-1)
    for token, logprob in vllm_step.items():
        assert hf[int(token)].item() == pytest.approx(logprob, abs=1e-3)
    assert int(max(vllm_step, key=vllm_step.get)) == int(hf.argmax())


@pytest.mark.slow
def test_llm_generates_in_transformers_and_vllm_alike(tiny_models: dict[str, Path], vllm_outputs: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llm"])
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llm"])
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": VLLM_PROMPT}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    generated = model.generate(**chat, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, chat["input_ids"].shape[1] + 4)

    result = vllm_outputs["llm"]
    assert result["prompt_token_ids"] == chat["input_ids"][0].tolist()  # same chat template and tokenizer
    assert len(result["token_ids"]) == 4
    with torch.no_grad():
        logits = model(**chat).logits[0, -1]
    assert_logprobs_agree(result["first_step_logprobs"], logits)


@pytest.mark.slow
def test_vlm_generates_in_transformers_and_vllm_alike_and_sees_the_image(
    tiny_models: dict[str, Path], vllm_outputs: dict
) -> None:
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_models["vlm"])
    model = AutoModelForImageTextToText.from_pretrained(tiny_models["vlm"])
    for seed, result in zip((0, 1), vllm_outputs["vlm"], strict=True):
        messages = vlm_messages({"type": "image", "image": random_image(seed)})
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        image_token = model.config.image_token_id
        assert (inputs["input_ids"] == image_token).sum() == 16
        generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        assert generated.shape[1] == inputs["input_ids"].shape[1] + 4
        assert result["prompt_token_ids"] == inputs["input_ids"][0].tolist()
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        assert_logprobs_agree(result["first_step_logprobs"], logits)
    first, second = (result["first_step_logprobs"] for result in vllm_outputs["vlm"])
    assert first != second  # the image reaches the language model


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


# ---------------------------------------------------------------------------------------------- vLLM child


def run_vllm(llm_dir: str, vlm_dir: str, image_paths: list[str], out: str) -> None:
    """Greedy 4 tokens with top-5 log-probs from each model, one engine at a time (child process only)."""
    import gc

    from vllm import LLM, SamplingParams

    engine_args = dict(
        dtype="float32", enforce_eager=True, max_model_len=256, seed=0, distributed_executor_backend="uni"
    )
    sampling = SamplingParams(max_tokens=4, temperature=0.0, logprobs=5)

    def summary(output) -> dict:
        first = output.outputs[0].logprobs[0]
        return {
            "prompt_token_ids": list(output.prompt_token_ids),
            "token_ids": list(output.outputs[0].token_ids),
            "first_step_logprobs": {str(token): item.logprob for token, item in first.items()},
        }

    llm = LLM(llm_dir, **engine_args)
    (text_output,) = llm.chat([{"role": "user", "content": VLLM_PROMPT}], sampling)
    del llm
    gc.collect()
    vlm = LLM(vlm_dir, limit_mm_per_prompt={"image": 1}, **engine_args)
    images = [Image.open(path).convert("RGB") for path in image_paths]
    conversations = [vlm_messages({"type": "image_pil", "image_pil": image}) for image in images]
    image_outputs = vlm.chat(conversations, sampling)
    result = {"llm": summary(text_output), "vlm": [summary(output) for output in image_outputs]}
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":  # vLLM spawns helpers that re-import the main module: keep engine creation here
    run_vllm(sys.argv[1], sys.argv[2], sys.argv[3:-1], sys.argv[-1])
