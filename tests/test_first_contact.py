"""First contact: the mistakes a new user makes, each run through the real CLI.

Every case is a row of `CASES`: a builder that writes the inputs and returns the CLI arguments, the exit code,
the `error:` lines expected (one regex each, in order; nothing else may start with `error:`, and there is never
a traceback), and a check of what the records on disk say. Add a case by adding a row.

Preflight cases need no Ray. The cases that run a pipeline run the CLI as a user does, in its own process with
its own embedded Ray (in-process, Ray's log handlers outlive typer's captured streams); one of them checks the
session's `tiny_vllm_run` (a real vLLM engine on CPU with the default engine config and no environment variable
set by the test: the describer sizes its own KV cache from the machine), which other modules read too.

The evaluator's cases run a tiny open_clip model on class folders of transparent images; the config reference's
cases check docs/config.md against the models and that every printed example loads.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from grainclip.config.base import load_config, parse_config
from grainclip.config.reference import CONFIG_KINDS, EXAMPLE_REQUIRED, config_class
from grainclip.schema import read_table
from grainclip.testing.clip import SMALLEST_CLIP_CONFIG
from grainclip.testing.corpus import write_bad_input_corpus

REPO = Path(__file__).resolve().parents[1]
BIRDS = ["owl", "unicorn", "cardinal", "egret", "heron", "ibis", "kiwi", "osprey"]
CLI = [sys.executable, "-m", "grainclip.cli"]


@dataclass
class Env:
    """What a case's builder gets: a fresh folder and the session's shared inputs."""

    tmp: Path
    partsworld: Path
    tiny_models: dict[str, Path]
    notes: dict[str, Any] = field(default_factory=dict)  # what a builder saw, for its check

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def pipeline(self, **changes: Any) -> dict:
        """A pipeline config on the small PartsWorld set with the simulated annotators; dotted-key changes."""
        truth = {"truth": str(self.partsworld / "train" / "truth")}
        config: dict[str, Any] = {
            "output": str(self.out),
            "source": {"kind": "partsworld", "path": str(self.partsworld)},
            "describe": {"describer": {"name": "partsworld", "options": truth}, "num_cpus": 0.25},
            "ground": {"grounder": {"name": "partsworld", "options": truth}, "num_cpus": 0.25},
            "sink": {"rows_per_shard": 16},
        }
        for dotted, value in changes.items():
            *parents, leaf = dotted.split(".")
            node = config
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = value
        return config

    def write(self, config: dict, name: str = "pipeline.yaml") -> str:
        path = self.tmp / name
        path.write_text(yaml.safe_dump(config))
        return str(path)

    def images(self, n: int = 8) -> list[dict]:
        return read_table(self.partsworld / "train" / "images", "images").to_pylist()[:n]


@dataclass
class Case:
    name: str
    build: Callable[[Env], list[list[str]]] | None  # CLI argument lists, run in order; the last one is checked
    exit_code: int
    errors: list[str]  # regexes, one per expected `error:` line of the last command
    check: Callable[[Env], None] | None = None  # what the records say
    subprocess: bool = False  # run the commands as separate processes (each with its own embedded Ray)
    marks: list[Any] = field(default_factory=list)
    ran: str | None = None  # instead of build: the session fixture (a CliRun) that already ran the command


# --- builders -------------------------------------------------------------------------------------------------


def parquet_without_image_id(env: Env) -> list[list[str]]:
    rows = [{"id": r["image_id"], "image": r["image"], "caption": r["caption"]} for r in env.images()]
    pq.write_table(pa.Table.from_pylist(rows), env.tmp / "no_id.parquet")
    return [
        ["pipeline", "run", env.write(env.pipeline(source={"kind": "parquet", "path": str(env.tmp / "no_id.parquet")}))]
    ]


def captions_csv_with_a_wrong_column(env: Env) -> list[list[str]]:
    folder = env.tmp / "folder"
    folder.mkdir()
    for row in env.images(4):
        (folder / f"{row['image_id']}.png").write_bytes(row["image"])
    (env.tmp / "captions.csv").write_text(
        "path,caption\n" + "".join(f"{p.name},a photo\n" for p in sorted(folder.iterdir()))
    )
    source = {"kind": "image_folder", "path": str(folder), "captions_csv": str(env.tmp / "captions.csv")}
    return [["pipeline", "run", env.write(env.pipeline(source=source))]]


def three_mistakes_at_once(env: Env) -> list[list[str]]:
    config = env.pipeline(**{"ground.grounder.name": "yolo", "source.path": str(env.tmp / "nowhere")})
    config["describe"]["describer"] = {"name": "vllm", "model": str(env.tiny_models["llm"]), "multimodal": True}
    return [["pipeline", "run", env.write(config)]]


def vllm_context_above_the_model_limit(env: Env) -> list[list[str]]:
    config = env.pipeline()
    config["describe"]["describer"] = {
        "name": "vllm",
        "model": str(env.tiny_models["llm"]),
        "engine": {"max_model_len": 4096},
    }
    return [["pipeline", "run", env.write(config)]]


def vllm_kv_cache_larger_than_the_machine(env: Env) -> list[list[str]]:
    config = env.pipeline()
    config["describe"]["describer"] = {
        "name": "vllm",
        "model": str(env.tiny_models["llm"]),
        "engine": {"kv_cache_memory_bytes": 2**50},
    }
    return [["pipeline", "run", env.write(config)]]


# --- evaluator and config reference: builders and checks -------------------------------------------------------


def birds(env: Env) -> Path:
    """Class folders of transparent images: red under alpha 0 (only `image_alpha: drop` sees it), a colour per class."""
    for k, name in enumerate(BIRDS):
        (env.tmp / "birds" / name).mkdir(parents=True)
        for i in range(2):
            pixels = np.zeros((24, 24, 4), dtype=np.uint8)
            pixels[..., 0] = 255
            pixels[6:18, 6:18] = (30 * k, 255 - 30 * k, 40 * i, 255)
            Image.fromarray(pixels, "RGBA").save(env.tmp / "birds" / name / f"{i}.png")
    return env.tmp / "birds"


def evaluate(env: Env, descriptor_classes: list[str] | None = None, **changes: Any) -> list[str]:
    """`grainclip evaluate` of a tiny open_clip model on the birds, with a descriptor file for the given classes."""
    clip = env.tmp / "tiny-clip.json"
    clip.write_text(json.dumps(SMALLEST_CLIP_CONFIG))
    dataset: dict[str, Any] = {"name": "birds", "source": {"kind": "image_folder", "path": str(birds(env))}}
    if descriptor_classes is not None:
        dataset["descriptors"] = str(env.tmp / "descriptors.json")
        (env.tmp / "descriptors.json").write_text(
            json.dumps({name: [f"{name} feathers", "a long beak"] for name in descriptor_classes})
        )
    config = {
        "out": str(env.out),
        "models": [{"label": "clip", "type": "open_clip", "name": str(clip)}],
        "datasets": [dataset],
        "modes": ["global"] if descriptor_classes is None else ["global", "global+descriptors"],
        "batch_size": 8,
        "num_workers": 0,
        "progress": False,
        **changes,
    }
    return ["evaluate", env.write(config, "evaluate.yaml")]


def descriptors_for_more_classes(env: Env) -> list[list[str]]:
    return [evaluate(env, ["albatross", "penguin", "swan", *BIRDS])]  # a published file covering more classes


def descriptors_for_fewer_classes(env: Env) -> list[list[str]]:
    return [evaluate(env, ["owl"])]


def evaluate_with_each_alpha(env: Env) -> list[list[str]]:
    default = evaluate(env, BIRDS)
    return [[*default, "--out", str(env.tmp / "white")], [*default, "--set", "image_alpha=drop"]]


def stale_config_reference(env: Env) -> list[list[str]]:
    stale = env.tmp / "config.md"
    stale.write_text((REPO / "docs" / "config.md").read_text().replace("| `image_alpha` |", "| `alpha` |"))
    return [["config", "docs", "--check", "--out", str(stale)]]


def config_example(kind: str) -> Callable[[Env], list[list[str]]]:
    def build(env: Env) -> list[list[str]]:
        from typer.testing import CliRunner

        from grainclip.cli import app

        env.notes["kind"], env.notes["yaml"] = kind, CliRunner().invoke(app, ["config", "example", kind]).stdout
        return [["config", "example", kind]]

    return build


def extra_descriptor_classes_counted(env: Env) -> None:
    run = json.loads((env.out / "results.json").read_text())["runs"][0]
    assert [c["mode"] for c in run["classification"]] == ["global", "global+descriptors"]
    assert run["descriptor_classes_ignored"] == 3
    assert "- birds: the descriptor file's 3 other class(es) were ignored" in (env.out / "results.md").read_text()


def predictions_per_image_and_alpha_recorded(env: Env) -> None:
    """predictions.parquet: every image once per mode, top-1 as reported; the alpha option changed the pixels."""
    tables = {}
    for folder, alpha in ((env.out, "drop"), (env.tmp / "white", "white")):
        results = json.loads((folder / "results.json").read_text())
        assert results["config"]["image_alpha"] == alpha and results["predictions"] == "predictions.parquet"
        run, tables[alpha] = results["runs"][0], pq.read_table(folder / "predictions.parquet")
        rows = tables[alpha].to_pylist()
        assert run["n_predictions"] == len(rows) == 2 * 16
        for record in run["classification"]:
            mine = [r for r in rows if r["mode"] == record["mode"]]
            assert {(r["model"], r["dataset"]) for r in mine} == {("clip", "birds")}
            assert sorted(r["image_id"] for r in mine) == sorted(str(p) for p in (env.tmp / "birds").glob("*/*.png"))
            assert all(r["label"] == Path(r["image_id"]).parent.name for r in mine)
            assert all(len(r["top5_classes"]) == 5 and r["top5_scores"] == sorted(r["top5_scores"])[::-1] for r in mine)
            assert sum(r["top5_classes"][0] == r["label"] for r in mine) / 16 == pytest.approx(record["top1"])
    assert tables["drop"]["top5_scores"] != tables["white"]["top5_scores"]  # the hidden red, seen only with drop


def every_key_described(env: Env) -> None:
    rows = [line for line in (REPO / "docs" / "config.md").read_text().splitlines() if line.startswith("| `")]
    assert len(rows) > 200 and not [row for row in rows if row.endswith("|  |")]  # key, type, default, description


def reference_left_as_it_was(env: Env) -> None:
    assert "| `alpha` |" in (env.tmp / "config.md").read_text(), "--check must not rewrite the file"


def example_loads(env: Env) -> None:
    kind, text = env.notes["kind"], env.notes["yaml"]
    assert text.startswith(f"# An example `grainclip {kind}` config") and text.count("\n# ") > 10  # commented
    path = env.tmp / "example.yaml"
    path.write_text(text)
    loaded = load_config(path, config_class(kind))  # the printed example loads as it is
    assert loaded == parse_config(EXAMPLE_REQUIRED[kind], config_class(kind))  # defaults + the required keys


def bad_input_corpus(env: Env, **changes: Any) -> str:
    corpus = write_bad_input_corpus(env.tmp / "corpus")
    env.notes["ids"] = sorted({r["image_id"] for r in pq.read_table(corpus["images"]).to_pylist()})
    source = {"kind": "parquet", "path": str(corpus["images"])}
    return env.write(env.pipeline(source=source, **{"sink.rows_per_shard": 4, **changes}))


def too_many_failures_at_the_end(env: Env) -> list[list[str]]:
    """Every row is written, most failed, fewer rows than error_check_min_rows: the end says so, twice."""
    path = bad_input_corpus(env)
    code, stderr = run_cli(["pipeline", "run", path], separate=True)
    env.notes["first"] = (code, [line for line in stderr.splitlines() if line.startswith("error:")])
    return [["pipeline", "run", path]]


def stopped_with_duplicates_in_flight(env: Env) -> list[list[str]]:
    """The run stops on its error fraction while shards are in flight; the input has an id twice."""
    return [["pipeline", "run", bad_input_corpus(env, error_check_min_rows=4, **{"sink.rows_per_shard": 2})]]


def a_failed_first_attempt_then_the_fix(env: Env) -> list[list[str]]:
    """The first config fails on the cluster before committing anything; the corrected one just runs."""
    broken = env.pipeline(**{"describe.describer.options.truth": str(env.tmp / "no-truth"), "describe.max_restarts": 0})
    return [["pipeline", "run", env.write(broken, "broken.yaml")], ["pipeline", "run", env.write(env.pipeline())]]


def driver_killed_mid_run(env: Env) -> list[list[str]]:
    """SIGKILL the driver once its Ray is up and its attempt recorded; the report and the next run tell the truth."""
    path = env.write(env.pipeline(**{"sink.rows_per_shard": 2}))
    driver = subprocess.Popen([*CLI, "pipeline", "run", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    record, manifest = env.out / "ray-processes.json", env.out / "manifest.json"
    while not (record.exists() and manifest.exists() and json.loads(manifest.read_text())["attempts"]):
        assert driver.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.2)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait()
    env.notes["ray"] = json.loads(record.read_text())["processes"]
    assert alive(env.notes["ray"]), "nothing of the embedded Ray outlived its driver: nothing to test"
    report = subprocess.run([*CLI, "pipeline", "report", str(env.out)], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 and "interrupted" in report.stdout, report.stdout + report.stderr
    assert json.loads(manifest.read_text())["attempts"][0]["status"] == "interrupted"
    return [["pipeline", "run", path]]


def alive(processes: list[dict]) -> list[int]:
    import psutil

    found = []
    for entry in processes:
        try:
            if abs(psutil.Process(entry["pid"]).create_time() - entry["create_time"]) < 1.0:
                found.append(entry["pid"])
        except psutil.NoSuchProcess:
            continue
    return found


# --- checks ---------------------------------------------------------------------------------------------------


def nothing_written(env: Env) -> None:
    assert not env.out.exists(), "a run directory was created for a config that cannot run"


def vllm_ran_on_cpu_with_a_kv_cache_sized_from_the_machine(env: Env) -> None:
    rows = read_table(env.out / "annotations", "annotations").to_pylist()
    assert sorted(r["image_id"] for r in rows) == sorted(r["image_id"] for r in env.images(64))  # nothing lost
    assert all(r["status"] in ("ok", "no_regions", "describe_failed") for r in rows), [r["error"] for r in rows]
    manifest = json.loads((env.out / "manifest.json").read_text())
    describer = manifest["annotators"]["describer"]
    assert describer["kv_cache"]["chosen_by"] == "machine" and 0 < describer["kv_cache"]["bytes"] < 2**31
    assert describer["max_model_len"] == 1024  # the tiny model's own limit, below the default cap
    assert manifest["status"] == "complete"


def committed(env: Env) -> list[dict]:
    return read_table(env.out / "annotations", "annotations").to_pylist()


def every_row_once_and_the_records_say_complete_with_failures(env: Env) -> None:
    rows = committed(env)
    code, errors = env.notes["first"]
    assert code == 1 and len(errors) == 1 and errors[0].startswith("error: completed with")
    assert sorted(r["image_id"] for r in rows) == env.notes["ids"]  # nothing lost, the duplicate id kept once
    by_id = {r["image_id"]: r["error"] for r in rows}
    assert by_id["not_an_image"].startswith("not a readable image: no image format recognises its 32 bytes")
    assert "BytesIO" not in " ".join(e or "" for e in by_id.values())
    assert by_id["bomb_header"] == (
        "image is over the limit of 64000000 pixels (its header declares a decompression bomb)"
    )
    manifest = json.loads((env.out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["message"].startswith("completed with")
    assert [a["status"] for a in manifest["attempts"]] == ["complete", "complete"]
    assert manifest["message"] in errors[0]  # the rerun says the same as the first run
    assert manifest["rows"] == len(rows) == sum(manifest["counts"].values())
    assert manifest["duplicates_dropped"] == 1


def stopped_without_duplicates(env: Env) -> None:
    ids = [r["image_id"] for r in committed(env)]
    # never two rows for one id; shards already in flight when the run stops are still committed, so a small
    # input may be committed whole (how much depends on timing)
    assert len(ids) == len(set(ids)) and set(ids) <= set(env.notes["ids"])
    manifest = json.loads((env.out / "manifest.json").read_text())
    assert manifest["status"] == "stopped" and manifest["rows"] == len(ids)
    stats_rows = sum(json.loads(p.read_text())["rows"] for p in (env.out / "stats").glob("*.json"))
    assert stats_rows == len(ids)  # the report's plot and table count the same rows


def the_fix_ran_as_a_new_run(env: Env) -> None:
    rows = committed(env)
    assert len(rows) == 64 and len({r["image_id"] for r in rows}) == 64
    manifest = json.loads((env.out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and [a["status"] for a in manifest["attempts"]] == ["complete"]
    assert not (env.out / "_superseded").exists()


def resumed_exactly_once_and_the_leftover_ray_ended(env: Env) -> None:
    rows = committed(env)
    assert len(rows) == 64 and len({r["image_id"] for r in rows}) == 64
    manifest = json.loads((env.out / "manifest.json").read_text())
    assert [a["status"] for a in manifest["attempts"]] == ["interrupted", "complete"]
    assert not alive(env.notes["ray"])
    assert not (env.out / "ray-processes.json").exists()


CASES = [
    Case(
        "parquet without image_id",
        parquet_without_image_id,
        2,
        [
            r"parquet source .*no_id\.parquet: required column 'image_id' is missing "
            r"\(have \['id', 'image', 'caption'\]\)"
        ],
        nothing_written,
    ),
    Case(
        "captions csv with path instead of file_name",
        captions_csv_with_a_wrong_column,
        2,
        [r"captions CSV .*captions\.csv lacks column\(s\) \['file_name'\] \(has \['path', 'caption'\]\)"],
        nothing_written,
    ),
    Case(
        "three mistakes, three lines",
        three_mistakes_at_once,
        2,
        [
            r"describe\.describer\.multimodal is true but .*llm is a text-only model \(model_type 'llama'",
            r"unknown grounder 'yolo'; available: .*partsworld",
            r"source path\(s\) not found: .*nowhere",
        ],
        nothing_written,
    ),
    Case(
        "vllm max_model_len above the model's limit",
        vllm_context_above_the_model_limit,
        2,
        [
            r"engine\.max_model_len 4096 is above the model's limit of 1024 "
            r"\(max_position_embeddings in .*config\.json\)"
        ],
        nothing_written,
    ),
    Case(
        "vllm kv cache larger than the machine",
        vllm_kv_cache_larger_than_the_machine,
        2,
        [r"kv_cache_memory_bytes \d+ \(1048576\.0 GiB\) is more than the [\d.]+ GiB of memory available"],
        nothing_written,
    ),
    Case(
        "too many failures at the end: completed with N failed rows, twice",
        too_many_failures_at_the_end,
        1,
        # each failed status shows one example that names its image_id (whichever row came first) and the reason
        [r"completed with \d+ failed rows \(\d+\.\d% > max_error_fraction 10\.0%\); decode_failed: \d+ \(e\.g\. '\w+: "],
        every_row_once_and_the_records_say_complete_with_failures,
        subprocess=True,
        marks=[pytest.mark.slow],
    ),
    Case(
        "stopped with duplicates in flight",
        stopped_with_duplicates_in_flight,
        1,
        [r"stopped after \d+ rows: \d+ failed rows"],
        stopped_without_duplicates,
        subprocess=True,
        marks=[pytest.mark.slow],
    ),
    Case(
        "a failed first attempt leaves no lock",
        a_failed_first_attempt_then_the_fix,
        0,
        [],
        the_fix_ran_as_a_new_run,
        subprocess=True,
        marks=[pytest.mark.slow],
    ),
    Case(
        "driver SIGKILLed: interrupted, leftover Ray ended, resumed once",
        driver_killed_mid_run,
        0,
        [],
        resumed_exactly_once_and_the_leftover_ray_ended,
        subprocess=True,
        marks=[pytest.mark.slow],
    ),
    Case(
        "vllm default engine on cpu",
        None,
        0,
        [],
        vllm_ran_on_cpu_with_a_kv_cache_sized_from_the_machine,
        subprocess=True,
        marks=[pytest.mark.slow],
        ran="tiny_vllm_run",
    ),
    Case(
        "descriptor file covering more classes: read, the extra ones counted",
        descriptors_for_more_classes,
        0,
        [],
        extra_descriptor_classes_counted,
    ),
    Case(
        "descriptor file missing classes: the first few named, and how many",
        descriptors_for_fewer_classes,
        2,
        [
            r"descriptor file .*descriptors\.json has no descriptors for 7 of the dataset's 8 classes: "
            r"'cardinal', 'egret', 'heron', 'ibis', 'kiwi' and 2 more$"
        ],
        nothing_written,
    ),
    Case(
        "evaluate: per-image predictions; image_alpha drop vs white, recorded",
        evaluate_with_each_alpha,
        0,
        [],
        predictions_per_image_and_alpha_recorded,
    ),
    Case(
        "config reference is current",
        lambda env: [["config", "docs", "--check", "--out", str(REPO / "docs" / "config.md")]],
        0,
        [],
        every_key_described,
    ),
    Case(
        "stale config reference: one line, file untouched",
        stale_config_reference,
        1,
        [r"^error: .*config\.md is stale: run `grainclip config docs --out .*config\.md`$"],
        reference_left_as_it_was,
    ),
    *(Case(f"config example {kind} loads", config_example(kind), 0, [], example_loads) for kind in CONFIG_KINDS),
    Case(
        "config example of an unknown kind",
        lambda env: [["config", "example", "model"]],
        2,
        [r"^error: unknown config kind 'model'; choose from pipeline, train, evaluate$"],
    ),
]


def run_cli(args: list[str], separate: bool = False) -> tuple[int, str]:
    if separate:
        done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=600)
        return done.returncode, done.stderr
    from typer.testing import CliRunner

    from grainclip.cli import app

    result = CliRunner().invoke(app, args)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{args}: uncaught {result.exception!r}\n{result.output}") from result.exception
    return result.exit_code, result.stderr


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name, marks=c.marks) for c in CASES])
def test_first_contact(case: Case, tmp_path, partsworld_small, tiny_models, request):
    if case.ran is not None:
        run = request.getfixturevalue(case.ran)
        env, code, stderr = Env(run.folder, partsworld_small, tiny_models), run.returncode, run.stderr
    else:
        env = Env(tmp_path, partsworld_small, tiny_models)
        commands = case.build(env)
        for args in commands[:-1]:
            run_cli(args, case.subprocess)
        code, stderr = run_cli(commands[-1], case.subprocess)
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(case.errors), stderr
    for line, pattern in zip(errors, case.errors):
        assert re.search(pattern, line), (pattern, line)
    assert code == case.exit_code, stderr
    if case.check is not None:
        case.check(env)
