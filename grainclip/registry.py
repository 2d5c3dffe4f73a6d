"""Plugins by name through Python entry points: one lookup for annotators, source kinds and whatever comes next.

A package declares, in its pyproject.toml, `[project.entry-points."<group>"] my-name = "module:Class"` and a
YAML config selects it by that name. grainclip's own plugins are registered the same way, so built-in and
third-party ones resolve through the same path and fail with the same message.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from grainclip.config.base import ConfigError


def available(group: str) -> list[str]:
    """The names registered in an entry-point group, sorted."""
    return sorted({ep.name for ep in entry_points(group=group)})


def load_plugin(group: str, name: str, what: str, base: type) -> Any:
    """The class registered under `name` in `group`, checked to subclass `base`; ConfigError otherwise.

    `what` names the kind of plugin in messages ("describer", "source kind").
    """
    matches = [ep for ep in entry_points(group=group) if ep.name == name]
    if not matches:
        names = ", ".join(available(group)) or "(none installed)"
        raise ConfigError(f"unknown {what} {name!r}; available: {names} (entry-point group {group!r})")
    cls = matches[0].load()
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ConfigError(f"{what} {name!r} resolves to {cls!r}, which is not a grainclip {base.__name__}")
    return cls
