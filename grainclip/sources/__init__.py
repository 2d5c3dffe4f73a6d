"""Sources: where images come from, one polymorphic unit shared by the pipeline and the evaluator.

A YAML `source: {kind: NAME, ...}` resolves NAME through the `grainclip.sources` entry-point group (this
project's pyproject.toml registers the built-in kinds; another package adds one the same way), and the rest of
the mapping is validated by that kind's own model. Config models type the field as `SourceField`.

    parquet       Parquet shards in the images contract           (pipeline, evaluator)
    image_folder  image files, captions from an optional CSV      (pipeline; evaluator: class folders)
    webdataset    tar shards                                       (pipeline)
    partsworld    a `grainclip synth` folder, one split            (pipeline, evaluator)
    huggingface   a `datasets` save_to_disk folder, or its files   (pipeline)
    annotations_run  an earlier pipeline run, its descriptions kept (pipeline; in grainclip.pipelines.reuse)
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import PlainValidator, SerializeAsAny

from grainclip.registry import available, load_plugin
from grainclip.sources.base import ClassFolderRows, Source, TableRows

SOURCES_GROUP = "grainclip.sources"


def source_class(kind: str) -> type[Source]:
    """The model class registered for `kind` (ConfigError naming the installed kinds if there is none)."""
    return load_plugin(SOURCES_GROUP, kind, "source kind", Source)


def parse_source(value: Any) -> Source:
    """A source model from its config mapping; pydantic reports a kind's field errors under `source.<field>`."""
    if isinstance(value, Source):
        return value
    if not isinstance(value, dict) or not isinstance(value.get("kind"), str):
        kinds = ", ".join(available(SOURCES_GROUP)) or "(none installed)"
        raise ValueError(f"a source is a mapping with a `kind` ({kinds}), got {value!r}")
    return source_class(value["kind"]).model_validate(value)


#: The type of a config field holding a source: validated by its kind's model, dumped with all its fields.
SourceField = Annotated[SerializeAsAny[Source], PlainValidator(parse_source)]

__all__ = ["SOURCES_GROUP", "ClassFolderRows", "Source", "SourceField", "TableRows", "parse_source", "source_class"]
