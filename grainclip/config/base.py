"""Configuration is data: pydantic models loaded from YAML, with errors a user can act on.

Every run config (pipeline, train, evaluate) subclasses `ConfigModel`, which forbids unknown keys so a typo
is an error instead of a silently ignored setting. `load_config` safe-loads YAML and turns pydantic's
errors into one line per problem: the dotted field path, what is wrong, and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError


class ConfigError(ValueError):
    """A config file or value is wrong; str() is a readable, multi-line explanation."""


class ConfigModel(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


M = TypeVar("M", bound=BaseModel)


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see the documented fields)"
        elif item["type"] in ("literal_error", "enum"):
            message = f"{message}; got {item.get('input')!r}"
        lines.append(f"  {where}: {message}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], cls: type[M], source: str = "(inline)") -> M:
    try:
        return cls.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None


def load_config(path: str | Path, cls: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Safe-load YAML from `path`, apply dotted-key `overrides` ({"train.steps": 10}), validate as `cls`."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping of keys to values, got {type(data).__name__}")
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return parse_config(data, cls, source=str(path))


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Every CLI's `--set a.b=value` items -> {"a.b": value}, values read as YAML (numbers, booleans, lists)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (dotted key), got {item!r}")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {key!r} is not a mapping")
    node[leaf] = value


def dump_config(config: BaseModel) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
