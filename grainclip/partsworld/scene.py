"""One PartsWorld image as resolution-free geometry: sample it from a seed, render it at any size.

A `Scene` holds every shape in NORMALISED image coordinates (x right, y down, both in [0, 1]). Rendering at
(width, height) maps (u, v) to pixels (u * width, v * height), so the same scene rendered at two resolutions
or aspect ratios has exactly the same normalised part boxes: the boxes come from the drawing geometry, not
from the pixels. The creature is sampled in a local frame facing right and then flipped, scaled and
placed. Crest, wings and tail are drawn last, so they are never occluded and their boxes are tight around
their visible pixels; the body's box is its whole ellipse (the wings and tail overlap its edge a little).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from grainclip.boxes import clip01
from grainclip.partsworld.classes import CATALOGUE, COLOURED_PARTS, PALETTE, PARTS, RGB, CreatureClass

DRAWING_ORDER = ("body", "tail", "wings", "crest")  # the coloured parts overlap the body, never each other
_MAKE_SCENE_STREAM = 7919  # seed-sequence tag no dataset split uses (they use their split codes 0, 1, 2)
Point = tuple[float, float]
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Shape:
    """A filled shape. `points`: polygon vertices, ellipse bbox corners, or line end points (normalised)."""

    kind: Literal["polygon", "ellipse", "line"]
    points: tuple[Point, ...]
    fill: RGB
    line_width: float = 0.0  # lines only, as a fraction of min(width, height)

    def box(self) -> Box:
        xs, ys = [p[0] for p in self.points], [p[1] for p in self.points]
        return (min(xs), min(ys), max(xs), max(ys))

    def draw(self, draw: ImageDraw.ImageDraw, width: int, height: int, fill: RGB | int | None = None) -> None:
        pixels = [(x * width, y * height) for x, y in self.points]
        colour = self.fill if fill is None else fill
        if self.kind == "polygon":
            draw.polygon(pixels, fill=colour)
        elif self.kind == "ellipse":
            draw.ellipse(pixels, fill=colour)
        else:
            draw.line(pixels, fill=colour, width=max(1, round(self.line_width * min(width, height))))


@dataclass(frozen=True)
class Part:
    """A described part: its region text, its shape and an optional pattern drawn clipped inside it."""

    name: str
    text: str
    shape: Shape
    pattern: tuple[Shape, ...] = ()

    def draw(self, image: Image.Image, width: int, height: int) -> None:
        self.shape.draw(ImageDraw.Draw(image), width, height)
        if not self.pattern:
            return
        inside = Image.new("L", image.size, 0)
        self.shape.draw(ImageDraw.Draw(inside), width, height, fill=255)
        marks = Image.new("L", image.size, 0)
        marks_draw = ImageDraw.Draw(marks)
        for mark in self.pattern:
            mark.draw(marks_draw, width, height, fill=255)
        image.paste(self.pattern[0].fill, mask=ImageChops.multiply(inside, marks))


@dataclass(frozen=True, eq=False)
class Background:
    """A smooth procedural background, vectorised in NumPy: a gradient, cloudy noise or soft bands."""

    kind: Literal["gradient", "clouds", "bands"]
    colours: tuple[RGB, RGB]
    angle: float
    frequency: float
    phase: float
    noise: np.ndarray  # (g, g, 3) low-resolution noise, upsampled bilinearly to the image size

    def render(self, width: int, height: int) -> np.ndarray:
        u = (np.arange(width, dtype=np.float32) + 0.5) / width
        v = (np.arange(height, dtype=np.float32) + 0.5) / height
        along = np.cos(self.angle) * (u[None, :] - 0.5) + np.sin(self.angle) * (v[:, None] - 0.5)
        noise = _bilinear(self.noise, width, height)
        if self.kind == "gradient":
            mix, amplitude = np.clip(along + 0.5, 0.0, 1.0), 12.0
        elif self.kind == "bands":
            mix, amplitude = 0.5 + 0.5 * np.sin(2 * np.pi * self.frequency * along + self.phase), 10.0
        else:
            mix, amplitude = np.clip(0.5 + 0.5 * noise.mean(axis=2), 0.0, 1.0), 30.0
        c0, c1 = (np.asarray(c, dtype=np.float32) for c in self.colours)
        pixels = c0 + (c1 - c0) * mix[..., None] + amplitude * noise
        return np.clip(pixels, 0, 255).astype(np.uint8)


def _bilinear(grid: np.ndarray, width: int, height: int) -> np.ndarray:
    """Upsample a (gh, gw, C) grid to (height, width, C), sampling at pixel centres in normalised coordinates.

    Separable linear interpolation as two small matrix products, which is much faster than gathering.
    """
    along_y = _interpolation_matrix(height, grid.shape[0])
    along_x = _interpolation_matrix(width, grid.shape[1])
    return np.einsum("hg,gwc->hwc", along_y, np.einsum("wk,gkc->gwc", along_x, grid)).astype(np.float32)


def _interpolation_matrix(size: int, cells: int) -> np.ndarray:
    """(size, cells) weights of linear interpolation from `cells` grid points to `size` pixel centres."""
    position = (np.arange(size, dtype=np.float32) + 0.5) / size * (cells - 1)
    lower = np.minimum(position.astype(int), cells - 2)
    weight = position - lower
    matrix = np.zeros((size, cells), dtype=np.float32)
    matrix[np.arange(size), lower] = 1 - weight
    matrix[np.arange(size), lower + 1] = weight
    return matrix


@dataclass(frozen=True, eq=False)
class Scene:
    """Everything needed to draw one image; `parts` are the described regions in PARTS order."""

    class_name: str
    facing: Literal["left", "right"]
    body_colour: RGB
    background: Background
    clutter: tuple[Shape, ...]
    decorations: tuple[Shape, ...]  # undescribed creature pieces (legs, head, eye), drawn under the parts
    parts: tuple[Part, ...]

    def regions(self) -> list[tuple[str, Box]]:
        """(descriptor, normalised xyxy box) of every described part, independent of the render size."""
        return [(part.text, tuple(float(c) for c in clip01(part.shape.box()))) for part in self.parts]  # type: ignore[misc]

    def render(self, width: int, height: int) -> tuple[Image.Image, list[tuple[str, Box]]]:
        """The RGB image at (width, height) and the regions (same normalised boxes at every size)."""
        image = Image.fromarray(self.background.render(width, height), "RGB")
        draw = ImageDraw.Draw(image)
        for shape in (*self.clutter, *self.decorations):
            shape.draw(draw, width, height)
        for part in sorted(self.parts, key=lambda p: DRAWING_ORDER.index(p.name)):
            part.draw(image, width, height)
        return image, self.regions()


def make_scene(class_name: str, seed: int) -> Scene:
    """A scene of a catalogue class from a seed (the same seed and class always give the same scene)."""
    try:
        creature = CATALOGUE.by_name[class_name]
    except KeyError:
        raise ValueError(f"unknown PartsWorld class {class_name!r}") from None
    index = CATALOGUE.classes.index(creature)
    return sample_scene(np.random.default_rng([seed, _MAKE_SCENE_STREAM, index]), creature)


def sample_scene(rng: np.random.Generator, creature: CreatureClass) -> Scene:
    """Draw the nuisances (placement, size, flip, pose jitter, body colour, background, clutter) for one image."""
    background = _sample_background(rng)
    bright = float(np.mean(background.colours)) > 150
    # A neutral body that contrasts with the background: dark on bright backgrounds, pale on dark ones.
    value = rng.uniform(0.3, 0.45) if bright else rng.uniform(0.75, 0.9)
    body_colour = _hsv(rng.uniform(0.05, 0.15), rng.uniform(0.0, 0.3), value)
    size = rng.uniform(0.55, 0.95)
    frame = _Frame(
        left=rng.uniform(0.0, 1.0 - size), top=rng.uniform(0.0, 1.0 - size), size=size, flip=bool(rng.random() < 0.5)
    )
    clutter = tuple(_sample_clutter(rng) for _ in range(rng.integers(0, 5)))
    decorations, parts = _sample_creature(rng, creature, body_colour, frame)
    return Scene(
        class_name=creature.name,
        facing="left" if frame.flip else "right",
        body_colour=body_colour,
        background=background,
        clutter=clutter,
        decorations=decorations,
        parts=parts,
    )


@dataclass(frozen=True)
class _Frame:
    """Maps the creature's local unit square (facing right) into normalised image coordinates."""

    left: float
    top: float
    size: float
    flip: bool

    def __call__(self, points: list[Point]) -> tuple[Point, ...]:
        return tuple(
            (self.left + self.size * ((1.0 - x) if self.flip else x), self.top + self.size * y) for x, y in points
        )

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> tuple[Point, Point]:
        (x0, y0), (x1, y1) = self([(cx - rx, cy - ry), (cx + rx, cy + ry)])
        return (min(x0, x1), y0), (max(x0, x1), y1)


