"""Render annotation rows (images, region boxes, texts) into one PNG grid, so a person can look at a shard.

Each cell holds one image scaled to fit a square of `cell_size` pixels, its region boxes drawn AFTER scaling
(so box lines are never resampled) in a distinct colour per region, and under it the id, status, captions
and a legend of region texts in the matching colours. Boxes are normalised xyxy of the original image, so a
box maps to the scaled image by multiplying with the scaled width and height; `GridLayout` and
`box_to_pixels` are the whole mapping, and the tests check drawn pixels against it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from PIL import Image, ImageDraw, ImageFont

from grainclip.config.base import ConfigError
from grainclip.images import ImageDecodeError, decode_image, load_image_bytes
from grainclip.schema import SchemaError, iter_batches, parquet_file, parquet_files, region_problem

log = logging.getLogger(__name__)

# Distinct, saturated colours (cycled when an image has more regions than colours).
RGB = tuple[int, int, int]
REGION_COLOURS: tuple[RGB, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
)
BOX_LINE_WIDTH = 2
BACKGROUND = (32, 32, 32)
TEXT_COLOUR = (230, 230, 230)
ERROR_COLOUR = (255, 120, 120)
PLACEHOLDER = (90, 90, 90)
FONT_SIZE = 11
TEXT_LINES = 9  # under each image: id/status, caption, 2 x llm caption, legend (and error) lines
SHOWN_COLUMNS = ("image_id", "image", "image_uri", "caption", "llm_caption", "regions", "status", "error", "class_name")


@dataclass(frozen=True)
class GridLayout:
    """Where each cell and each scaled image goes on the output canvas."""

    columns: int
    cell_size: int
    line_height: int
    padding: int = 8

    @property
    def cell_width(self) -> int:
        return self.cell_size + self.padding

    @property
    def cell_height(self) -> int:
        return self.cell_size + TEXT_LINES * self.line_height + self.padding

    def canvas_size(self, count: int) -> tuple[int, int]:
        rows = math.ceil(count / self.columns)
        return self.padding + self.columns * self.cell_width, self.padding + rows * self.cell_height

    def cell_origin(self, index: int) -> tuple[int, int]:
        row, column = divmod(index, self.columns)
        return self.padding + column * self.cell_width, self.padding + row * self.cell_height

    def image_rect(self, index: int, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, scaled width, scaled height) of an image of (width, height), centred in its square."""
        scale = self.cell_size / max(width, height)
        scaled_w, scaled_h = max(1, round(width * scale)), max(1, round(height * scale))
        x, y = self.cell_origin(index)
        return x + (self.cell_size - scaled_w) // 2, y + (self.cell_size - scaled_h) // 2, scaled_w, scaled_h


def box_to_pixels(box: list[float], width: int, height: int) -> tuple[int, int, int, int]:
    """Normalised xyxy -> inclusive pixel rectangle (x0, y0, x1, y1) covering the box in a width x height image."""
    x0 = min(max(math.floor(box[0] * width), 0), width - 1)
    y0 = min(max(math.floor(box[1] * height), 0), height - 1)
    x1 = min(max(math.ceil(box[2] * width) - 1, x0), width - 1)
    y1 = min(max(math.ceil(box[3] * height) - 1, y0), height - 1)
    return x0, y0, x1, y1


def region_colour(k: int) -> RGB:
    return REGION_COLOURS[k % len(REGION_COLOURS)]


def show(path: str | Path, out: str | Path, max_images: int = 16, columns: int = 4, cell_size: int = 256) -> Path:
    """Render the first `max_images` rows under `path` (a Parquet file or directory) to the PNG `out`."""
    if max_images < 1:
        raise ConfigError(f"max_images must be at least 1, got {max_images}")
    if columns < 1:
        raise ConfigError(f"columns must be at least 1, got {columns}")
    if not 32 <= cell_size <= 2048:
        raise ConfigError(f"cell_size must be between 32 and 2048 pixels, got {cell_size}")
    rows = list(read_rows(path, max_images))
    if not rows:
        raise SchemaError(f"{path} holds no rows to show")
    font = ImageFont.load_default(size=FONT_SIZE)
    layout = GridLayout(columns=min(columns, len(rows)), cell_size=cell_size, line_height=FONT_SIZE + 3)
    canvas = render_grid(rows, layout, font)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, format="PNG")
    log.info("wrote %d image(s) to %s", len(rows), out)
    return out


