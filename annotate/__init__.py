"""grainclip.annotate: describers (LLMs) and grounders (open-vocabulary detectors) that make GRAIN's labels.

Importable without torchvision/open_clip: annotation nodes need no training stack. Backends import their
heavy libraries (vllm, transformers, openai) inside their classes.

    from grainclip.annotate import build_describer, build_grounder, annotate_rows
    from grainclip.config.annotate import DescriberConfig, GrounderConfig
"""

from grainclip.annotate.base import Describer, Grounder
from grainclip.annotate.registry import (
    DESCRIBERS_GROUP,
    GROUNDERS_GROUP,
    build_describer,
    build_grounder,
    describer_class,
    grounder_class,
)
from grainclip.annotate.rows import annotate_rows
from grainclip.annotate.types import DescribeRequest, Description, Grounding, GroundRequest, Region
from grainclip.registry import available

__all__ = [
    "DESCRIBERS_GROUP",
    "GROUNDERS_GROUP",
    "DescribeRequest",
    "Describer",
    "Description",
    "GroundRequest",
    "Grounder",
    "Grounding",
    "Region",
    "annotate_rows",
    "available",
    "build_describer",
    "build_grounder",
    "describer_class",
    "grounder_class",
]
