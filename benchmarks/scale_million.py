"""A million PartsWorld images on one node: throughput and the peak summed USS at 100k and 1M, exactly-once after
a SIGKILL at ~50 %, resume start-up at 1M committed rows, and the Parquet reader's memory at 1,000 input files.

    python benchmarks/scale_million.py [--sizes 100000 1000000] [--work DIR] [--base-images 20000]
    (kept out of CI: at the defaults it runs for hours on 2 cores; smoke it with --sizes 2000 4000 --base-images 1000)

Data: `--base-images` PartsWorld images at 32 px are generated once, then tiled (images and truth shards copied
with fresh image_ids `pw-train-NNNNNNN`) up to the largest size, 1000 rows per file -- the pipeline, not the
generator, is what is measured, and the copies are real PartsWorld rows with their truth. Each size gets its own
folder holding the first N rows, so a run reads exactly N images.

Runs: each is a separate `grainclip pipeline run` (embedded Ray, simulated PartsWorld describer and grounder,
0.5 CPU each, batch 64, 1000 rows per shard), started with the nice value this process has. A sampler adds up
the USS (memory only that process holds) of every process under this one -- driver, raylet, GCS, workers,
actors -- every second and keeps the peak; wall time includes Ray's start, rows/s is the attempt's own figure
from the manifest. Then, at the largest size:
- kill: a new run is SIGKILLed once about half its shards are committed, everything it started is killed by
  pid, and a rerun finishes it; duckdb counts rows and distinct image_ids and checks every input id is there.
- resume start-up: `RunDir.committed_ids()` (what every attempt does first) over the committed shards, timed,
  with the size of the id array and this process's peak RSS growth.
- reader: `benchmarks/ray_read_memory.py` on that size's files, Ray's read_parquet against grainclip's reader.

Prints one JSON record per phase; with the default arguments (any `--skip`) records `scale_1m_peak_memory_ratio`,
`scale_1m_rows_per_s_ratio` and (unless the kill is skipped) `scale_1m_exactly_once` in benchmarks/figures.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).parent))
from figures import is_recorded_configuration, record  # noqa: E402
from scale_pipeline import RssSampler, print_record  # noqa: E402

ROWS_PER_FILE = 1000
MIB = 2**20


def tile_partsworld(base: Path, out: Path, images: int, rows_per_file: int = ROWS_PER_FILE) -> None:
    """`out`: a PartsWorld folder whose train split is the first `images` rows of `base`'s, tiled with new ids,
    `rows_per_file` rows per file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    marker = out / "tiled.json"
    wanted = {"images": images, "rows_per_file": rows_per_file, "base": str(base)}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        return
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(base, out, ignore=shutil.ignore_patterns("train"))
    sources = {kind: sorted((base / "train" / kind).glob("part-*.parquet")) for kind in ("images", "truth")}
    if not sources["images"]:
        raise RuntimeError(f"no rows under {base}")
    for kind in ("images", "truth"):
        (out / "train" / kind).mkdir(parents=True)
    start = 0
    while start < images:
        for index in range(len(sources["images"])):
            if start >= images:
                break
            for kind in ("images", "truth"):
                table = pq.read_table(sources[kind][index])
                table = table.slice(0, min(table.num_rows, rows_per_file, images - start))
                ids = pa.array([f"pw-train-{start + i:07d}" for i in range(table.num_rows)], pa.string())
                table = table.set_column(table.schema.get_field_index("image_id"), table.schema.field("image_id"), ids)
                pq.write_table(
                    table, out / "train" / kind / f"part-{start // rows_per_file:05d}.parquet", compression="zstd"
                )
            start += min(rows_per_file, images - start)
    marker.write_text(json.dumps(wanted))


def pipeline_config(data: Path, out: Path, path: Path) -> Path:
    import yaml

    truth = {"truth": str(data)}
    path.write_text(yaml.safe_dump({
        "output": str(out),
        "source": {"kind": "partsworld", "path": str(data)},
        "describe": {"describer": {"name": "partsworld", "options": truth}, "num_cpus": 0.5, "batch_size": 64},
        "ground": {"grounder": {"name": "partsworld", "options": truth}, "num_cpus": 0.5, "batch_size": 64},
        "sink": {"rows_per_shard": ROWS_PER_FILE},
    }))  # fmt: skip
    return path


def committed_shards(out: Path) -> int:
    return len(list((out / "annotations").glob("part-*.parquet")))


def run_measured(config: Path, log: Path, kill_at_shards: int | None = None) -> dict:
    """One `grainclip pipeline run`: wall, exit code, peak summed USS; SIGKILLed at `kill_at_shards` if given."""
    from grainclip.testing.runs import PipelineProcess

    sampler = RssSampler(interval=1.0)
    sampler.start()
    started = time.perf_counter()
    run = PipelineProcess(config, log)
    killed = False
    try:
        if kill_at_shards is not None:
            out = Path(_output_of(config))
            run.wait_until(lambda: committed_shards(out) >= kill_at_shards, timeout=6 * 3600)
            os.kill(run.process.pid, signal.SIGKILL)
            killed = True
        returncode = run.process.wait()
    finally:
        run.kill_everything()
        sampler.stop.set()
        sampler.join()
    return {
        "returncode": returncode,
        "killed": killed,
        "wall_s": round(time.perf_counter() - started, 1),
        "peak_summed_uss_mib": round(sampler.peak_total_uss / MIB, 1),
        "top_processes_peak_uss_mib": sorted(
            ((round(sampler.peak_uss[pid] / MIB), name[:60]) for pid, (_, name) in sampler.peak.items()), reverse=True
        )[:8],
    }


