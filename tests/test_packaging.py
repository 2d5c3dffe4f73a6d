"""Packaging and dependency direction: sub-package mapping, light imports for annotation nodes, CLI."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAPPING = {"grainclip": "grainclip", "grainclip.annotate": "annotate", "grainclip.pipelines": "pipelines",
           "grainclip.train": "train", "grainclip.evaluate": "evaluate"}


def test_every_package_folder_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == MAPPING
    on_disk = set()
    for package, folder in MAPPING.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).parts
            on_disk.add(".".join((package, *relative)))
    assert set(config["packages"]) == on_disk


def test_annotation_packages_import_without_the_training_stack():
    code = (
        "import sys, grainclip.annotate, grainclip.pipelines, grainclip.cli\n"
        "heavy = [m for m in ('torchvision', 'open_clip', 'torch') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy = result.stdout.strip().split(",") if result.stdout.strip() else []
    assert "torchvision" not in heavy and "open_clip" not in heavy, heavy


def test_cli_lists_every_command():
    result = subprocess.run([sys.executable, "-m", "grainclip.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("synth", "show", "tiny-models", "quickstart", "train", "evaluate", "pipeline"):
        assert command in result.stdout
