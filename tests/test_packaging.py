"""Packaging: the sub-package mapping a wheel needs, and the CLI. Dependency direction is test_architecture.py."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAPPING = {
    "grainclip": "grainclip",
    "grainclip.annotate": "annotate",
    "grainclip.pipelines": "pipelines",
    "grainclip.train": "train",
    "grainclip.evaluate": "evaluate",
}


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == MAPPING
    on_disk = set()
    for package, folder in MAPPING.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).parts
            on_disk.add(".".join((package, *relative)))
    assert set(config["packages"]) == on_disk


def test_cli_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "grainclip.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("synth", "show", "tiny-models", "quickstart", "train", "evaluate", "pipeline", "config"):
        assert command in result.stdout
