"""The benchmarks' shared figures.json updater and the novel-concept benchmark's tables, on synthetic results.

The novel-concept benchmark itself trains 18 models (minutes each on CPU), too long for a test; its tables,
headline figures and recording rule are checked on results written as its runs write them, which its
resume path then reads back.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import figures  # noqa: E402
import partsworld_novel  # noqa: E402


def test_record_updates_one_name_in_place_and_keeps_the_others(tmp_path):
    path = tmp_path / "figures.json"
    path.write_text(json.dumps({"other": {"value": 1.5, "unit": "s", "command": "x", "date": "d", "commit": "c"}}))
    entry = figures.record("ratio_a", 0.93, "ratio", path=path)
    figures.record("ratio_b", 2.0, "ratio", command="python benchmarks/b.py --n 3", path=path)
    figures.record("ratio_a", 0.95, "ratio", path=path)

    stored = json.loads(path.read_text())
    assert stored["other"] == {"value": 1.5, "unit": "s", "command": "x", "date": "d", "commit": "c"}
    assert stored["ratio_a"]["value"] == 0.95 and stored["ratio_b"]["command"] == "python benchmarks/b.py --n 3"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=BENCHMARKS, capture_output=True, text=True).stdout.strip()
    assert entry["commit"] == head and len(head) == 40
    assert entry["command"] == "python " + " ".join(sys.argv)
    assert entry["date"].endswith(" UTC")
    assert [p.name for p in tmp_path.iterdir()] == ["figures.json"]  # no temporary file left behind


def test_only_the_default_configuration_counts_as_recorded():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="runs/x")
    parser.add_argument("--steps", type=int, default=600)
    assert figures.is_recorded_configuration(parser, parser.parse_args(["--out", "/tmp/y"]), ignore=("out",))
    assert not figures.is_recorded_configuration(parser, parser.parse_args(["--out", "/tmp/y"]))
    assert not figures.is_recorded_configuration(parser, parser.parse_args(["--steps", "50"]), ignore=("out",))


# GRAIN grain / CLIP+descriptors / GRAIN global+descriptors novel top-1 per (noise, seed): made-up numbers
NOVEL = {
    "clean": [(0.80, 0.10, 0.20), (0.70, 0.20, 0.30), (0.75, 0.15, 0.25)],
    "moderate": [(0.62, 0.10, 0.10), (0.72, 0.20, 0.12), (0.52, 0.12, 0.11)],
    "heavy": [(0.40, 0.10, 0.05), (0.30, 0.12, 0.05), (0.35, 0.08, 0.05)],
}


def synthetic_runs() -> list[dict]:
    runs = []
    for noise, per_seed in NOVEL.items():
        for seed, (grain, clip_d, grain_d) in enumerate(per_seed):
            top1 = {f"{model}/test_seen/{mode}": 0.9 for model, mode in partsworld_novel.ROWS}
            top1 |= {f"{model}/test_novel/{mode}": 0.05 for model, mode in partsworld_novel.ROWS}
            top1 |= {
                partsworld_novel.GRAIN_G: grain,
                partsworld_novel.CLIP_D: clip_d,
                partsworld_novel.GRAIN_D: grain_d,
            }
            runs.append(
                {
                    "seed": seed,
                    "noise": noise,
                    "seconds": 1.0,
                    "top1": top1,
                    "grounding": {"grain/test_seen": 0.5 + 0.1 * seed, "grain/test_novel": 0.4},
                }
            )
    return runs


def test_headline_figures_and_targets_from_the_moderate_runs():
    figures_ = partsworld_novel.headline_figures(synthetic_runs())
    grain, clip_d, grain_d = zip(*NOVEL["moderate"], strict=True)
    assert figures_ == pytest.approx(
        {
            "novel_grain_top1_mean": statistics.mean(grain),
            "novel_grain_top1_min_seed": min(grain),
            "novel_clip_descriptors_top1_mean": statistics.mean(clip_d),
            "novel_grain_global_descriptors_top1_mean": statistics.mean(grain_d),
        }
    )
    text = "\n".join(partsworld_novel.targets_table(figures_))
    assert "2 of 3 hold" in text
    assert "| GRAIN grain novel top-1 mean >= 60% | 62.0 | yes |" in text
    assert "| every seed's GRAIN grain novel top-1 > 40% | 52.0 | yes |" in text
    # GRAIN global+descriptors 11.0 on average, under CLIP global+descriptors' 14.0
    assert "| GRAIN global+descriptors >= CLIP global+descriptors on novel classes (means) | 11.0 | **no** |" in text
    assert partsworld_novel.headline_figures([r for r in synthetic_runs() if r["noise"] != "moderate"]) == {}


def test_tables_per_noise_level_and_the_sweep():
    text = partsworld_novel.markdown(synthetic_runs())
    tables = [line for line in text.splitlines() if line.startswith("Noise = ")]
    assert tables == [
        f"Noise = {noise}: top-1 (%), mean ± std over seeds [0, 1, 2]." for noise in ("moderate", "clean", "heavy")
    ]
    assert "| grain | grain | 90.0 ± 0.0 | 62.0 ± 10.0 |" in text  # moderate: 0.62, 0.72, 0.52
    assert "| grain | grain | 90.0 ± 0.0 | 75.0 ± 5.0 |" in text  # clean: 0.8, 0.7, 0.75
    assert "GRAIN grounding recall@IoU0.5 on test_seen: 0.60 ± 0.10." in text
    assert "Novel classes per seed, CLIP global+descriptors vs GRAIN grain: seed 0: 10.0 vs 62.0; " in text
    sweep = [line for line in text.splitlines() if line.startswith(("| clean |", "| moderate |", "| heavy |"))]
    assert [line.split(" | ")[0] for line in sweep] == ["| clean", "| moderate", "| heavy"]
    # heavy: grain − CLIP+descriptors per seed 0.30, 0.18, 0.27
    # ...and the annotation quality columns, n/a for runs without it
    assert sweep[2] == "| heavy | 3 | 10.0 ± 2.0 | 5.0 ± 0.0 | 35.0 ± 5.0 | 25.0 ± 6.2 | 0.60 ± 0.10 |" + " n/a |" * 4


def write_finished_runs(out: Path, runs: list[dict]) -> None:
    """Each run's result.json where the benchmark keeps it, so main() resumes from them instead of training."""
    for run in runs:
        work = out / f"seed{run['seed']}-{run['noise']}"
        work.mkdir(parents=True)
        (work / "result.json").write_text(json.dumps(run))


