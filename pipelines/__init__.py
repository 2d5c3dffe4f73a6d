"""grainclip.pipelines: the Ray Data annotation DAG, local run / cluster submit, resume and run reports.

    from grainclip.pipelines import run_pipeline
    result = run_pipeline(load_config("pipelines/configs/quickstart.yaml", PipelineConfig))

The names below load on first use, so `grainclip --help` (which imports this package's cli) stays light.
"""

from __future__ import annotations

from typing import Any

_RUNNER_NAMES = ("run_pipeline", "RunResult", "PipelineError", "ErrorFractionExceeded")

__all__ = list(_RUNNER_NAMES)


def __getattr__(name: str) -> Any:
    if name in _RUNNER_NAMES:
        from grainclip.pipelines import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'grainclip.pipelines' has no attribute {name!r}")
