"""Shared fixtures. Tiny offline models and a small PartsWorld set are built once per test session.

Tiny models are cached under $GRAINCLIP_CACHE (default: <repo>/.cache) so a second run reuses them; a fresh
clone builds them from seeds, without network.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, Path]:
    """name -> folder of each tiny offline model (llm, vlm, grounding-dino, owlv2, groundingdino-py, clip)."""
    from grainclip.testing import build_tiny_models, default_cache_dir

    return build_tiny_models(default_cache_dir() / "tiny-models")


@pytest.fixture(scope="session")
def partsworld_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small PartsWorld dataset (64 train images, 64 px), shared read-only by all tests."""
    from grainclip.partsworld import generate

    out = tmp_path_factory.mktemp("partsworld")
    generate(out, n=64, n_test=32, seed=0, image_size=64)
    return out


@dataclass(frozen=True)
class CliRun:
    """A finished `grainclip` command run in its own process: the folder it worked in, and how it ended."""

    folder: Path
    returncode: int
    stderr: str

    @property
    def output(self) -> Path:
        return self.folder / "out"


@pytest.fixture(scope="session")
def tiny_vllm_run(partsworld_small: Path, tiny_models: dict[str, Path], tmp_path_factory) -> CliRun:
    """`grainclip pipeline run` of the tiny text-only vLLM describer on partsworld_small, in its own process with
    its own embedded Ray, the default engine config and no environment variable set by the test (so the describer
    sizes its own KV cache from the machine), and the simulated grounder. An engine start costs 30-60 s on 2 cores:
    one run serves the first-contact case that checks its records and the two-describer comparison."""
    import yaml

    folder = tmp_path_factory.mktemp("tiny-vllm-run")
    config = {
        "output": str(folder / "out"),
        "source": {"kind": "partsworld", "path": str(partsworld_small)},
        "describe": {
            "describer": {
                "name": "vllm",
                "model": str(tiny_models["llm"]),
                "max_descriptions": 3,
                "max_description_chars": 20,
                "max_caption_chars": 40,  # schema-bounded answers finish well inside max_tokens
                "sampling": {"max_tokens": 160},
            },
            "num_cpus": 0.5,
            "batch_size": 64,
        },
        "ground": {"num_cpus": 0.25},
        "sink": {"rows_per_shard": 16},
        "max_error_fraction": 1.0,  # random weights: a describe failure is a row with a status, not a failed run
    }
    (folder / "pipeline.yaml").write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "grainclip.cli", "pipeline", "run", str(folder / "pipeline.yaml")],
        capture_output=True,
        text=True,
        timeout=900,
    )
    return CliRun(folder, done.returncode, done.stderr)


@dataclass(frozen=True)
class S3:
    """A running loopback S3 server with one bucket; the AWS variables point at it while tests run."""

    endpoint: str
    bucket: str

    def uri(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """`moto_server` on loopback (one per session) with bucket `grainclip-test`; the AWS_* variables are set to it
    (dummy keys) for the rest of the session and restored after. Ray started later inherits them."""
    from grainclip.testing.s3 import TEST_ENV, create_bucket, moto_server

    with moto_server() as endpoint:
        env = {**TEST_ENV, "AWS_ENDPOINT_URL": endpoint}
        saved = {key: os.environ.get(key) for key in env}
        os.environ.update(env)
        try:
            create_bucket(endpoint, "grainclip-test")
            yield S3(endpoint, "grainclip-test")
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices on 2 shared cores: one intra-op thread is several times faster than two spinning ones."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def two_image_targets() -> dict:
    """Loss targets for two images: one box in the first, two in the second; description ids 5 and 6."""
    import torch

    return {
        "caption_ids": torch.tensor([1, 2]),
        "boxes": torch.tensor([[[0.1, 0.1, 0.5, 0.5], [0, 0, 0, 0]], [[0.2, 0.3, 0.9, 0.8], [0.0, 0.0, 0.3, 0.3]]]),
        "box_mask": torch.tensor([[True, False], [True, True]]),
        "description_ids": torch.tensor([[5, 0], [6, 5]]),
        "unique_description_ids": torch.tensor([5, 6]),
    }
