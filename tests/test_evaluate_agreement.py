"""Agreement: the evaluator's `global` mode on a plain tiny open_clip model equals a straightforward CLIP
zero-shot computation (encode, normalise, argmax) on the same images, image by image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from grainclip.config.evaluate import EvalDataset
from grainclip.evaluate import load_split
from grainclip.evaluate.class_text import DEFAULT_TEMPLATES
from grainclip.evaluate.models import load_open_clip
from grainclip.evaluate.runner import PassSettings, SplitPass

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CLASSES = {"cat": (200, 120, 60), "sky": (90, 140, 230), "grass": (60, 170, 70), "snow": (235, 235, 240)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("agreement")
    config = root / "agreement-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    rng = np.random.default_rng(0)
    for name, colour in CLASSES.items():
        (root / "images" / name).mkdir(parents=True)
        for i in range(6):
            size = (int(rng.integers(24, 80)), int(rng.integers(24, 80)))  # non-square: the centre crop matters
            pixels = np.clip(np.array(colour) + rng.normal(0, 60, size=(size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / "images" / name / f"{i}.jpg")
    return root, config


def straightforward_scores(root, config) -> tuple[np.ndarray, np.ndarray]:
    """CLIP zero-shot the plain way: every file, the model's transform, prompts averaged, cosine, no evaluator code."""
    import open_clip

    open_clip.add_model_config(config)
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(config.stem)
    tokenizer = open_clip.get_tokenizer(config.stem)
    model.eval()
    classes = sorted(p.name for p in (root / "images").iterdir())
    with torch.no_grad():
        text = []
        for name in classes:
            prompts = F.normalize(model.encode_text(tokenizer([t.format(name) for t in DEFAULT_TEMPLATES])), dim=-1)
            text.append(F.normalize(prompts.mean(0), dim=0))
        text = torch.stack(text)
        files = [
            (path, label) for label, name in enumerate(classes) for path in sorted((root / "images" / name).iterdir())
        ]
        images = torch.stack([preprocess(Image.open(path).convert("RGB")) for path, _ in files])
        scores = F.normalize(model.encode_image(images), dim=-1) @ text.T
    return scores.numpy(), np.array([label for _, label in files])


def test_global_mode_agrees_with_a_straightforward_loop(setup):
    root, config = setup
    expected_scores, labels = straightforward_scores(root, config)
    expected_predictions = expected_scores.argmax(1)
    assert len(set(expected_predictions)) > 1, "test data should not make the random model predict one class"

    spec = EvalDataset(name="colours", source={"kind": "image_folder", "path": root / "images"})
    torch.manual_seed(0)  # the same random weights as the straightforward model
    loaded = load_open_clip(str(config), None, torch.device("cpu"))
    settings = PassSettings(modes=["global"], batch_size=5, num_workers=2)  # batches and workers must not matter
    evaluation = SplitPass(loaded, load_split(spec), ["classification"], settings, torch.device("cpu"))
    evaluation.run()
    results = evaluation.results()

    np.testing.assert_array_equal(evaluation.classification.labels, labels)
    np.testing.assert_allclose(evaluation.classification.scores["global"], expected_scores, atol=1e-5)
    assert (evaluation.classification.scores["global"].argmax(1) == expected_predictions).all()
    assert results["classification"][0]["top1"] == pytest.approx(float((expected_predictions == labels).mean()))
    assert results["n_evaluated"] == len(labels) and results["skipped_images"]["count"] == 0
