"""Find annotator classes by name through Python entry points, so other packages can add backends.

A third-party package declares, in its pyproject.toml,

    [project.entry-points."grainclip.describers"]
    my-llm = "my_package.module:MyDescriber"

and a YAML config selects it with `describer: {name: my-llm, ...}`. grainclip's own backends are registered
the same way (see this project's pyproject.toml), so there is one lookup path for all of them.
"""

from __future__ import annotations

from grainclip.annotate.base import Describer, Grounder
from grainclip.config.annotate import DescriberConfig, GrounderConfig
from grainclip.registry import load_plugin

DESCRIBERS_GROUP = "grainclip.describers"
GROUNDERS_GROUP = "grainclip.grounders"


def describer_class(name: str) -> type[Describer]:
    """The class registered under `name`, without constructing it (e.g. to read its runtime_env)."""
    return load_plugin(DESCRIBERS_GROUP, name, "describer", Describer)


def grounder_class(name: str) -> type[Grounder]:
    return load_plugin(GROUNDERS_GROUP, name, "grounder", Grounder)


def build_describer(config: DescriberConfig) -> Describer:
    """Construct (and load the model of) the describer `config.name`."""
    return describer_class(config.name)(config)


def build_grounder(config: GrounderConfig) -> Grounder:
    return grounder_class(config.name)(config)
