"""PartsWorld: procedural images of part-based creatures with exact part boxes, for runs without weights.

Each image shows one creature whose class is a binding of colours to its crest, wings and tail plus a
pattern on its body; position, size, facing, pose, body colour, background and clutter vary per image.
NOVEL classes put the same colours on different parts than the SEEN classes (see `classes` for the
construction and the guarantees), so telling them apart needs attributes bound to regions.

    generate(out_dir, n, seed, n_test=None, image_size=224, n_val=None) -> PartsWorldPaths (the dataset on disk)
    load_classes(dir), load_descriptors(dir)                                      (its JSON files)
    make_scene(class_name, seed).render(width, height)       -> (PIL image, [(descriptor, box)])
"""

from grainclip.partsworld.classes import CATALOGUE, COLOURS, PALETTE, PARTS, PATTERNS, CreatureClass
from grainclip.partsworld.generate import (
    SPLITS,
    VAL_SPLITS,
    PartsWorldPaths,
    alt_text,
    generate,
    load_classes,
    load_descriptors,
    rich_caption,
)
from grainclip.partsworld.scene import Scene, make_scene, sample_scene

__all__ = [
    "CATALOGUE",
    "COLOURS",
    "PALETTE",
    "PARTS",
    "PATTERNS",
    "SPLITS",
    "VAL_SPLITS",
    "CreatureClass",
    "PartsWorldPaths",
    "Scene",
    "alt_text",
    "generate",
    "load_classes",
    "load_descriptors",
    "make_scene",
    "rich_caption",
    "sample_scene",
]
