"""The torch device a config names, the mixed-precision rule and the loader workers that fit the machine: one owner
for every package that runs a model.

torch is imported inside the functions, so grainclip core (and `grainclip --help`) stays importable without it.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from grainclip.config.base import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(spec: str) -> torch.device:
    """'auto' is CUDA when torch sees a GPU, else the CPU; anything else is a torch device string ('cuda:1')."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(f"device {spec!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {spec!r} requested but CUDA is not available here")
    return device


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """bf16 when asked for, and by default ('auto') on CUDA; None is plain fp32 (CPU bf16 autocast is slow).

    bf16 has fp32's exponent range, so no loss scaling (GradScaler) is needed with it.
    """
    import torch

    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context of `precision` ('auto' / 'fp32' / 'bf16') on `device`."""
    import torch

    dtype = autocast_dtype(device, precision)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask: a container's or a Ray worker's share), not the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


#: Samples below this side (px) are cheap to decode and resize: with many cores, fewer workers feed them.
SMALL_IMAGE_SIDE = 128


def loader_workers(cpus: int | None = None, image_size: int | None = None) -> int:
    """DataLoader worker processes that fit this machine by default, for samples of `image_size` px (None: unknown).

    The one default of the evaluator's and the trainer's loaders (benchmarks/RESULTS.md, "Default loader workers").
    A worker pays only with a core to itself: on 2 cores, beside torch's two intra-op threads, one worker made the
    evaluator 0.86x a plain loop (1.08x in-process) and a training loop 0.13-0.82x of the in-process one, so up to
    2 cores get none. With more cores, half of them decode and the rest stay with the model's threads (at most 8);
    samples below SMALL_IMAGE_SIDE cost so little to decode and resize that a quarter of the cores keep up, and each
    further worker is one more process to start and feed.
    """
    cpus = cpus or available_cpus()
    if cpus <= 2:
        return 0
    share = 4 if image_size is not None and image_size < SMALL_IMAGE_SIDE else 2
    return min(cpus // share, 8)
