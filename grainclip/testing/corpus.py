"""A bad-input corpus in every input form grainclip reads, generated (never committed as blobs).

`write_bad_input_corpus(out)` writes:
- `images.parquet`: the images contract with odd images inline, a 10 kB caption, an empty caption, duplicate
  image_ids, and image_uri rows pointing at a missing file, an unreadable file and a file with the wrong
  extension;
- `folder/` + `captions.csv`: the same images as files with a caption CSV holding a non-UTF-8 line;
- `annotations.parquet`: trainer/evaluator input with zero regions, empty descriptions, failed statuses and
  broken image bytes next to good rows.
`expected.json` lists, per image_id, whether a reader must be able to use the image ("ok") or must record a
failure ("error"); tests compare their statuses with it so no row is silently dropped.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from grainclip.schema import conform
from grainclip.testing.bad_images import bad_images

LONG_CAPTION = "a creature with " + "very " * 2000 + "long description"  # ~10 kB


def write_bad_input_corpus(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    folder = out / "folder"
    folder.mkdir(parents=True, exist_ok=True)
    corpus = bad_images()
    expected: dict[str, str] = {}
    rows: list[dict] = []
    for name, (data, outcome) in sorted(corpus.items()):
        rows.append({"image_id": name, "image": data, "caption": f"a photo called {name}"})
        expected[name] = outcome
        suffix = ".gif" if name == "animated_gif" else ".jpg" if "jpeg" in name or name == "exif_rotated" else ".png"
        (folder / f"{name}{suffix}").write_bytes(data)

    good = corpus["rgb_png"][0]
    rows += [
        {"image_id": "long_caption", "image": good, "caption": LONG_CAPTION},
        {"image_id": "empty_caption", "image": good, "caption": ""},
        {"image_id": "null_caption", "image": good, "caption": None},
        # Same id twice: a reader keeps exactly one row for it and accounts for the other.
        {"image_id": "duplicate", "image": good, "caption": "first copy"},
        {"image_id": "duplicate", "image": good, "caption": "second copy"},
    ]
    expected.update(long_caption="ok", empty_caption="ok", null_caption="ok", duplicate="ok")

    wrong_extension = folder / "wrong_extension.gif"  # PNG bytes behind a .gif name: decodable by content
    wrong_extension.write_bytes(good)
    unreadable = folder / "unreadable.png"
    unreadable.write_bytes(good)
    os.chmod(unreadable, 0)
    uri_rows = {
        "wrong_extension": (wrong_extension, "ok"),
        "missing_file": (folder / "does_not_exist.png", "error"),
        # root can read mode-0 files, so permission errors only reproduce for ordinary users.
        "unreadable_file": (unreadable, "error" if os.geteuid() != 0 else "ok"),
    }
    for image_id, (path, outcome) in uri_rows.items():
        rows.append({"image_id": image_id, "image": None, "image_uri": f"file://{path}", "caption": image_id})
        expected[image_id] = outcome

    images = pa.Table.from_pylist(
        rows,
        schema=pa.schema(
            [("image_id", pa.string()), ("image", pa.binary()), ("image_uri", pa.string()), ("caption", pa.string())]
        ),
    )
    pq.write_table(images, out / "images.parquet")

    # Caption CSV as a crawl produces it: one line is Latin-1, not UTF-8.
    lines = [b"file_name,caption"] + [
        f"{p.name},a photo of {p.stem}".encode() for p in sorted(folder.iterdir()) if p.name != "unreadable.png"
    ]
    lines.append("one_pixel.png,caf\xe9 cr\xe8me".encode("latin-1"))
    (out / "captions.csv").write_bytes(b"\n".join(lines) + b"\n")

    (out / "annotations.parquet").unlink(missing_ok=True)
    pq.write_table(_annotation_rows(corpus), out / "annotations.parquet")
    (out / "expected.json").write_text(json.dumps(expected, indent=1, sort_keys=True))
    return {
        "images": out / "images.parquet",
        "folder": folder,
        "captions": out / "captions.csv",
        "annotations": out / "annotations.parquet",
        "expected": out / "expected.json",
    }


def _annotation_rows(corpus: dict[str, tuple[bytes, str]]) -> pa.Table:
    """Trainer/evaluator input: usable rows next to every kind of row that must be skipped and counted."""
    good = corpus["rgb_png"][0]
    region = {"text": "red crest", "box": [0.1, 0.1, 0.5, 0.5], "score": 0.9}
    base = {"caption": "a photo", "llm_caption": None, "width": 32, "height": 24, "error": None, "run_id": "corpus"}
    rows = [
        {"image_id": "good", "image": good, "descriptions": ["red crest"], "regions": [region], "status": "ok"},
        {"image_id": "no_regions", "image": good, "descriptions": ["red crest"], "regions": [], "status": "no_regions"},
        {"image_id": "empty_descriptions", "image": good, "descriptions": [], "regions": [], "status": "ok"},
        {
            "image_id": "describe_failed",
            "image": good,
            "descriptions": [],
            "regions": [],
            "status": "describe_failed",
            "error": "LLM returned nothing",
        },
        {
            "image_id": "truncated",
            "image": corpus["truncated_jpeg"][0],
            "descriptions": ["red crest"],
            "regions": [region],
            "status": "ok",
        },
        {"image_id": "zero_bytes", "image": b"", "descriptions": ["red crest"], "regions": [region], "status": "ok"},
        {
            "image_id": "degenerate_box",
            "image": good,
            "descriptions": ["red crest", "blue wings"],
            "regions": [
                {"text": "red crest", "box": [0.3, 0.3, 0.3, 0.6], "score": 0.9},
                {"text": "blue wings", "box": [0.2, 0.2, 0.6, 0.7], "score": 0.8},
            ],
            "status": "ok",
        },
        {
            "image_id": "nan_box",
            "image": good,
            "descriptions": ["red crest"],
            "regions": [{"text": "red crest", "box": [float("nan"), 0.1, 0.5, 0.5], "score": 0.9}],
            "status": "ok",
        },
        {
            "image_id": "missing_image",
            "image": None,
            "image_uri": "file:///no/such/image.png",
            "descriptions": ["red crest"],
            "regions": [region],
            "status": "ok",
        },
    ]
    # conform (types) but not validate (values): this file stands for a producer that wrote bad values.
    return conform(pa.Table.from_pylist([{**base, **row} for row in rows]), "annotations")
