"""Training checkpoints: a model folder (export.py layout) plus everything needed to continue exactly.

    <output_dir>/checkpoints/step_000500/
        grain_model.json, grain_heads.safetensors, backbone/    the model, loadable by load_model
        trainer_state.pt     optimizer, LR scheduler and RNG states (tensors and numbers only:
                             read back with torch.load(weights_only=True))
        trainer_state.json   step, data stream position, last metrics

A checkpoint is written into a temporary folder and renamed into place, and `latest` is updated after
that, so a crash at any moment leaves the previous checkpoint loadable. No GradScaler exists to save:
mixed precision is bf16, which needs no loss scaling.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch

from grainclip.config.train import DecoderConfig
from grainclip.train.backbone import Backbone
from grainclip.train.export import load_weights, replace_dir_atomically, write_model_files
from grainclip.train.model import ClipModel

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE_TENSORS = "trainer_state.pt"
STATE_JSON = "trainer_state.json"
STEP_DIR = re.compile(r"^step_(\d+)$")


def checkpoint_root(output_dir: Path) -> Path:
    return Path(output_dir) / CHECKPOINTS


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    output_dir: Path,
    step: int,
    model: ClipModel,
    backbone: Backbone,
    decoder: DecoderConfig,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    data_state: dict[str, Any],
    metrics: dict[str, float],
    name: str,
    keep: int,
) -> Path:
    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step_*.tmp-*"):  # half-written by a killed process (only rank 0 writes here)
        shutil.rmtree(stale, ignore_errors=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".{final.name}.tmp-{uuid.uuid4().hex}"
    try:
        tmp.mkdir()
        write_model_files(model, backbone, decoder, tmp, name)
        torch.save(
            {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state()},
            tmp / STATE_TENSORS,
        )
        (tmp / STATE_JSON).write_text(json.dumps({"step": step, "data": data_state, "metrics": metrics}, indent=2))
        replace_dir_atomically(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    pointer = root / f".{LATEST}.tmp-{uuid.uuid4().hex}"
    pointer.write_text(final.name)
    os.replace(pointer, root / LATEST)
    for old in step_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    log.info("checkpoint %s", final)
    return final


def step_checkpoints(output_dir: Path) -> list[Path]:
    """Complete step checkpoints, oldest first (temporary folders are hidden and never match)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / STATE_JSON).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def find_checkpoint(output_dir: Path, resume: str) -> Path:
    """`latest` -> the newest complete checkpoint of the run; anything else is a checkpoint folder path."""
    if resume != LATEST:
        path = Path(resume)
        if not (path / STATE_JSON).is_file():
            raise FileNotFoundError(f"--resume {resume}: not a training checkpoint folder (no {STATE_JSON})")
        return path
    pointer = checkpoint_root(output_dir) / LATEST
    if pointer.is_file():
        path = pointer.parent / pointer.read_text().strip()
        if (path / STATE_JSON).is_file():
            return path
    found = step_checkpoints(output_dir)
    if not found:
        raise FileNotFoundError(f"--resume latest: no checkpoint under {checkpoint_root(output_dir)}")
    return found[-1]


def load_checkpoint(
    path: Path,
    model: ClipModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG from `path`; returns its trainer_state.json."""
    load_weights(model, path)
    state = torch.load(path / STATE_TENSORS, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return json.loads((path / STATE_JSON).read_text())
