"""Trainer killed in the middle of writing a checkpoint (issue 8 fault drill).

A subprocess trains with a checkpoint every 2 steps; on the second checkpoint its torch.save writes half of
trainer_state.pt and the process SIGKILLs itself (no finally blocks, no cleanup: what a kill or power loss
does). The previous checkpoint must stay the `latest`, load completely (weights through safetensors, state
with weights_only=True), and a resume from it must finish the run and clear the half-written folder.

Already covered elsewhere: a SIGKILL between checkpoints and exact resume (test_train_loop.py), the bad-input
corpus through the trainer (test_train_loop.py / test_train_data.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

DYING_TRAINER = r"""
import io, os, signal, sys
import torch
import yaml

real_save = torch.save
calls = []

def dying_save(obj, path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 2:  # the second checkpoint: half a file, then die mid-write
        buffer = io.BytesIO()
        real_save(obj, buffer)
        with open(path, "wb") as f:
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(obj, path, *args, **kwargs)

torch.save = dying_save
torch.set_num_threads(1)
from grainclip.config.train import TrainConfig
from grainclip.train import train

train(TrainConfig.model_validate(yaml.safe_load(open(sys.argv[1]))))
"""


@pytest.mark.slow
def test_a_kill_mid_checkpoint_write_leaves_the_previous_checkpoint_loadable(tiny_models, partsworld_small, tmp_path):
    from grainclip.config.train import TrainConfig
    from grainclip.train import load_model, train
    from grainclip.train.checkpoint import checkpoint_root, find_checkpoint
    from grainclip.train.metrics import read_metrics

    out = tmp_path / "run"
    values = {
        "output_dir": str(out),
        "backbone": {"model": str(tiny_models["clip"])},
        "decoder": {"layers": 1, "d_model": 32, "heads": 2, "ffn_dim": 64, "dropout": 0.0},
        "data": {"train": str(partsworld_small / "train" / "truth"), "num_workers": 0},
        "batch_size": 4, "steps": 6, "checkpoint_every": 2, "log_every": 1,
    }  # fmt: skip
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(values))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    died = subprocess.run([sys.executable, "-c", DYING_TRAINER, str(config)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert died.returncode == -9, died.stderr[-3000:]

    root = checkpoint_root(out)
    half_written = [p for p in root.iterdir() if p.name.startswith(".step_000004.tmp-")]
    assert len(half_written) == 1, sorted(p.name for p in root.iterdir())  # the kill really hit mid-write
    with pytest.raises(Exception):
        torch.load(half_written[0] / "trainer_state.pt", weights_only=True)

    latest = find_checkpoint(out, "latest")
    assert latest.name == "step_000002"
    state = torch.load(latest / "trainer_state.pt", map_location="cpu", weights_only=True)
    assert {"optimizer", "scheduler", "rng"} <= set(state)
    assert load_model(latest).kind == "grain"

    result = train(TrainConfig.model_validate(values), resume="latest")
    assert [m["step"] for m in read_metrics(out)][-1] == 6 and load_model(result.model_dir).kind == "grain"
    assert not [p for p in root.iterdir() if p.name.startswith(".")], sorted(p.name for p in root.iterdir())
