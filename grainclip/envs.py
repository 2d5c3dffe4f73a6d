"""Per-stage Python environments for components whose pins clash with the main environment.

groundingdino-py 0.4.0 breaks with transformers 5.x (it calls BertModel.get_extended_attention_mask the old
way) while vLLM needs transformers 5, so anything that imports `groundingdino` runs in a Ray task or actor
with its own environment layered over the main one (reusing its torch and torchvision). Two ways to get it:

- `groundingdino_runtime_env()`: Ray's `pip` runtime_env, portable to any cluster. When the driver runs from
  a virtualenv (as on a dev machine), Ray copies that whole virtualenv per Ray session before installing
  (measured: ~50 s and ~7.6 GB under /tmp/ray for this project's CPU venv), then pip takes ~40 s more.
- `groundingdino_local_runtime_env(root)`: a virtualenv built once under `root` that sees the running
  environment's packages through a .pth file and installs only the pins on top (~1 minute once, ~350 MB),
  used through Ray's `py_executable`. For a single machine (tests, local runs); the path must exist on
  every node that runs the stage.

GROUNDINGDINO_PIP is the one list; the pyproject `groundingdino` extra mirrors it (a test checks). pip pulls
groundingdino-py's own requirements with it (addict, yapf, pycocotools, opencv-python, supervision==0.6.0,
and transformers 4.57's tokenizers/huggingface-hub); torch, torchvision, timm and numpy come from the main env.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import sys
import sysconfig
import venv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from filelock import FileLock

log = logging.getLogger(__name__)

GROUNDINGDINO_PIP: tuple[str, ...] = ("groundingdino-py==0.4.0", "transformers==4.57.6")

ENV_STAMP = ".grainclip-env.json"


def groundingdino_runtime_env() -> dict[str, Any]:
    """Ray runtime_env for a groundingdino task or actor on any cluster (Ray builds it per session)."""
    return {"pip": list(GROUNDINGDINO_PIP)}


def groundingdino_local_runtime_env(root: Path) -> dict[str, Any]:
    """Ray runtime_env running the worker in the layered groundingdino env under `root` (built on first use)."""
    return {"py_executable": str(layered_env(root, "groundingdino", GROUNDINGDINO_PIP))}


def layered_env(root: Path, name: str, packages: Sequence[str]) -> Path:
    """Python executable of a virtualenv that sees this environment's packages with `packages` on top.

    Lives in `root/<name>-<hash of packages and base env>`; built once (safe with concurrent callers: a file
    lock, and a stamp written last marks it complete), then reused.
    """
    base_paths = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    key = json.dumps({"packages": list(packages), "base": base_paths, "python": sys.version}, sort_keys=True)
    env_dir = Path(root) / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    python = env_dir / "bin" / "python"
    if (env_dir / ENV_STAMP).exists():
        return python
    env_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{env_dir}.lock"):
        if (env_dir / ENV_STAMP).exists():
            return python
        log.info("building the %s environment in %s (once; about a minute)", name, env_dir)
        shutil.rmtree(env_dir, ignore_errors=True)
        venv.EnvBuilder(with_pip=True).create(env_dir)
        own_site = subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        # addsitedir (not a plain path line) so the base env's own .pth files run too, e.g. editable installs.
        lines = [f"import site; site.addsitedir({path!r})" for path in base_paths]
        (Path(own_site) / "zz_grainclip_base_env.pth").write_text("\n".join(lines) + "\n")
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--disable-pip-version-check", "-q", *packages],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(f"pip install {' '.join(packages)} failed in {env_dir}:\n{result.stderr[-4000:]}")
        (env_dir / ENV_STAMP).write_text(json.dumps({"packages": list(packages), "base": base_paths}, indent=2))
    return python
