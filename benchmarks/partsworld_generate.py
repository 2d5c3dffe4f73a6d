"""PartsWorld generation speed: images/s for `generate`, against bare PNG encoding measured in the same run.

The reference is the cost of only encoding the same number of images of the same size with PIL's default
PNG settings (grainclip.images.encode_image), so the ratio says how much the whole generator (scene
sampling, NumPy backgrounds, drawing, PNG, Parquet writes for images + truth) costs beyond a floor that
any image-producing generator pays. Target from the brief: 1000 images of 224 px in well under a minute.

    python benchmarks/partsworld_generate.py [--n 1000] [--image-size 224]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from grainclip.images import encode_image
from grainclip.partsworld import generate, make_scene


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        paths = generate(Path(tmp) / "pw", n=args.n, n_test=1, seed=0, image_size=args.image_size)
        total = time.perf_counter() - started
        train_s = json.loads(paths.manifest.read_text())["timing_s"]["train"]
        megabytes = sum(f.stat().st_size for f in paths.root.joinpath("train").rglob("*.parquet")) / 1e6

    images = [make_scene("florp", seed).render(args.image_size, args.image_size)[0] for seed in range(50)]
    started = time.perf_counter()
    for k in range(args.n):
        encode_image(images[k % len(images)])
    reference = time.perf_counter() - started

    print(
        f"partsworld generate: {args.n} train images of {args.image_size} px in {train_s:.2f} s "
        f"({args.n / train_s:.0f} images/s; whole call incl. test splits and JSON {total:.2f} s), "
        f"{megabytes:.1f} MB of Parquet (images + truth)"
    )
    print(
        f"reference: PIL default PNG encode of {args.n} such images {reference:.2f} s ({args.n / reference:.0f} images/s)"
    )
    print(f"ratio generate / bare PNG encode: {train_s / reference:.2f}")


if __name__ == "__main__":
    main()
