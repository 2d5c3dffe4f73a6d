"""Build the tiny offline models once, from fixed seeds, and reuse them from a cache folder.

A model folder is complete when its `grainclip-tiny.json` manifest exists and matches the current recipe,
seed and location; anything else is rebuilt. Each build writes into a temporary sibling folder that is
renamed into place at the end, under a per-model file lock, so concurrent test sessions sharing one cache
neither see half-written folders nor build the same model twice.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from filelock import FileLock

from grainclip.testing.cache import default_cache_dir
from grainclip.testing.clip import build_clip
from grainclip.testing.detectors import build_grounding_dino, build_owlv2
from grainclip.testing.groundingdino_py import build_groundingdino_py
from grainclip.testing.language import build_llm, build_vlm

log = logging.getLogger(__name__)

SEED = 0
MANIFEST_FILE = "grainclip-tiny.json"
NOTICE = "TINY RANDOM MODEL for offline tests and smoke runs: not trained, its outputs mean nothing."

# (staging folder to write into, seed, final folder it will be renamed to) -> None
Builder = Callable[[Path, int, Path], None]


@dataclass(frozen=True)
class TinyModelSpec:
    name: str
    build: Builder
    kind: str
    load: str
    recipe: int = 1  # bump when the builder changes so cached folders are rebuilt
    notes: str = ""


SPECS: dict[str, TinyModelSpec] = {
    spec.name: spec
    for spec in (
        TinyModelSpec(
            "llm",
            build_llm,
            kind="Llama chat LLM, 2 layers, hidden 128, head_dim 64, byte-level BPE tokenizer trained locally",
            load="vllm.LLM(dir, dtype='float32', enforce_eager=True, max_model_len=256) or "
            "transformers AutoModelForCausalLM / AutoTokenizer.from_pretrained(dir)",
        ),
        TinyModelSpec(
            "vlm",
            build_vlm,
            kind="LLaVA: 2-layer CLIP vision tower (64 px, patch 16 -> 16 image tokens) + the tiny Llama",
            load="vllm.LLM(dir, dtype='float32', enforce_eager=True, max_model_len=256, "
            "limit_mm_per_prompt={'image': 1}) or transformers AutoModelForImageTextToText / AutoProcessor",
            notes="vision weights are stored as vision_tower.vision_model.* (vLLM's layout; transformers maps it)",
        ),
        TinyModelSpec(
            "grounding-dino",
            build_grounding_dino,
            kind="transformers GroundingDinoForObjectDetection: Swin embed 16, BERT hidden 32, d_model 64, 20 queries",
            load="transformers AutoModelForZeroShotObjectDetection / AutoProcessor.from_pretrained(dir)",
            notes="BERT vocabulary keeps bert-base-uncased ids for [CLS] [SEP] . ? (phrase splitting uses them)",
        ),
        TinyModelSpec(
            "owlv2",
            build_owlv2,
            kind="transformers Owlv2ForObjectDetection: width 32, 2 layers, 64-px images, patch 16",
            load="transformers AutoModelForZeroShotObjectDetection / AutoProcessor.from_pretrained(dir)",
            notes="text queries are padded to 16 tokens; BOS id > 0 so queries are not masked out",
        ),
        TinyModelSpec(
            "groundingdino-py",
            build_groundingdino_py,
            kind="groundingdino-py 0.4.0 config + checkpoint (Swin-T, 1 enc / 2 dec layers, 20 queries) + tiny BERT",
            load="in the groundingdino env (grainclip.envs): groundingdino.util.inference.load_model("
            "dir/config.py, dir/checkpoint.pth, device='cpu')",
            notes="built with transformers 4.57.6; text_encoder_type names dir/bert by absolute path; "
            "20 queries so inputs of 64 px and up work (the stock 900 need >= 256 px)",
        ),
        TinyModelSpec(
            "clip",
            build_clip,
            kind="open_clip config: embed 32, ViT width 64 x 2 layers (64 px, patch 16), text width 32 x 2 layers",
            load="open_clip.create_model(grainclip.testing.tiny_clip_name(dir)) (random init) or "
            "open_clip.create_model_and_transforms('local-dir:' + dir) (seeded weights)",
        ),
    )
}
TINY_MODEL_NAMES: tuple[str, ...] = tuple(SPECS)


@dataclass(frozen=True)
class TinyModelBuild:
    name: str
    path: Path
    built: bool  # False when the cached folder was reused
    seconds: float


def default_tiny_models_dir() -> Path:
    return default_cache_dir() / "tiny-models"


def build_tiny_models(out_dir: Path, names: Iterable[str] | None = None, seed: int = SEED) -> dict[str, Path]:
    """name -> folder of each requested tiny model (all by default), building only what is missing."""
    return {build.name: build.path for build in (ensure_tiny_model(n, out_dir, seed) for n in _checked(names))}


def ensure_tiny_model(name: str, out_dir: Path, seed: int = SEED) -> TinyModelBuild:
    spec = SPECS[_checked([name])[0]]
    out_dir = Path(out_dir).resolve()
    target = out_dir / name
    started = time.perf_counter()
    if _is_complete(target, spec, seed):
        return TinyModelBuild(name, target, built=False, seconds=time.perf_counter() - started)
    out_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir / f".{name}.lock")):
        if _is_complete(target, spec, seed):  # another process built it while we waited
            return TinyModelBuild(name, target, built=False, seconds=time.perf_counter() - started)
        for leftover in out_dir.glob(f".{name}.building-*"):  # from builds that crashed
            shutil.rmtree(leftover, ignore_errors=True)
        log.info("building tiny model %s in %s", name, target)
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.building-", dir=out_dir))
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is shared
        try:
            spec.build(staging, seed, target)
            _write_manifest(staging, spec, seed, target)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    seconds = time.perf_counter() - started
    log.info("built tiny model %s in %.1f s", name, seconds)
    return TinyModelBuild(name, target, built=True, seconds=seconds)


def read_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / MANIFEST_FILE).read_text())


def _checked(names: Iterable[str] | None) -> list[str]:
    chosen = list(TINY_MODEL_NAMES if names is None else names)
    unknown = [name for name in chosen if name not in SPECS]
    if unknown:
        raise ValueError(f"unknown tiny model(s) {', '.join(unknown)}; choose from {', '.join(TINY_MODEL_NAMES)}")
    return chosen


def _is_complete(folder: Path, spec: TinyModelSpec, seed: int) -> bool:
    try:
        manifest = read_manifest(folder)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    return (manifest.get("recipe"), manifest.get("seed"), manifest.get("location")) == (
        spec.recipe,
        seed,
        str(folder),
    )


def _write_manifest(staging: Path, spec: TinyModelSpec, seed: int, final: Path) -> None:
    manifest = {
        "name": spec.name,
        "notice": NOTICE,
        "kind": spec.kind,
        "load": spec.load,
        "notes": spec.notes,
        "seed": seed,
        "recipe": spec.recipe,
        "location": str(final),
        "built_with": {pkg: _version(pkg) for pkg in ("grainclip", "torch", "transformers", "open_clip_torch")},
    }
    (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None