def _sample_creature(
    rng: np.random.Generator, creature: CreatureClass, body_colour: RGB, frame: _Frame
) -> tuple[tuple[Shape, ...], tuple[Part, ...]]:
    def jitter(scale: float) -> float:
        return float(rng.uniform(-scale, scale))

    dark = _shade(body_colour, 0.45)
    colours = dict(zip(COLOURED_PARTS, (PALETTE[c] for c in creature.colours)))

    body_cx, body_cy, body_rx, body_ry = 0.5, 0.62, 0.25 * (1 + jitter(0.1)), 0.16 * (1 + jitter(0.1))
    head_cx, head_cy, head_r = 0.80, 0.42 + jitter(0.03), 0.11 * (1 + jitter(0.1))

    legs = tuple(
        Shape("line", frame([(x, 0.72), (x + dx, 0.95)]), dark, line_width=0.025 * frame.size)
        for x, dx in ((0.42, -0.03 + jitter(0.02)), (0.58, 0.03 + jitter(0.02)))
    )
    head = Shape("ellipse", frame.ellipse(head_cx, head_cy, head_r, head_r), body_colour)
    eye_r = head_r * 0.18
    eye = Shape("ellipse", frame.ellipse(head_cx + head_r * 0.4, head_cy - head_r * 0.1, eye_r, eye_r), (20, 20, 20))

    spikes = int(rng.integers(3, 5))
    base_y, tip_y = head_cy - head_r * 0.55, head_cy - head_r - 0.12 * (1 + jitter(0.25))
    x0, x1 = head_cx - head_r * 0.95, head_cx + head_r * 0.7
    step = (x1 - x0) / spikes
    crest_points = [(x0, base_y)]
    for k in range(spikes):
        crest_points += [(x0 + (k + 0.5) * step, tip_y + jitter(0.02)), (x0 + (k + 1) * step, base_y - 0.03)]
    crest_points[-1] = (x1, base_y)

    tip_x, tip_y = 0.42 + jitter(0.05), 0.20 + jitter(0.05)
    wing_points = [(0.36, 0.60), (0.60, 0.57), (tip_x + 0.10, tip_y + 0.06), (tip_x, tip_y)]

    spread = 0.18 * (1 + jitter(0.2))
    tail_tip_x = 0.04 + jitter(0.03)
    tail_points = [(0.30, 0.58), (tail_tip_x, 0.62 - spread), (0.13, 0.62), (tail_tip_x, 0.62 + spread), (0.30, 0.68)]

    body_shape = Shape("ellipse", frame.ellipse(body_cx, body_cy, body_rx, body_ry), body_colour)
    shapes = {
        "crest": Shape("polygon", frame(crest_points), colours["crest"]),
        "wings": Shape("polygon", frame(wing_points), colours["wings"]),
        "tail": Shape("polygon", frame(tail_points), colours["tail"]),
        "body": body_shape,
    }
    patterns = {"body": _body_pattern(rng, creature.pattern, body_cx, body_cy, body_rx, body_ry, dark, frame)}
    texts = dict(zip(creature.bindings, creature.descriptors))
    parts = tuple(Part(name, texts[name], shapes[name], patterns.get(name, ())) for name in PARTS)
    return (*legs, head, eye), parts


