"""The config reference (docs/config.md) and commented example YAMLs, generated from the pydantic models.

The models are the one source of truth for every key, type, default and description: `reference_markdown()`
renders them as docs/config.md (a test fails when that file is stale; `grainclip config docs` rewrites it) and
`example_yaml(kind)` writes a YAML a new user can start from, every key at its default with its description as
a comment, which loads as it is (`grainclip config example KIND`).
"""

from __future__ import annotations

import inspect
import json
import textwrap
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import to_jsonable_python

from grainclip.config.base import ConfigError, ConfigModel, parse_config
from grainclip.registry import available
from grainclip.sources import SOURCES_GROUP, Source, source_class

#: What each kind's example fills in for its required keys (everything else shows its default).
EXAMPLE_REQUIRED: dict[str, dict[str, Any]] = {
    "pipeline": {
        "output": "runs/annotate",
        "source": {"kind": "image_folder", "path": "data/images", "captions_csv": "data/images/captions.csv"},
    },
    "train": {"data": {"train": "runs/annotate/annotations"}},
    "evaluate": {
        "models": [{"label": "grain", "type": "checkpoint", "path": "runs/annotate/train/model"}],
        "datasets": [
            {
                "name": "pets",
                "source": {"kind": "image_folder", "path": "data/pets/test"},
                "descriptors": "data/pets/descriptors.json",
            }
        ],
    },
}

CONFIG_KINDS = tuple(EXAMPLE_REQUIRED)
WRAP = 110


def config_class(kind: str) -> type[ConfigModel]:
    """The top-level model of a config kind (pipeline, train, evaluate)."""
    if kind == "pipeline":
        from grainclip.config.pipeline import PipelineConfig

        return PipelineConfig
    if kind == "train":
        from grainclip.config.train import TrainConfig

        return TrainConfig
    if kind == "evaluate":
        from grainclip.config.evaluate import EvaluateConfig

        return EvaluateConfig
    raise ConfigError(f"unknown config kind {kind!r}; choose from {', '.join(CONFIG_KINDS)}")


