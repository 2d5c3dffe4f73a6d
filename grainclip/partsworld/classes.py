"""The PartsWorld class catalogue: which colour goes on which part for every seen and novel class.

Construction (fixed, independent of the generation seed, so every dataset shares one benchmark):

- A creature has four described parts: `crest`, `wings` and `tail` each carry a COLOUR from a palette of six
  well-separated colours; the `body` carries a PATTERN (plain / striped / spotted) and a neutral colour that
  varies per image (a nuisance, never described). The head, eye and legs are drawn but carry no attribute.
- A *family* is a set of three distinct colours plus one body pattern. The six families are the triples
  {i, i+1, i+3} (mod 6) of the palette, so every colour is in exactly three families; patterns cycle over
  the families.
- The six ways to put a family's three colours on (crest, wings, tail) split into two Latin squares: the
  three cyclic shifts and the three other permutations. In a Latin square every colour sits on every part
  exactly once. One square of each family is SEEN, the other NOVEL (alternating which square per family, so
  that no ordering rule tells them apart). 6 families x 3 = 18 seen and 18 novel classes.

Consequences the benchmark relies on (tests check them):
- A novel class has the same attribute multiset as the three seen classes of its family, so a model that
  only knows which colours are present cannot beat 1/3 among the novel classes: it must bind colour to part.
- Every descriptor of a novel class ("red crest", "blue tail", "striped body") is also a descriptor of some
  seen class: novel classes are new COMBINATIONS of region descriptions that all occur in training.
- Class names are made-up words that carry no information; novel names never appear in training data.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property

RGB = tuple[int, int, int]

# Roughly evenly spread hues at high saturation, chosen to stay apart after PNG round trips and resizing.
PALETTE: dict[str, RGB] = {
    "red": (220, 40, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 225),
    "yellow": (245, 215, 40),
    "purple": (150, 60, 190),
    "orange": (245, 135, 20),
}
COLOURS: tuple[str, ...] = tuple(PALETTE)
PATTERNS: tuple[str, ...] = ("plain", "striped", "spotted")
COLOURED_PARTS: tuple[str, ...] = ("crest", "wings", "tail")
PATTERNED_PART = "body"
PARTS: tuple[str, ...] = (*COLOURED_PARTS, PATTERNED_PART)  # the order of descriptors and regions

# Pronounceable nonsense words, none an English word; assigned to classes in this order.
NAMES: tuple[str, ...] = (
    "florp",
    "zanthe",
    "quorvel",
    "blemmit",
    "druvok",
    "pellisar",
    "yondric",
    "skarrow",
    "vimble",
    "torquin",
    "glissen",
    "morrab",
    "ustrel",
    "kavvik",
    "plenthe",
    "roskin",
    "thandro",
    "wuzzel",
    "ebbrin",
    "jorvath",
    "nimmel",
    "crundle",
    "faskel",
    "hollip",
    "zebrith",
    "lunwick",
    "gorvane",
    "tirrup",
    "ossleth",
    "brenvik",
    "quillom",
    "savrin",
    "dromble",
    "yaskel",
    "fennow",
    "mazzik",
)


@dataclass(frozen=True)
class CreatureClass:
    """One class: a named binding of colours to (crest, wings, tail) and a pattern to the body."""

    name: str
    split: str  # "seen" or "novel"
    family: int
    colours: tuple[str, str, str]  # colour of crest, wings, tail (COLOURED_PARTS order)
    pattern: str

    @property
    def bindings(self) -> dict[str, str]:
        return {**dict(zip(COLOURED_PARTS, self.colours)), PATTERNED_PART: self.pattern}

    @property
    def descriptors(self) -> list[str]:
        """Short, visual, locatable phrases, one per described part, in PARTS order."""
        return [f"{value} {part}" for part, value in self.bindings.items()]

    @property
    def attribute_multiset(self) -> tuple[str, ...]:
        return tuple(sorted(self.bindings.values()))


def _families() -> list[tuple[tuple[str, str, str], str]]:
    n = len(COLOURS)
    return [
        (tuple(COLOURS[(i + k) % n] for k in (0, 1, 3)), PATTERNS[i % len(PATTERNS)])  # type: ignore[misc]
        for i in range(n)
    ]


def _latin_squares(colours: tuple[str, str, str]) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """The three cyclic shifts and the three remaining permutations of `colours`."""
    shifts = [colours[k:] + colours[:k] for k in range(3)]
    others = [p for p in itertools.permutations(colours) if p not in shifts]
    return shifts, others


def build_catalogue() -> list[CreatureClass]:
    """All classes, seen and novel interleaved by family, names assigned in NAMES order."""
    classes: list[CreatureClass] = []
    names = iter(NAMES)
    for family, (colours, pattern) in enumerate(_families()):
        shifts, others = _latin_squares(colours)
        seen, novel = (shifts, others) if family % 2 == 0 else (others, shifts)
        for split, square in (("seen", seen), ("novel", novel)):
            for perm in square:
                classes.append(CreatureClass(next(names), split, family, tuple(perm), pattern))  # type: ignore[arg-type]
    return classes


@dataclass(frozen=True)
class Catalogue:
    """Lookup over the fixed class list; `CATALOGUE` is the one instance."""

    classes: tuple[CreatureClass, ...]

    @cached_property
    def by_name(self) -> dict[str, CreatureClass]:
        return {c.name: c for c in self.classes}

    def names(self, split: str) -> list[str]:
        return [c.name for c in self.classes if c.split == split]

    def to_json(self) -> dict:
        """The content of classes.json."""
        return {
            "seen": self.names("seen"),
            "novel": self.names("novel"),
            "parts": list(PARTS),
            "attributes": {"colour": list(COLOURS), "pattern": list(PATTERNS)},
            "bindings": {c.name: c.bindings for c in self.classes},
        }

    def descriptors(self) -> dict[str, list[str]]:
        """The content of descriptors.json (Menon & Vondrick format) for every class."""
        return {c.name: c.descriptors for c in self.classes}


CATALOGUE = Catalogue(tuple(build_catalogue()))