def _body_pattern(
    rng: np.random.Generator, pattern: str, cx: float, cy: float, rx: float, ry: float, colour: RGB, frame: _Frame
) -> tuple[Shape, ...]:
    if pattern == "striped":
        count = int(rng.integers(4, 7))
        width = 2 * rx / (2 * count)
        starts = cx - rx + width * (0.5 + 2 * np.arange(count))
        return tuple(
            Shape("polygon", frame([(x, cy - ry), (x + width, cy - ry), (x + width, cy + ry), (x, cy + ry)]), colour)
            for x in starts
        )
    if pattern == "spotted":
        count = int(rng.integers(5, 9))
        radius = 0.035
        centres = zip(
            rng.uniform(cx - rx * 0.7, cx + rx * 0.7, count), rng.uniform(cy - ry * 0.6, cy + ry * 0.6, count)
        )
        return tuple(Shape("ellipse", frame.ellipse(x, y, radius, radius), colour) for x, y in centres)
    return ()


def _sample_background(rng: np.random.Generator) -> Background:
    hue = rng.random()
    colours = tuple(
        _hsv((hue + rng.uniform(-0.15, 0.15)) % 1.0, rng.uniform(0.05, 0.35), rng.uniform(0.45, 0.9)) for _ in range(2)
    )
    grid = int(rng.integers(3, 7))
    return Background(
        kind=("gradient", "clouds", "bands")[int(rng.integers(0, 3))],
        colours=colours,  # type: ignore[arg-type]
        angle=float(rng.uniform(0, 2 * np.pi)),
        frequency=float(rng.uniform(1.5, 5.0)),
        phase=float(rng.uniform(0, 2 * np.pi)),
        noise=rng.normal(0.0, 1.0, size=(grid, grid, 3)).astype(np.float32),
    )


def _sample_clutter(rng: np.random.Generator) -> Shape:
    """A small muted shape that is not a part: colour that is never an exact palette colour."""
    cx, cy = rng.uniform(0.0, 1.0, 2)
    r = rng.uniform(0.03, 0.1)
    colour = _hsv(rng.random(), rng.uniform(0.2, 0.5), rng.uniform(0.35, 0.8))
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return Shape("ellipse", ((cx - r, cy - r * rng.uniform(0.5, 1.0)), (cx + r, cy + r)), colour)
    if kind == 1:
        return Shape("polygon", ((cx - r, cy - r), (cx + r, cy - r), (cx + r, cy + r), (cx - r, cy + r)), colour)
    if kind == 2:
        return Shape("polygon", ((cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)), colour)
    return Shape("line", ((cx - r, cy - r), (cx + r, cy + r * rng.uniform(-1, 1))), colour, line_width=0.015)


def _hsv(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def _shade(colour: RGB, factor: float) -> RGB:
    return tuple(round(c * factor) for c in colour)  # type: ignore[return-value]
