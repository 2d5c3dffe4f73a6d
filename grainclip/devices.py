"""The torch device a config names and the mixed-precision rule, one owner for every package that runs a model.

torch is imported inside the functions, so grainclip core (and `grainclip --help`) stays importable without it.
"""

from __future__ import annotations

import contextlib
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