def test_main_resumes_finished_runs_and_records_only_the_recorded_configuration(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(figures, "FIGURES", tmp_path / "figures.json")
    write_finished_runs(tmp_path / "bench", synthetic_runs())

    argv = ["benchmarks/partsworld_novel.py", "--out", str(tmp_path / "bench")]
    monkeypatch.setattr(sys, "argv", [*argv, "--seeds", "0"])
    partsworld_novel.main()
    assert not (tmp_path / "figures.json").exists()  # one seed is a smoke run, not the benchmark

    monkeypatch.setattr(sys, "argv", argv)
    partsworld_novel.main()
    printed = capsys.readouterr().out
    assert "| heavy | 3 |" in printed
    stored = json.loads((tmp_path / "figures.json").read_text())
    assert set(stored) == set(partsworld_novel.headline_figures(synthetic_runs()))
    assert stored["novel_grain_top1_min_seed"]["value"] == pytest.approx(0.52)
    assert stored["novel_grain_top1_mean"]["unit"] == "fraction"
    assert stored["novel_grain_top1_mean"]["command"] == "python " + " ".join(argv)
    results = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert len(results["runs"]) == 9 and {r["noise"] for r in results["runs"]} == set(partsworld_novel.NOISE)


def test_report_only_scores_the_annotations_of_finished_runs(tmp_path, monkeypatch, partsworld_small):
    """Runs finished before quality existed get it from their annotations/ folder; nothing is trained."""
    monkeypatch.setattr(figures, "FIGURES", tmp_path / "figures.json")
    out = tmp_path / "bench"
    runs = [r for r in synthetic_runs() if r["seed"] == 0]
    write_finished_runs(out, runs)
    for run in runs:  # the data and annotations each run trained on, where the benchmark keeps them
        work = out / f"seed0-{run['noise']}"
        shutil.copytree(partsworld_small, work / "partsworld")
        partsworld_novel.annotate_split(work / "partsworld", run["noise"], 0, work / "annotations")
    monkeypatch.setattr(sys, "argv", ["partsworld_novel.py", "--out", str(out), "--seeds", "0", "--report-only"])
    partsworld_novel.main()

    quality = {r["noise"]: r["quality"] for r in json.loads((out / "results.json").read_text())["runs"]}
    clean, moderate, heavy = quality["clean"], quality["moderate"], quality["heavy"]
    # Noise-free simulated annotators replay the truth exactly.
    assert clean["description_recall"] == clean["description_precision"] == clean["box_recall_at_0.5"] == 1.0
    assert clean["all_parts_found"] == 1.0 and clean["images"] == 64
    assert heavy["description_recall"] < moderate["description_recall"] < 1.0
    assert heavy["box_recall_at_0.5"] < moderate["box_recall_at_0.5"] < 1.0
    assert json.loads((out / "seed0-heavy" / "result.json").read_text())["quality"] == heavy  # scored once, kept
    text = (out / "results.md").read_text()
    assert "annotation description recall" in text and "Annotation quality against the truth" in text
    assert (out / "quality_vs_advantage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "figures.json").exists()  # one seed: not the recorded configuration
