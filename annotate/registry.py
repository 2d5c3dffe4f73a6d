"""Find annotator classes by name through Python entry points, so other packages can add backends.

A third-party package declares, in its pyproject.toml,

    [project.entry-points."grainclip.describers"]
    my-llm = "my_package.module:MyDescriber"

and a YAML config selects it with `describer: {name: my-llm, ...}`. grainclip's own backends are registered
the same way (see this project's pyproject.toml), so there is one lookup path for all of them.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from grainclip.annotate.base import Describer, Grounder
from grainclip.config.annotate import DescriberConfig, GrounderConfig
from grainclip.config.base import ConfigError

DESCRIBERS_GROUP = "grainclip.describers"
GROUNDERS_GROUP = "grainclip.grounders"


def available(group: str) -> list[str]:
    return sorted({ep.name for ep in entry_points(group=group)})


def _entry_point(group: str, name: str) -> EntryPoint:
    matches = [ep for ep in entry_points(group=group) if ep.name == name]
    if not matches:
        names = ", ".join(available(group)) or "(none installed)"
        kind = group.split(".")[-1][:-1]
        raise ConfigError(f"unknown {kind} {name!r}; available: {names} (entry-point group {group!r})")
    return matches[0]


def describer_class(name: str) -> type[Describer]:
    """The class registered under `name`, without constructing it (e.g. to read its runtime_env)."""
    cls = _entry_point(DESCRIBERS_GROUP, name).load()
    if not (isinstance(cls, type) and issubclass(cls, Describer)):
        raise ConfigError(f"describer {name!r} resolves to {cls!r}, which is not a grainclip Describer")
    return cls


def grounder_class(name: str) -> type[Grounder]:
    cls = _entry_point(GROUNDERS_GROUP, name).load()
    if not (isinstance(cls, type) and issubclass(cls, Grounder)):
        raise ConfigError(f"grounder {name!r} resolves to {cls!r}, which is not a grainclip Grounder")
    return cls


def build_describer(config: DescriberConfig) -> Describer:
    """Construct (and load the model of) the describer `config.name`."""
    return describer_class(config.name)(config)


def build_grounder(config: GrounderConfig) -> Grounder:
    return grounder_class(config.name)(config)
