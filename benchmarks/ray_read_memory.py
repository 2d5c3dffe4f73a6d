"""Private memory (USS) of Ray Data's Parquet read worker vs the number of files it reads, with no grainclip stage.

    python benchmarks/ray_read_memory.py --data PARTSWORLD_DIR --files 5 10 20 [--per-file-blocks] [--reader grainclip]

The pipeline scale benchmark showed one process growing with dataset size: the read task. This isolates it:
an embedded Ray (2 CPUs), `ray.data.read_parquet` over the first N files of PARTSWORLD_DIR/train/images,
iterated to the end with nothing downstream, while a thread samples the USS of every process under this one.
Each N runs in a fresh Ray instance. Prints one JSON record per N. `--reader grainclip` measures the reader the
Parquet and PartsWorld sources use instead (`grainclip.sources.parquet.read_parquet_files`: one task per row group).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from scale_pipeline import RssSampler  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--files", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--per-file-blocks", action="store_true", help="override_num_blocks = number of files")
    parser.add_argument("--reader", choices=["ray", "grainclip"], default="ray")
    args = parser.parse_args()

    import ray
    import ray.data

    from grainclip.schema import parquet_files
    from grainclip.sources.parquet import read_parquet_files

    files = [str(f) for f in parquet_files(args.data / "train" / "images")]
    for count in args.files:
        chosen = files[:count]
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        sampler = RssSampler(interval=0.3)
        sampler.start()
        options = {"override_num_blocks": len(chosen)} if args.per_file_blocks else {}
        dataset = read_parquet_files(chosen) if args.reader == "grainclip" else ray.data.read_parquet(chosen, **options)
        rows = sum(b.num_rows for b in dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
        sampler.stop.set()
        sampler.join()
        ray.shutdown()
        # The reader is the largest by USS (Ray names a reused worker ray::IDLE between tasks, so no name test).
        top = sorted(((uss, sampler.peak[pid][1].strip()) for pid, uss in sampler.peak_uss.items()), reverse=True)
        print(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "files": len(chosen),
            "rows": rows,
            "per_file_blocks": args.per_file_blocks,
            "reader": args.reader,
            "top_processes_peak_uss_mib": [(round(uss / 2**20, 1), name) for uss, name in top[:3]],
        }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
