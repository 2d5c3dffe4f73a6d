"""`grainclip show`: the PNG it writes has each Parquet box drawn where the box is, in the region's colour."""

from __future__ import annotations

import io
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from grainclip import schema
from grainclip.images import encode_image
from grainclip.partsworld import make_scene
from grainclip.show import FONT_SIZE, PLACEHOLDER, GridLayout, region_colour, show


def layout_for(columns: int, cell_size: int) -> GridLayout:
    return GridLayout(columns=columns, cell_size=cell_size, line_height=FONT_SIZE + 3)


def edge_fractions(cell: np.ndarray, box: list[float], colour: tuple[int, int, int]) -> list[float]:
    """Fraction of pixels in `colour` along each of the box's four edges, computed from the box alone."""
    height, width = cell.shape[:2]
    x0, y0 = math.floor(box[0] * width), math.floor(box[1] * height)
    x1, y1 = math.ceil(box[2] * width) - 1, math.ceil(box[3] * height) - 1
    matches = np.all(cell == np.asarray(colour, dtype=np.uint8), axis=-1)
    edges = [matches[y0 : y1 + 1, x0], matches[y0 : y1 + 1, x1], matches[y0, x0 : x1 + 1], matches[y1, x0 : x1 + 1]]
    return [float(edge.mean()) for edge in edges]


def check_cell(canvas: np.ndarray, rect: tuple[int, int, int, int], image_bytes: bytes, regions: list[dict]) -> None:
    left, top, width, height = rect
    cell = canvas[top : top + height, left : left + width]
    # The image itself sits in this rectangle (nearest upscaling by an integer factor keeps its pixels) ...
    source = np.asarray(
        Image.open(io.BytesIO(image_bytes)).convert("RGB").resize((width, height), Image.Resampling.NEAREST)
    )
    assert np.all(cell == source, axis=-1).mean() > 0.6
    # ... and every box is outlined in its own colour exactly where the Parquet box says.
    for k, region in enumerate(regions):
        fractions = edge_fractions(cell, region["box"], region_colour(k))
        assert min(fractions) >= 0.6, (region, fractions)


def test_show_draws_partsworld_boxes_where_the_parquet_says(partsworld_small, tmp_path):
    truth = partsworld_small / "train" / "truth"
    out = show(truth, tmp_path / "grid.png", max_images=6, columns=3, cell_size=128)
    canvas = np.asarray(Image.open(out).convert("RGB"))
    layout = layout_for(3, 128)
    assert canvas.shape == (layout.canvas_size(6)[1], layout.canvas_size(6)[0], 3)
    rows = pq.read_table(truth).slice(0, 6).to_pylist()
    for index, row in enumerate(rows):
        rect = layout.image_rect(index, row["width"], row["height"])
        assert rect[2:] == (128, 128)  # 64-px images, scaled x2
        check_cell(canvas, rect, row["image"], row["regions"])


def test_show_maps_boxes_in_non_square_frames_and_survives_bad_rows(tmp_path):
    rows = []
    for k, (name, size) in enumerate((("florp", (120, 60)), ("zanthe", (60, 120)))):
        image, regions = make_scene(name, k).render(*size)
        rows.append(
            {
                "image_id": f"scene-{k}",
                "image": encode_image(image),
                "caption": f"a photo of a {name}",
                "width": size[0],
                "height": size[1],
                "regions": [{"text": text, "box": list(box), "score": 0.5} for text, box in regions],
                "status": "ok",
            }
        )
    rows[1]["regions"].append({"text": "broken box", "box": [0.1, 0.1, 1.5, 0.9], "score": 0.9})
    rows.append(
        {"image_id": "garbage", "image": b"not an image", "width": 10, "height": 10, "regions": [], "status": "ok"}
    )
    # Written around the validator on purpose: `show` must cope with files that break the contract.
    table = schema.conform(pa.Table.from_pylist(rows), "annotations")
    pq.write_table(table, tmp_path / "odd.parquet")

    out = show(tmp_path / "odd.parquet", tmp_path / "odd.png", columns=3, cell_size=240)
    canvas = np.asarray(Image.open(out).convert("RGB"))
    layout = layout_for(3, 240)
    wide, tall = layout.image_rect(0, 120, 60), layout.image_rect(1, 60, 120)
    assert wide[2:] == (240, 120) and tall[2:] == (120, 240)
    check_cell(canvas, wide, rows[0]["image"], rows[0]["regions"])
    check_cell(canvas, tall, rows[1]["image"], rows[1]["regions"][:-1])
    left, top, width, height = tall
    broken = edge_fractions(canvas[top : top + height, left : left + width], [0.1, 0.1, 1.0, 0.9], region_colour(4))
    assert max(broken[:1] + broken[2:]) < 0.3, "a box outside [0, 1] must not be drawn"
    x, y = layout.cell_origin(2)
    assert np.all(canvas[y : y + 240, x : x + 240] == PLACEHOLDER), "an undecodable image gets a placeholder"


def test_cli_show_writes_png(partsworld_small, tmp_path):
    from grainclip.cli import app

    out = tmp_path / "sub" / "show.png"
    result = CliRunner().invoke(
        app, ["show", str(partsworld_small / "test_novel" / "truth"), "--out", str(out), "--max-images", "2"]
    )
    assert result.exit_code == 0, result.output
    assert Image.open(out).size == layout_for(2, 256).canvas_size(2)


@pytest.mark.parametrize("case", ["zero images", "missing path", "not parquet"])
def test_cli_show_rejects_bad_input_in_one_line(partsworld_small, tmp_path, case):
    from grainclip.cli import app

    not_parquet = tmp_path / "notes.parquet"
    not_parquet.write_text("hello")
    source, extra = {
        "zero images": (partsworld_small / "train" / "truth", ["--max-images", "0"]),
        "missing path": (tmp_path / "nowhere", []),
        "not parquet": (not_parquet, []),
    }[case]
    result = CliRunner().invoke(app, ["show", str(source), "--out", str(tmp_path / "x.png"), *extra])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert not (tmp_path / "x.png").exists()