# ------------------------------------------------------------------------------------------------- types
def _unwrap(annotation: Any) -> Any:
    while get_origin(annotation) is Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def type_text(annotation: Any) -> str:
    """A field's type as a user writes it in YAML: `int`, `path | null`, `"fp32" | "bf16"`, `list[str]`."""
    annotation = _unwrap(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(json.dumps(arg) for arg in args)
    if origin in (Union, types.UnionType):
        return " | ".join(dict.fromkeys(type_text(arg) for arg in args))  # a union of models is one `mapping`
    if origin is list:
        return f"list[{type_text(args[0])}]"
    if origin is tuple:
        return "[" + ", ".join(type_text(arg) for arg in args) + "]"
    if origin is dict or annotation is dict:
        return "mapping"
    if _is_model(annotation):
        return "source" if issubclass(annotation, Source) else "mapping"
    names = {Path: "path", str: "str", int: "int", float: "float", bool: "bool", bytes: "bytes"}
    return names.get(annotation, "any")


def _models_in(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The config models a field holds (several for a union) and whether it is a list of them."""
    annotation = _unwrap(annotation)
    is_list = get_origin(annotation) is list
    if is_list:
        annotation = _unwrap(get_args(annotation)[0])
    candidates = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return [_unwrap(c) for c in candidates if _is_model(_unwrap(c))], is_list


def _default(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()
    return field.default


def _default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = _default(field)
    if isinstance(value, BaseModel):
        return ""  # its keys have their own rows
    return "`" + json.dumps(to_jsonable_python(value)) + "`"


def _docstring(model: type[BaseModel]) -> str:
    """The first paragraph of the model's docstring (inherited: a stage config says what every stage is)."""
    if model.__doc__ is None and model.__mro__[1] in (ConfigModel, BaseModel):
        return ""
    return (inspect.getdoc(model) or "").split("\n\n")[0].replace("\n", " ")


_BOUNDS = (("gt", ">"), ("ge", ">="), ("lt", "<"), ("le", "<="), ("min_length", "length >="))


def bounds_text(field: FieldInfo) -> str:
    """The field's bounds as one suffix, e.g. ' (> 0)' or ' (>= 0, <= 1)' (gt/ge/lt/le/min_length)."""
    found = [
        f"{sign} {getattr(item, name)}" for item in field.metadata for name, sign in _BOUNDS if hasattr(item, name)
    ]
    return f" ({', '.join(found)})" if found else ""


def description(field: FieldInfo, annotation: Any) -> str:
    """The field's description; a section (a nested model) without one is described by its model's docstring."""
    if field.description:
        return field.description
    values = get_args(_unwrap(annotation)) if get_origin(_unwrap(annotation)) is Literal else ()
    if field.is_required() and len(values) == 1:
        return f"`{values[0]}`: selects this kind."
    models, _ = _models_in(annotation)
    return _docstring(models[0]) if len(models) == 1 else ""


# ------------------------------------------------------------------------------------------------ markdown
def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, description) of every key under `model`, nested keys dotted."""
    rows = []
    for name, field in model.model_fields.items():
        key = prefix + name
        annotation = field.annotation
        models, is_list = _models_in(annotation)
        if models and issubclass(models[0], Source):
            text = description(field, annotation) + " One of the source kinds below."
            rows.append((key, type_text(annotation), _default_text(field), text))
            continue
        kind = type_text(annotation) + bounds_text(field)
        rows.append((key, kind, _default_text(field), description(field, annotation)))
        item = f"{key}[]" if is_list else key
        if len(models) == 1:
            rows += _rows(models[0], item + ".")
        for variant in models if len(models) > 1 else []:
            tag, value = next(
                (n, get_args(_unwrap(f.annotation))[0])
                for n, f in variant.model_fields.items()
                if get_origin(_unwrap(f.annotation)) is Literal
            )
            rows += _rows(variant, f"{key}[{tag}={value}].")
    return rows


def _table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    lines += [f"| `{key}` | `{_cell(kind)}` | {_cell(default)} | {_cell(text)} |" for key, kind, default, text in rows]
    return lines + [""]


def reference_markdown() -> str:
    """docs/config.md: every key of the pipeline, train and evaluate configs and of every source kind."""
    lines = [
        "# Config reference",
        "",
        "<!-- Generated from the pydantic models in grainclip/config/ and grainclip/sources/ by "
        "`grainclip config docs`; do not edit by hand (a test fails when this file is stale). -->",
        "",
        "Every key of the three run configs, with its type, default and meaning. Nested keys are dotted; `[]` "
        "marks the items of a list of mappings, `[type=x]` the items with `type: x`. Unknown keys are errors. "
        "`grainclip config example KIND` prints a commented YAML to start from; `--set key=value` overrides "
        "any key on the command line. Sources are described in [sources.md](sources.md), the annotators' "
        "backend-specific `options` in [annotators.md](annotators.md).",
        "",
    ]
    for kind in CONFIG_KINDS:
        model = config_class(kind)
        lines += [f"## {kind}", "", _docstring(model) or f"A `grainclip {kind}` config.", ""]
        lines += _table(_rows(model))
    lines += ["## Source kinds", "", "The `source:` mapping of a pipeline config or of an evaluate dataset.", ""]
    for kind in available(SOURCES_GROUP):
        model = source_class(kind)
        lines += [f"### `{kind}`", "", _docstring(model), ""]
        lines += _table(_rows(model, "source."))
    return "\n".join(lines).rstrip() + "\n"


# ------------------------------------------------------------------------------------------------- example
def _flow(value: Any) -> str:
    """One YAML value on one line."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("...\n").strip()


def _comment(text: str, indent: str) -> list[str]:
    return [f"{indent}# {line}" for line in textwrap.wrap(text, WRAP - len(indent) - 2)]


def _yaml_lines(model: BaseModel, indent: str = "") -> list[str]:
    """`model`'s keys as YAML, each under its description."""
    lines: list[str] = []
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        lines += _comment(description(field, field.annotation), indent)
        if isinstance(value, BaseModel):
            lines.append(f"{indent}{name}:")
            lines += _yaml_lines(value, indent + "  ")
        elif isinstance(value, list) and value and all(isinstance(item, BaseModel) for item in value):
            lines.append(f"{indent}{name}:")
            for item in value:
                item_lines = _yaml_lines(item, indent + "    ")
                start = next(i for i, line in enumerate(item_lines) if not line.lstrip().startswith("#"))
                item_lines[:start] = [f"{indent}  " + line.lstrip() for line in item_lines[:start]]
                item_lines[start] = f"{indent}  - " + item_lines[start].lstrip()
                lines += item_lines
        else:
            lines.append(f"{indent}{name}: {_flow(to_jsonable_python(value))}")
    return lines


def example_yaml(kind: str) -> str:
    """A commented `kind` config: the keys a user must fill in set to examples, every other key at its default."""
    model = parse_config(EXAMPLE_REQUIRED.get(kind, {}), config_class(kind))
    header = [
        f"# An example `grainclip {kind}` config: replace the paths, delete the keys you keep at their defaults.",
        "# Every key is in docs/config.md.",
    ]
    return "\n".join(header + _yaml_lines(model)) + "\n"
