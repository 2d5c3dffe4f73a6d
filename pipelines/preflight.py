"""Checks that refuse a certainly broken pipeline config before Ray starts or the run directory is touched.

Without them an unknown annotator name or a missing source path surfaced only once Ray had started (a minute
on a busy machine) and after a manifest had been written into OUT -- so the corrected config was then refused
as "a different run" and needed --force-new-run although nothing had run.
"""

from __future__ import annotations

import logging
import os

from grainclip import storage
from grainclip.annotate.registry import DESCRIBERS_GROUP, GROUNDERS_GROUP, describer_class, grounder_class
from grainclip.config.base import ConfigError
from grainclip.config.pipeline import PipelineConfig
from grainclip.registry import available

log = logging.getLogger(__name__)


class PreflightError(ConfigError):
    """Every problem preflight found; str() has one problem per line, each printed by the CLI as `error: ...`."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


def preflight(config: PipelineConfig, address: str | None = None) -> None:
    """Raise PreflightError listing every problem that can be known up front: annotators, source, engine args.

    All checks run, so a config with three mistakes needs one fix-and-rerun, not three.
    """
    problems: list[str] = []
    stages = (
        ("describer", DESCRIBERS_GROUP, config.describe.describer, config.describe, describer_class),
        ("grounder", GROUNDERS_GROUP, config.ground.grounder, config.ground, grounder_class),
    )
    for kind, group, annotator, stage, annotator_class in stages:
        names = available(group)
        if annotator.name not in names:
            problems.append(
                f"unknown {kind} {annotator.name!r}; available: {', '.join(names) or '(none installed)'} "
                f"(entry-point group {group!r})"
            )
            continue
        problems += annotator_class(annotator.name).problems(annotator, workers_on_cpu=not stage.num_gpus)
    wanted = config.describe.batches_in_flight
    name = config.describe.describer.name
    if wanted is not None and wanted > 1 and name in available(DESCRIBERS_GROUP):
        if not describer_class(name).serves_batches_concurrently():
            problems.append(
                f"describe.batches_in_flight is {wanted}, but describer {name!r} serves one batch at a time "
                "(it has no describe_async); set it to 1 or leave it unset"
            )
    problems += [str(problem) for problem in config.source.problems()]
    try:
        storage.check_bucket(config.output)
    except storage.StorageError as exc:
        if str(exc) not in problems:  # one unreachable endpoint is one line, not one per path on it
            problems.append(str(exc))
    if problems:
        raise PreflightError(problems)


def preflight_resources(config: PipelineConfig, address: str | None = None) -> None:
    """Before an embedded Ray starts: it gets this machine's CPUs and GPUs, so refuse stages it can never
    place (a GPU stage on a CPU machine). Attached clusters are checked after connecting (they may autoscale)."""
    import ray

    if address is not None or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return

    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource
        from ray._private.utils import get_num_cpus

        have = {
            "CPU": float(get_num_cpus()),
            "GPU": float(get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()),
        }
    except Exception as exc:  # noqa: BLE001 -- Ray internals moved: the check after ray.init still applies
        log.debug("local resource pre-check skipped: %s", exc)
        return
    try:
        check_resources(config, have, autoscaling=False)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (this machine, where an embedded Ray would run)") from None


def check_resources(config: PipelineConfig, cluster: dict[str, float], autoscaling: bool) -> None:
    """Refuse a plan whose actor pools leave no room for the read tasks: it would wait forever (commit tasks take no CPU).

    On an attached cluster this is only a warning, since an autoscaler may add the missing nodes once the
    actors ask for them; an embedded local Ray never grows, so there it is an error.
    """
    stages = (("describe", config.describe), ("ground", config.ground))[config.source.carries_descriptions :]
    for resource, per_actor in (("CPU", lambda s: s.num_cpus), ("GPU", lambda s: s.num_gpus)):
        needed = sum(stage.min_actors * per_actor(stage) for _, stage in stages) + (1 if resource == "CPU" else 0)
        have = cluster.get(resource, 0.0)
        if needed <= have:
            continue
        wants = ", ".join(f"{name}: {stage.min_actors} x {per_actor(stage):g}" for name, stage in stages)
        tasks = ", plus 1 for the read tasks" if resource == "CPU" else ""
        message = (
            f"the stages' actors need {needed:g} {resource} ({wants}{tasks}) but the Ray cluster has {have:g}; "
            f"lower min_actors or num_{resource.lower()}s per actor (describe/ground in the config)"
        )
        if not autoscaling:
            raise ConfigError(message)
        log.warning("%s -- waiting for the cluster to scale up", message)
