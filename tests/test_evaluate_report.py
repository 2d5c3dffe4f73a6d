"""The evaluator's region grid: every title and descriptor list readable, none drawn over another."""

from __future__ import annotations

import itertools

import pytest
from PIL import Image

from grainclip.evaluate.report import plot_region_grid, region_grid_figure

DESCRIPTORS = [
    "red crest",
    "blue wings",
    "orange tail",
    "spotted body",
    "a long curved bright red crest on top of the small round head of the creature",
]


def grid_items(n: int, regions: int) -> list[dict]:
    """Grid items as the evaluator builds them: a PIL image, boxes in [0, 1], a descriptor and cosine per box."""
    return [
        {
            "image": Image.new("RGB", (64, 48 if i % 3 == 0 else 64), (40 * i % 255, 120, 200)),
            "boxes": [[0.1 * k, 0.1, 0.1 * k + 0.4, 0.6] for k in range(regions)],
            "descriptors": [DESCRIPTORS[(i + k) % len(DESCRIPTORS)] for k in range(regions)],
            "similarities": [0.1 * k for k in range(regions)],
            "label": "pellisar",
            "prediction": "pellisar" if i % 2 else "a much longer predicted class name",
        }
        for i in range(n)
    ]


def text_boxes(fig) -> list[tuple[str, object]]:
    """(text, window extent) of every visible text outside the images (titles, descriptor lists, suptitle)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    on_images = {id(t) for ax in fig.axes for t in ax.texts}  # the box numbers sit on their boxes by design
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in on_images]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in texts]


@pytest.mark.parametrize(("n", "regions"), [(6, 5), (7, 6), (3, 1), (1, 0)])
def test_region_grid_text_never_overlaps(n, regions):
    boxes = text_boxes(region_grid_figure(grid_items(n, regions), "grain on test_seen: predicted regions"))
    # suptitle + a title per image (+ a descriptor list per image with regions)
    assert len(boxes) == 1 + n + (n if regions else 0)
    overlapping = [
        (a[:40], b[:40]) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)
    ]
    assert not overlapping


def test_long_descriptors_are_wrapped_to_the_image_width():
    fig = region_grid_figure(grid_items(2, 5), "t")
    label = fig.axes[0].xaxis.label.get_text().splitlines()
    assert max(len(line) for line in label) <= 48
    assert any(line.startswith("    ") for line in label), "a wrapped descriptor continues indented"


def test_region_grid_png(tmp_path):
    path = plot_region_grid(grid_items(5, 3), "t", tmp_path / "grid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
