"""Private memory (USS) of the Parquet read workers vs the number of input files, with no grainclip stage after.

    python benchmarks/ray_read_memory.py [--files 5 20 100 1000] [--reader grainclip|ray] [--work DIR]
    python benchmarks/ray_read_memory.py --data PARTSWORLD_DIR --files 5 20 --reader ray [--per-file-blocks]

The pipeline scale benchmark showed one process growing with dataset size: the read task. This isolates it:
an embedded Ray (2 CPUs), a reader over the first N files of the train images, iterated to the end with nothing
downstream, while a thread samples the USS of every process under this one. Each N runs in a fresh Ray instance.
Prints one JSON record per N: the read workers' peak USS (the largest, and each one's), the peak of the summed USS
of all processes under this one (Ray's services and Ray Data's actors included) and the driver's USS after the read.

`--reader grainclip` (the default) is the reader the Parquet and PartsWorld sources use
(`grainclip.sources.parquet.read_parquet_files`: one task per row group); `--reader ray` is
`ray.data.read_parquet`. Data: `--data` names a PartsWorld folder; without it `--base-images` images at 32 px
are generated under `--work` and tiled (benchmarks/scale_million.py) into `--rows-per-file` rows per file, as many
files as the largest N. At the defaults it records `reader_peak_uss_ratio_1000_vs_20_files` (largest read
worker's peak USS at 1,000 files / at 20) in benchmarks/figures.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from figures import is_recorded_configuration, record  # noqa: E402
from scale_million import tile_partsworld  # noqa: E402
from scale_pipeline import RssSampler  # noqa: E402

MIB = 2**20
#: Not read workers, by command line: Ray's services and Ray Data's own actors (`ray::_StatsActor`, ...).
NOT_READERS = ("raylet", "gcs_server", "dashboard", "log_monitor", "monitor.py", "runtime_env", "ray_client", "ray::_")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="a PartsWorld folder (default: generated and tiled under --work)")
    parser.add_argument("--files", type=int, nargs="+", default=[5, 20, 100, 1000])
    parser.add_argument("--per-file-blocks", action="store_true", help="ray reader: override_num_blocks = files")
    parser.add_argument("--reader", choices=["ray", "grainclip"], default="grainclip")
    parser.add_argument("--rows-per-file", type=int, default=100, help="rows per tiled file (without --data)")
    parser.add_argument("--base-images", type=int, default=1000, help="images generated to tile (without --data)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "grainclip-read-memory")
    args = parser.parse_args()
    recorded = is_recorded_configuration(parser, args, ignore=("work",))

    import ray
    import ray.data

    from grainclip.schema import parquet_files
    from grainclip.sources.parquet import read_parquet_files

    data = args.data or tiled_data(args.work, max(args.files), args.rows_per_file, args.base_images)
    files = [str(f) for f in parquet_files(data / "train" / "images")]
    worker_peaks = {}
    for count in args.files:
        chosen = files[:count]
        load = os.getloadavg()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        sampler = RssSampler(interval=0.3)
        sampler.start()
        started = time.perf_counter()
        options = {"override_num_blocks": len(chosen)} if args.per_file_blocks else {}
        dataset = read_parquet_files(chosen) if args.reader == "grainclip" else ray.data.read_parquet(chosen, **options)
        rows = sum(b.num_rows for b in dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
        wall = time.perf_counter() - started
        driver_uss = psutil.Process().memory_full_info().uss
        sampler.stop.set()
        sampler.join()
        ray.shutdown()
        # Ray names a reused worker ray::IDLE between tasks, so readers are told from the others, not by name.
        workers = sorted(
            (uss, name)
            for pid, uss in sampler.peak_uss.items()
            if not any(other in (name := sampler.peak[pid][1]) for other in NOT_READERS)
        )[::-1]
        worker_peaks[len(chosen)] = workers[0][0]
        print(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_avg_before_after": [round(load[0], 1), round(os.getloadavg()[0], 1)],
            "files": len(chosen),
            "rows": rows,
            "reader": args.reader,
            "per_file_blocks": args.per_file_blocks,
            "read_s": round(wall, 1),
            "read_worker_peak_uss_mib": round(workers[0][0] / MIB, 1),
            "read_workers_peak_uss_mib": [round(uss / MIB, 1) for uss, _ in workers],
            "peak_summed_uss_mib": round(sampler.peak_total_uss / MIB, 1),
            "driver_uss_after_mib": round(driver_uss / MIB, 1),
        }), flush=True)  # fmt: skip

    if recorded:
        ratio = worker_peaks[1000] / worker_peaks[20]
        record("reader_peak_uss_ratio_1000_vs_20_files", round(ratio, 3), "x (read worker peak USS, 1000 / 20 files)")
    return 0


def tiled_data(work: Path, files: int, rows_per_file: int, base_images: int) -> Path:
    """`files` x `rows_per_file` PartsWorld rows at 32 px: a small generated base, tiled (reused when present)."""
    from grainclip.partsworld import generate

    base = work / f"base-{base_images}-{rows_per_file}"
    if not (base / "train" / "images").is_dir():
        generate(base, n=base_images, n_test=8, seed=0, image_size=32, shard_rows=rows_per_file)
    out = work / f"tiled-{files}x{rows_per_file}"
    tile_partsworld(base, out, files * rows_per_file, rows_per_file=rows_per_file)
    return out


if __name__ == "__main__":
    sys.exit(main())
