"""The steps after annotation in a whole-flow pipeline: train on the run's annotations, evaluate that model.

Both run on the Ray cluster the annotation ran on, so one `grainclip pipeline run` (or one submitted job) goes
from raw images to a trained and evaluated model:

- train: the step's train YAML with `data.train` set to OUT/annotations and `output_dir` defaulting to
  OUT/train; it goes through Ray Train (`ray_address` is set to the running cluster, which train reuses).
- evaluate: the step's evaluate YAML with the trained model added to its `models` (label `pipeline-<mode>`,
  beside any baselines the YAML lists) and `out` defaulting to OUT/evaluate; it runs as a Ray task with the
  step's CPUs/GPUs, i.e. on a cluster node rather than in the driver.

A step whose output already exists is skipped (the exported model folder for train, results.json for
evaluate): a rerun after a crash redoes only what is missing. Delete a step's output to redo it. The
training stack is imported only when a step actually runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from grainclip import storage
from grainclip.config.base import ConfigError, parse_config, set_dotted
from grainclip.config.pipeline import EvaluateStep, PipelineConfig, TrainStep
from grainclip.pipelines.manifest import RunManifest
from grainclip.pipelines.rundir import RunDir
from grainclip.train.layout import exported_model_dir, is_exported

log = logging.getLogger(__name__)

EVALUATION_RESULTS = "results.json"  # what grainclip.evaluate writes last


def _read_yaml(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"step config file not found: {path}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"step config {path} must be a mapping of keys to values")
    return data


def train_config(step: TrainStep, run: RunDir):
    """The TrainConfig the train step runs: its YAML, pointed at this run's annotations, then the overrides."""
    from grainclip.config.train import TrainConfig

    data = _read_yaml(step.config)
    set_dotted(data, "data.train", str(run.annotations))
    data.setdefault("output_dir", str(storage.join(run.root, "train")))
    for dotted, value in step.overrides.items():
        set_dotted(data, dotted, value)
    _on_a_filesystem("train", "output_dir", data["output_dir"])
    return parse_config(data, TrainConfig, source=step.config)


def _on_a_filesystem(step: str, key: str, value: Any) -> None:
    """Checkpoints and evaluation reports are written as files: refuse an object-storage folder for them."""
    if storage.is_uri(str(value)):
        raise ConfigError(
            f"{step} step: {key} {value} is on object storage, but {step} writes its outputs to a filesystem; "
            f"set `{key}` to a local or shared path in the step's config or overrides"
        )


def evaluate_config(step: EvaluateStep, run: RunDir, model_dir: Path, label: str):
    """The EvaluateConfig the evaluate step runs: its YAML with the trained model added, then the overrides."""
    from grainclip.config.evaluate import EvaluateConfig

    data = _read_yaml(step.config)
    data["models"] = [{"label": label, "type": "checkpoint", "path": str(model_dir)}, *(data.get("models") or [])]
    data.setdefault("out", str(storage.join(run.root, "evaluate")))
    for dotted, value in step.overrides.items():
        set_dotted(data, dotted, value)
    _on_a_filesystem("evaluate", "out", data["out"])
    return parse_config(data, EvaluateConfig, source=step.config)


@dataclass
class StepPlan:
    """The step configs a pipeline will run, parsed up front so a mistake fails before hours of annotation."""

    train: Any  # grainclip.config.train.TrainConfig
    evaluate: Any | None  # grainclip.config.evaluate.EvaluateConfig
    evaluate_step: EvaluateStep | None

    @property
    def model_dir(self) -> Path:
        return exported_model_dir(self.train.output_dir)

    @property
    def min_cpus(self) -> int:
        """Logical CPUs Ray Train needs: one per worker plus its data actors and read tasks (as in
        grainclip.train.ray_train, which asks for the same when it starts Ray itself)."""
        return self.train.workers + max(self.train.data.workers(), 1) + 1


def import_training_stack() -> None:
    """Import torch and the trainer before Ray connects, when a run has steps.

    Measured (torch 2.14.1, Ray 2.60): in a Ray Job on a multi-node cluster, importing torch after `ray.init()`
    aborts the driver with "Intel oneMKL FATAL ERROR: Cannot load .../libtorch_cpu.so", while importing it
    first works. It also makes a missing training stack fail before hours of annotation, not after.
    """
    import grainclip.train.launch  # noqa: F401


def plan_steps(config: PipelineConfig, run: RunDir) -> StepPlan | None:
    if config.train is None:
        return None
    plan = StepPlan(train_config(config.train, run), None, config.evaluate)
    if config.evaluate is not None:
        plan.evaluate = evaluate_config(config.evaluate, run, plan.model_dir, f"pipeline-{plan.train.mode}")
    return plan


def run_steps(plan: StepPlan, manifest: RunManifest, run: RunDir) -> dict[str, str]:
    """Run (or skip) the planned steps; records and returns step -> outcome. Ray must be initialised."""
    manifest.steps = {}
    skipped = f"skipped: {plan.model_dir} exists" if is_exported(plan.train.output_dir) else None
    _step("train", skipped, lambda: _train(plan.train), manifest, run)
    if plan.evaluate is not None:
        results = Path(plan.evaluate.out) / EVALUATION_RESULTS
        skipped = f"skipped: {results} exists" if results.exists() else None
        _step("evaluate", skipped, lambda: _evaluate(plan.evaluate, plan.evaluate_step), manifest, run)
    return dict(manifest.steps)


def _step(name: str, skipped: str | None, execute, manifest: RunManifest, run: RunDir) -> None:
    """Run one step (unless `skipped` says why not) and record its outcome in the manifest, failures too."""
    steps = manifest.steps
    try:
        steps[name] = skipped or execute()
    except BaseException as exc:
        steps[name] = f"failed: {type(exc).__name__}: {exc}"
        raise
    finally:
        run.write_manifest(manifest)
    log.info("step %s: %s", name, steps[name])


def _train(cfg) -> str:
    import ray

    from grainclip.evaluate.hook import zero_shot_hook
    from grainclip.train import train

    cfg = cfg.model_copy(update={"ray_address": ray.get_runtime_context().gcs_address})
    result = train(cfg, eval_hook=zero_shot_hook(cfg))
    return f"trained {result.steps} steps with Ray Train; model at {result.model_dir}"


def _evaluate(cfg, step: EvaluateStep) -> str:
    import ray

    def evaluate_on_cluster(cfg) -> str:
        from grainclip.evaluate import evaluate

        evaluate(cfg)
        return str(Path(cfg.out) / EVALUATION_RESULTS)

    task = ray.remote(num_cpus=step.num_cpus, num_gpus=step.num_gpus)(evaluate_on_cluster)
    return f"evaluated; results at {ray.get(task.remote(cfg))}"
