"""Evaluation throughput at scale: the quickstart's GRAIN and CLIP checkpoints over large PartsWorld test splits.

    python benchmarks/eval_scale.py --run runs/quickstart [--n-test 5000] [--workers 1]

Generates `--n-test` images per test split (seen and novel, 64 px, seed 1), evaluates both models of a finished
`grainclip quickstart` run in every scoring mode with the evaluator the quickstart uses (classification,
region scoring and grounding metrics for GRAIN), and prints one JSON record: images/s per model and split as
the evaluator measures it (first batch to last prediction), wall time of the whole evaluate() call, and peak RSS.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scale_pipeline import print_record  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="output folder of a finished grainclip quickstart")
    parser.add_argument("--n-test", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    from grainclip.evaluate import evaluate
    from grainclip.partsworld import generate
    from grainclip.pipelines.quickstart import evaluate_config
    from grainclip.train.layout import exported_model_dir

    models = {mode: exported_model_dir(args.run / mode) for mode in ("grain", "clip")}
    missing = [str(path) for path in models.values() if not path.exists()]
    if missing:
        print(f"eval_scale: no trained model at {', '.join(missing)}; run grainclip quickstart first", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="eval-scale-"))
    generate(work / "partsworld", n=8, n_test=args.n_test, n_val=1, seed=1, image_size=64)
    config = evaluate_config(models, work / "partsworld", work / "eval", grid_images=0)
    config = config.model_copy(update={"num_workers": args.workers})
    load_before = os.getloadavg()
    started = time.perf_counter()
    results = evaluate(config)
    wall = time.perf_counter() - started
    print_record(
        load_before,
        images_per_split=args.n_test,
        images_per_s={f"{r['model']}/{r['dataset']}": round(r["images_per_second"], 1) for r in results["runs"]},
        evaluate_wall_s=round(wall, 1),
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