def read_rows(path: str | Path, limit: int) -> Iterator[dict]:
    """The first `limit` rows under `path` as dicts, with whichever of SHOWN_COLUMNS the files have."""
    files = parquet_files(path)
    if not files:
        raise FileNotFoundError(f"no Parquet files under {path}")
    try:
        available = parquet_file(files[0]).schema_arrow.names
        batches = iter_batches(path, columns=[c for c in SHOWN_COLUMNS if c in available], batch_size=min(limit, 256))
        seen = 0
        for batch in batches:
            for row in batch.slice(0, limit - seen).to_pylist():
                yield row
                seen += 1
            if seen >= limit:
                return
    except (pa.ArrowInvalid, OSError) as exc:
        raise SchemaError(f"{path}: not a readable Parquet file or directory ({exc})") from None


def render_grid(rows: list[dict], layout: GridLayout, font: ImageFont.ImageFont) -> Image.Image:
    canvas = Image.new("RGB", layout.canvas_size(len(rows)), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for index, row in enumerate(rows):
        regions = row.get("regions") or []
        try:
            image = decode_image(load_image_bytes(row.get("image"), row.get("image_uri")))
        except ImageDecodeError as exc:
            image, regions = None, []
            row = {**row, "error": f"cannot show image: {exc}"}
        _draw_cell(canvas, draw, layout, index, image, row, regions, font)
    return canvas


def _draw_cell(
    canvas: Image.Image,
    draw: ImageDraw.ImageDraw,
    layout: GridLayout,
    index: int,
    image: Image.Image | None,
    row: dict,
    regions: list[dict],
    font: ImageFont.ImageFont,
) -> None:
    x, y = layout.cell_origin(index)
    if image is None:
        draw.rectangle([x, y, x + layout.cell_size - 1, y + layout.cell_size - 1], fill=PLACEHOLDER)
    else:
        left, top, scaled_w, scaled_h = layout.image_rect(index, image.width, image.height)
        upscale = scaled_w >= image.width
        scaled = image.resize((scaled_w, scaled_h), Image.Resampling.NEAREST if upscale else Image.Resampling.LANCZOS)
        _draw_boxes(scaled, regions)
        canvas.paste(scaled, (left, top))

    lines: list[tuple[str, RGB, bool]] = []  # (text, colour, with a colour swatch in front)
    title = " · ".join(str(v) for v in (row.get("image_id"), row.get("class_name"), row.get("status")) if v)
    lines.append((title, TEXT_COLOUR, False))
    if row.get("caption"):
        lines.append((f"alt: {row['caption']}", TEXT_COLOUR, False))
    if row.get("llm_caption"):
        lines += [(text, TEXT_COLOUR, False) for text in _wrap(f"llm: {row['llm_caption']}", font, layout.cell_size, 2)]
    if row.get("error"):
        lines.append((f"error: {row['error']}", ERROR_COLOUR, False))
    for k, region in enumerate(regions):
        problem = region_problem(region)
        score = region.get("score")
        label = f"{region.get('text')}" + (f"  {score:.2f}" if isinstance(score, float) else "")
        lines.append((f"{label}  (not drawn: {problem})" if problem else label, region_colour(k), True))
    if len(lines) > TEXT_LINES:
        hidden = len(lines) - TEXT_LINES + 1
        lines = lines[: TEXT_LINES - 1] + [(f"… {hidden} more line(s)", TEXT_COLOUR, False)]
    swatch = layout.line_height - 5
    for k, (text, colour, with_swatch) in enumerate(lines):
        top = y + layout.cell_size + 2 + k * layout.line_height
        indent = swatch + 4 if with_swatch else 0
        if with_swatch:
            draw.rectangle([x, top + 2, x + swatch - 1, top + 1 + swatch], fill=colour)
        draw.text((x + indent, top), _fit(text, font, layout.cell_size - indent), fill=colour, font=font)


def _draw_boxes(image: Image.Image, regions: list[dict]) -> None:
    """Each valid region as a coloured rectangle with a thin dark outline outside it (visible on any colour)."""
    draw = ImageDraw.Draw(image)
    for k, region in enumerate(regions):
        if region_problem(region):
            continue
        x0, y0, x1, y1 = box_to_pixels(region["box"], image.width, image.height)
        draw.rectangle([x0 - 1, y0 - 1, x1 + 1, y1 + 1], outline=(0, 0, 0), width=1)
        draw.rectangle([x0, y0, x1, y1], outline=region_colour(k), width=BOX_LINE_WIDTH)


def _fit(text: str, font: ImageFont.ImageFont, width: int) -> str:
    """`text` cut (with an ellipsis) to fit in `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


def _wrap(text: str, font: ImageFont.ImageFont, width: int, max_lines: int) -> list[str]:
    """Greedy word wrap into at most `max_lines` lines; the last one is cut to fit."""
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < max_lines - 1:
        line = words.pop(0)
        while words and font.getlength(f"{line} {words[0]}") <= width:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if words:
        lines.append(" ".join(words))
    return lines
