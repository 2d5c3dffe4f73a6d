"""Training metrics to metrics.jsonl (one JSON object per logged step) and TensorBoard, on rank 0 only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.jsonl"


class MetricsLog:
    def __init__(self, output_dir: Path, resumed_step: int = 0) -> None:
        self.path = Path(output_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resumed_step:
            self._drop_after(resumed_step)
        elif self.path.exists():
            self.path.unlink()  # a fresh run starts a fresh log
        self.tensorboard = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(
                str(Path(output_dir) / "tensorboard"), purge_step=resumed_step + 1 if resumed_step else None
            )
        except ImportError:
            log.info("tensorboard is not installed; metrics go to %s only", self.path)

    def _drop_after(self, step: int) -> None:
        """Steps logged after the resumed checkpoint by the interrupted run are replaced by the new ones."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(f"{line}\n" for line in kept))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        if self.tensorboard is not None:
            for key, value in metrics.items():
                self.tensorboard.add_scalar(key, value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_metrics(output_dir: Path) -> list[dict[str, float]]:
    path = Path(output_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []
