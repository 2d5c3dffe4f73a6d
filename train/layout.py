"""Where a training run puts its exported model, for everyone who looks for it (trainer, pipeline steps,
quickstart, benchmarks). Free of torch and open_clip, so the pipeline can plan and skip steps without the
training stack.

    <output_dir>/model/              the exported model folder (export.py writes it atomically, last)
        grain_model.json             its spec: present only in a complete folder
"""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = "model"
MODEL_CONFIG = "grain_model.json"


def exported_model_dir(output_dir: str | Path) -> Path:
    """The folder `grainclip.train.load_model` reads once the run `output_dir` has finished."""
    return Path(output_dir) / MODEL_DIR


def is_exported(output_dir: str | Path) -> bool:
    """Whether the run `output_dir` has finished exporting its model (a rerun may skip training)."""
    return (exported_model_dir(output_dir) / MODEL_CONFIG).is_file()
