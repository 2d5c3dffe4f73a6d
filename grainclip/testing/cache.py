"""Where the offline test assets (tiny models, layered environments) are cached between sessions."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """$GRAINCLIP_CACHE, else <repo root>/.cache for a source checkout, else ~/.cache/grainclip."""
    if os.environ.get("GRAINCLIP_CACHE"):
        return Path(os.environ["GRAINCLIP_CACHE"])
    repo = Path(__file__).resolve().parents[2]
    if (repo / "pyproject.toml").is_file():
        return repo / ".cache"
    return Path.home() / ".cache" / "grainclip"
