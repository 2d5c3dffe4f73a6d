"""Checks that refuse a certainly broken pipeline config before Ray starts or the run directory is touched.

Without them an unknown annotator name or a missing source path surfaced only once Ray had started (a minute
on a busy machine) and after a manifest had been written into OUT -- so the corrected config was then refused
as "a different run" and needed --force-new-run although nothing had run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from grainclip.config.base import ConfigError
from grainclip.config.pipeline import PipelineConfig

log = logging.getLogger(__name__)


def preflight(config: PipelineConfig, address: str | None = None) -> None:
    """Raise ConfigError / FileNotFoundError (one readable line) for what can be known wrong up front."""
    from grainclip.annotate.registry import DESCRIBERS_GROUP, GROUNDERS_GROUP, available

    for kind, group, name in (
        ("describer", DESCRIBERS_GROUP, config.describe.describer.name),
        ("grounder", GROUNDERS_GROUP, config.ground.grounder.name),
    ):
        names = available(group)
        if name not in names:
            raise ConfigError(f"unknown {kind} {name!r}; available: {', '.join(names) or '(none installed)'} "
                              f"(entry-point group {group!r})")

    source = config.source
    paths = [source.path] if isinstance(source.path, str) else list(source.path)
    if getattr(source, "captions_csv", None):
        paths.append(str(source.captions_csv))
    missing = [p for p in paths if "://" not in p and not any(c in p for c in "*?[") and not Path(p).exists()]
    if missing:
        raise FileNotFoundError(f"source path(s) not found: {', '.join(missing)}")


def preflight_resources(config: PipelineConfig, address: str | None = None) -> None:
    """Before an embedded Ray starts: it gets this machine's CPUs and GPUs, so refuse stages it can never
    place (a GPU stage on a CPU machine). Attached clusters are checked after connecting (they may autoscale)."""
    import ray

    from grainclip.pipelines.runner import check_resources

    if address is not None or os.environ.get("RAY_ADDRESS") or ray.is_initialized():
        return

    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource
        from ray._private.utils import get_num_cpus

        have = {"CPU": float(get_num_cpus()),
                "GPU": float(get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators())}
    except Exception as exc:  # noqa: BLE001 -- Ray internals moved: the check after ray.init still applies
        log.debug("local resource pre-check skipped: %s", exc)
        return
    try:
        check_resources(config, have, autoscaling=False)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (this machine, where an embedded Ray would run)") from None
