"""grainclip.pipelines: the Ray Data annotation DAG, local run / cluster submit, resume and run reports.

    from grainclip.pipelines import run_pipeline
    result = run_pipeline(load_config("pipelines/configs/quickstart.yaml", PipelineConfig))

The names below load on first use, so `grainclip --help` (which imports this package's cli) stays light.
"""

from grainclip.lazy import lazy_exports

_EXPORTS = {
    "grainclip.pipelines.runner": ("run_pipeline", "RunResult", "PipelineError", "ErrorFractionExceeded"),
}
__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)
