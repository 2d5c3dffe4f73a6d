"""grainclip.devices: the one device resolver and bf16 autocast rule that annotate, train and evaluate share."""

from __future__ import annotations

import pytest
import torch

from grainclip.config.base import ConfigError
from grainclip.devices import autocast, autocast_dtype, resolve_device


def test_auto_is_cuda_only_when_torch_sees_a_gpu_and_names_become_devices():
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    assert isinstance(resolve_device("cpu"), torch.device)


def test_bad_device_strings_are_config_errors():
    with pytest.raises(ConfigError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:1")


def test_bf16_when_asked_or_by_default_on_cuda_never_by_default_on_cpu():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype(cpu, "auto") is None and autocast_dtype(cpu, "fp32") is None
    assert autocast_dtype(cpu, "bf16") is torch.bfloat16
    assert autocast_dtype(cuda, "auto") is torch.bfloat16 and autocast_dtype(cuda, "fp32") is None
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "auto"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