def _output_of(config: Path) -> str:
    import yaml

    return yaml.safe_load(config.read_text())["output"]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def count_with_duckdb(out: Path, data: Path) -> dict:
    import duckdb

    shards = str(out / "annotations" / "part-*.parquet")
    inputs = str(data / "train" / "images" / "*.parquet")
    connection = duckdb.connect()
    rows, distinct = connection.execute(
        f"SELECT count(*), count(DISTINCT image_id) FROM read_parquet('{shards}')"
    ).fetchone()
    missing = connection.execute(
        f"SELECT count(*) FROM read_parquet('{inputs}') i ANTI JOIN read_parquet('{shards}') o USING (image_id)"
    ).fetchone()[0]
    return {"rows": rows, "distinct_image_ids": distinct, "input_ids_missing": missing}


def resume_startup(out: Path) -> dict:
    from grainclip.pipelines.rundir import RunDir

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    ids = RunDir(out).committed_ids()
    seconds = time.perf_counter() - started
    return {
        "committed_ids": len(ids),
        "seconds": round(seconds, 2),
        "id_array_mib": round(ids.nbytes / MIB, 1),
        "rss_growth_mib": round((psutil.Process().memory_info().rss - rss_before) / MIB, 1),
        "peak_rss_growth_mib": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[100_000, 1_000_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--base-images", type=int, default=20_000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path("runs/scale-million"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["kill", "resume", "reader"])
    args = parser.parse_args()
    recorded = is_recorded_configuration(parser, args, ignore=("work", "skip"))  # a figure is recorded if measured

    from grainclip.partsworld import generate

    work = args.work.resolve()
    base = work / f"base-{args.base_images}-{args.image_size}px"
    if not (base / "manifest.json").exists():
        started = time.perf_counter()
        generate(base, n=args.base_images, n_test=8, seed=0, image_size=args.image_size, shard_rows=ROWS_PER_FILE)
        print_record(
            os.getloadavg(), phase="generate", images=args.base_images, seconds=round(time.perf_counter() - started, 1)
        )

    figures = {}
    for size in args.sizes:
        data = work / f"partsworld-{size}"
        started = time.perf_counter()
        tile_partsworld(base, data, size)
        tile_s = round(time.perf_counter() - started, 1)
        out = work / f"run-{size}"
        shutil.rmtree(out, ignore_errors=True)
        load = os.getloadavg()
        measured = run_measured(pipeline_config(data, out, work / f"pipeline-{size}.yaml"), work / f"run-{size}.log")
        if measured["returncode"] != 0 or manifest(out)["rows"] != size:
            print_record(load, phase="run", images=size, status="failed", **measured)
            print(f"run at {size} failed; see {work}/run-{size}.log", file=sys.stderr)
            return 1
        done = manifest(out)
        figures[size] = {**measured, "rows": done["rows"], "rows_per_s": done["attempts"][-1]["rows_per_second"]}
        print_record(load, phase="run", images=size, tile_s=tile_s, status=done["status"], **figures[size])

    small, large = args.sizes
    memory_ratio = figures[large]["peak_summed_uss_mib"] / figures[small]["peak_summed_uss_mib"]
    speed_ratio = figures[large]["rows_per_s"] / figures[small]["rows_per_s"]
    print_record(
        os.getloadavg(),
        phase="ratios",
        peak_memory_ratio=round(memory_ratio, 3),
        rows_per_s_ratio=round(speed_ratio, 3),
    )
    data = work / f"partsworld-{large}"

    if "resume" not in args.skip:
        print_record(os.getloadavg(), phase="resume_startup", **resume_startup(work / f"run-{large}"))

    exactly_once = None
    if "kill" not in args.skip:
        out = work / f"run-{large}-killed"
        shutil.rmtree(out, ignore_errors=True)
        config = pipeline_config(data, out, work / f"pipeline-{large}-killed.yaml")
        load = os.getloadavg()
        first = run_measured(config, work / f"run-{large}-killed-1.log", kill_at_shards=large // ROWS_PER_FILE // 2)
        committed_at_kill = committed_shards(out)
        second = run_measured(config, work / f"run-{large}-killed-2.log")
        counted = count_with_duckdb(out, data)
        exactly_once = bool(
            second["returncode"] == 0
            and counted["rows"] == counted["distinct_image_ids"] == large
            and counted["input_ids_missing"] == 0
        )
        print_record(
            load, phase="kill_rerun", images=large, shards_at_kill=committed_at_kill, first=first, second=second,
            rerun_rows_skipped=manifest(out)["attempts"][-1]["rows_skipped"], **counted, exactly_once=exactly_once,
        )  # fmt: skip

    if "reader" not in args.skip:
        command = [sys.executable, str(Path(__file__).parent / "ray_read_memory.py"), "--data", str(data)]
        files = large // ROWS_PER_FILE
        for reader in ("ray", "grainclip"):
            done = subprocess.run(
                [*command, "--files", "20", str(files), "--reader", reader], capture_output=True, text=True
            )
            print(done.stdout.strip() or done.stderr[-2000:])

    if recorded:
        command = "python benchmarks/scale_million.py"
        record("scale_1m_peak_memory_ratio", round(memory_ratio, 3), "x (peak summed USS, 1M / 100k)", command)
        record("scale_1m_rows_per_s_ratio", round(speed_ratio, 3), "x (attempt rows/s, 1M / 100k)", command)
        if exactly_once is not None:
            record("scale_1m_exactly_once", exactly_once, "bool (SIGKILL at ~50 %, rerun, duckdb count)", command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
