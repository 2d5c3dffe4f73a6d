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


def test_default_loader_workers_follow_the_cores_and_the_image_size():
    from grainclip.devices import SMALL_IMAGE_SIDE, loader_workers

    assert [loader_workers(cpus=c, image_size=224) for c in (1, 2)] == [0, 0]  # torch's threads have every core
    assert [loader_workers(cpus=c, image_size=224) for c in (4, 8, 16, 64)] == [2, 4, 8, 8]
    assert [loader_workers(cpus=c, image_size=SMALL_IMAGE_SIDE - 1) for c in (4, 8, 16, 64)] == [1, 2, 4, 8]
    assert loader_workers(cpus=16) == loader_workers(cpus=16, image_size=SMALL_IMAGE_SIDE)  # unknown: not small


def test_the_trainer_defaults_to_the_same_workers_for_its_resolution(tmp_path, monkeypatch):
    import grainclip.devices
    from grainclip.config.train import DataConfig

    monkeypatch.setattr(grainclip.devices, "available_cpus", lambda: 16)
    data = DataConfig(train=str(tmp_path))
    assert data.num_workers is None and data.workers(224) == 8
    assert data.model_copy(update={"image_size": 64}).workers() == data.workers(64) == 4  # its own resolution
    assert DataConfig(train=str(tmp_path), num_workers=3).workers(224) == 3
