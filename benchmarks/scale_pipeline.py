"""Scale figures of the annotation pipeline: throughput, peak RSS of the driver and of Ray's workers, shard sizes.

    python benchmarks/scale_pipeline.py --images 5000 [--image-size 64] [--rows-per-shard 1000] [--data DIR]

Generates N PartsWorld images (or reuses --data), runs `grainclip.pipelines.run_pipeline` on an embedded local
Ray with the simulated PartsWorld describer and grounder (the models are not what is measured: the plan,
object store traffic, commits and bookkeeping are), and samples the RSS of this process and of every process
under it (raylet, GCS, Ray workers) every 0.5 s. Compare two sizes: memory should be flat in dataset size.
Prints one JSON record.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from figures import command_line  # noqa: E402


class RssSampler(threading.Thread):
    """Peak RSS of this process and, per process, of its descendants (Ray's workers are among them).

    RSS counts every shared page a process has touched, and Ray workers map the object store (shared memory):
    a worker that wrote or read many blocks shows them in its RSS although they are not its own. USS (pages
    only that process holds, psutil's memory_full_info) is recorded beside it to tell the two apart.
    """

    def __init__(self, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.interval, self.stop = interval, threading.Event()
        self.peak: dict[int, tuple[int, str]] = {}
        self.peak_uss: dict[int, int] = {}
        self.peak_total_workers = 0
        self.peak_total_uss = 0  # the largest sum of USS over all processes at one sample

    def run(self) -> None:
        me = psutil.Process()
        while not self.stop.is_set():
            total = total_uss = 0
            for proc in me.children(recursive=True):
                try:
                    memory, name = proc.memory_full_info(), " ".join(proc.cmdline())[:80]
                except psutil.Error:
                    continue
                rss = memory.rss
                if rss > self.peak.get(proc.pid, (0, ""))[0]:
                    self.peak[proc.pid] = (rss, name)
                self.peak_uss[proc.pid] = max(self.peak_uss.get(proc.pid, 0), memory.uss)
                total_uss += memory.uss
                if "ray::" in name or "default_worker" in name:
                    total += rss
            self.peak_total_workers = max(self.peak_total_workers, total)
            self.peak_total_uss = max(self.peak_total_uss, total_uss)
            self.stop.wait(self.interval)


def print_record(load_before: tuple[float, ...], **figures: object) -> None:
    """One JSON line: when and how it ran, the figures, and the load average around them (the machines are shared)."""
    print(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "command": command_line(),
                **figures,
                "load_average_before": [round(x, 1) for x in load_before],
                "load_average_after": [round(x, 1) for x in os.getloadavg()],
                "cpus": os.cpu_count(),
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--rows-per-shard", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data", type=Path, default=None, help="Existing PartsWorld folder with >= N train images.")
    args = parser.parse_args()

    from grainclip.config.base import parse_config
    from grainclip.config.pipeline import PipelineConfig
    from grainclip.partsworld import generate
    from grainclip.pipelines import run_pipeline

    work = Path(tempfile.mkdtemp(prefix="scale-pipeline-"))
    data = args.data or work / "partsworld"
    generate_s = None
    if args.data is None:
        started = time.perf_counter()
        generate(data, n=args.images, n_test=8, seed=0, image_size=args.image_size)
        generate_s = time.perf_counter() - started
    truth = {"truth": str(data)}
    config = parse_config({
        "output": str(work / "run"),
        "source": {"kind": "partsworld", "path": str(data)},
        "describe": {"describer": {"name": "partsworld", "options": truth}, "num_cpus": 0.5, "batch_size": args.batch_size},
        "ground": {"grounder": {"name": "partsworld", "options": truth}, "num_cpus": 0.5, "batch_size": args.batch_size},
        "sink": {"rows_per_shard": args.rows_per_shard},
    }, PipelineConfig)  # fmt: skip

    sampler = RssSampler()
    sampler.start()
    load_before = os.getloadavg()
    started = time.perf_counter()
    result = run_pipeline(config)
    wall = time.perf_counter() - started
    sampler.stop.set()
    sampler.join()

    shards = sorted(p.stat().st_size for p in result.annotations.glob("part-*.parquet"))
    worker_pids = [pid for pid, (_, name) in sampler.peak.items() if "ray::" in name or "default_worker" in name]
    workers = [sampler.peak[pid] for pid in worker_pids]
    mib = 2**20
    print_record(
        load_before,
        images=args.images,
        image_size=args.image_size,
        rows=result.rows,
        counts=result.counts,
        generate_s=round(generate_s, 1) if generate_s else None,
        wall_s_incl_ray_start=round(wall, 1),
        rows_per_s_wall=round(result.rows / wall, 1),
        rows_per_s_manifest=result.manifest.attempts[-1].rows_per_second,
        driver_peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        worker_peak_rss_mib_max=round(max((r for r, _ in workers), default=0) / mib, 1),
        worker_peak_rss_mib_median=round(statistics.median([r for r, _ in workers]) / mib, 1) if workers else None,
        worker_peak_uss_mib_max=round(max((sampler.peak_uss[pid] for pid in worker_pids), default=0) / mib, 1),
        workers_peak_total_mib=round(sampler.peak_total_workers / mib, 1),
        worker_processes_seen=len(workers),
        top_processes_rss_uss_mib=sorted(
            ((round(r / mib), round(sampler.peak_uss.get(pid, 0) / mib), n) for pid, (r, n) in sampler.peak.items()),
            reverse=True,
        )[:5],
        shards=len(shards),
        shard_mib_min_median_max=[round(shards[0] / mib, 2), round(statistics.median(shards) / mib, 2), round(shards[-1] / mib, 2)] if shards else None,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
