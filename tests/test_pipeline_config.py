"""Pipeline config, run-directory and resume bookkeeping, without Ray: shipped configs, refusal messages,
id filtering, duplicate removal, row preparation and the error-fraction check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grainclip.annotate.registry import describer_class, grounder_class
from grainclip.config.base import ConfigError, load_config, parse_config
from grainclip.config.pipeline import PipelineConfig, StageConfig
from grainclip.id_arrays import contains_sorted, fixed_width_bytes
from grainclip.pipelines.manifest import RunManifest
from grainclip.pipelines.prepare import MISSING_ID_PREFIX, prepare_images
from grainclip.pipelines.rundir import (
    RunConfigChanged,
    RunDir,
    config_hash,
    resume_view,
)
from grainclip.pipelines.runner import (
    AttemptProgress,
    ErrorFractionExceeded,
    actor_pool_options,
    error_fraction_problem,
)
from grainclip.pipelines.steps import plan_steps, run_steps
from grainclip.schema import read_table, write_shard

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "pipelines" / "configs").glob("*.yaml"))


def minimal(tmp_path: Path, **extra) -> PipelineConfig:
    data = {"output": str(tmp_path / "run"), "source": {"kind": "partsworld", "path": str(tmp_path / "pw")}, **extra}
    return parse_config(data, PipelineConfig)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads_and_names_installed_annotators(path: Path):
    config = load_config(path, PipelineConfig)
    assert describer_class(config.describe.describer.name)
    assert grounder_class(config.ground.grounder.name)


def test_shipped_configs_cover_quickstart_and_a_gpu_llm_swap():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "cc3m_gpu.yaml", "cc3m_gpu_qwen.yaml"} <= names
    llava, qwen = (load_config(p, PipelineConfig) for p in CONFIGS if p.name.startswith("cc3m_gpu"))
    assert llava.describe.num_gpus >= 1 and llava.ground.num_gpus >= 1
    assert llava.describe.describer.model != qwen.describe.describer.model
    # Swapping the LLM is a config change only: nothing else differs but the output directory.
    a, b = llava.model_dump(mode="json"), qwen.model_dump(mode="json")
    for data in (a, b):
        data.pop("output")
        data["describe"]["describer"].pop("model")
    assert a == b


def test_config_errors_name_the_field(tmp_path: Path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "output: x\nsource: {kind: parquet, path: x}\ndescribe: {min_actors: 2, max_actors: 1, batchsize: 3}\n"
    )
    with pytest.raises(ConfigError) as error:
        load_config(path, PipelineConfig)
    assert "describe.batchsize: unknown key" in str(error.value)
    with pytest.raises(ConfigError, match="max_actors"):
        parse_config(
            {"output": "x", "source": {"kind": "parquet", "path": "x"}, "describe": {"min_actors": 2, "max_actors": 1}},
            PipelineConfig,
        )
    with pytest.raises(ConfigError, match="source"):
        parse_config({"output": "x", "source": {"kind": "s3bucket", "path": "x"}}, PipelineConfig)
    with pytest.raises(ConfigError, match="needs a `train` step"):
        parse_config(
            {"output": "x", "source": {"kind": "parquet", "path": "x"}, "evaluate": {"config": "e.yaml"}},
            PipelineConfig,
        )


def test_partsworld_annotators_default_to_the_source_truth_and_paths_become_absolute(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pw" / "train" / "truth").mkdir(parents=True)
    config = parse_config(
        {
            "output": "out",
            "source": {"kind": "partsworld", "path": "pw"},
            "describe": {"describer": {"name": "vllm", "model": "Qwen/Qwen2.5-VL-7B-Instruct"}},
        },
        PipelineConfig,
    )
    assert config.ground.grounder.options["truth"] == "pw/train/truth"
    absolute = config.with_absolute_paths()
    assert absolute.output == str(tmp_path / "out")
    assert absolute.source.path == str(tmp_path / "pw")
    assert absolute.ground.grounder.options["truth"] == str(tmp_path / "pw" / "train" / "truth")
    assert absolute.describe.describer.model == "Qwen/Qwen2.5-VL-7B-Instruct"  # a hub id, not a local path


def test_a_rerun_resumes_only_with_the_same_output_deciding_config(tmp_path: Path):
    config = minimal(tmp_path)
    run = RunDir(Path(config.output))
    run_id, previous = run.open(config, force_new_run=False)
    assert previous is None
    view = resume_view(config)
    run.write_manifest(RunManifest(run_id=run_id, config_hash=config_hash(view), resume_config=view))

    # Resources and shard size may change between attempts.
    faster = minimal(
        tmp_path,
        describe={"min_actors": 4, "batch_size": 256, "describer": {"batch_size": 64}},
        sink={"rows_per_shard": 10},
    )
    assert run.open(faster, force_new_run=False)[0] == run_id

    changed = minimal(tmp_path, ground={"grounder": {"box_threshold": 0.5}})
    # A run that committed nothing protects nothing: another config starts a new run in its place.
    fresh_id, previous = run.open(changed, force_new_run=False)
    assert fresh_id != run_id and previous is None

    write_shard(pa.table({"image_id": ["a"], "status": ["ok"]}), run.annotations / "part-x.parquet", "annotations")
    with pytest.raises(RunConfigChanged) as error:
        run.open(changed, force_new_run=False)
    assert "ground.grounder.box_threshold: 0.3 -> 0.5" in str(error.value)
    assert "--force-new-run" in str(error.value)

    new_id, previous = run.open(changed, force_new_run=True)
    assert new_id != run_id and previous is None
    assert not run.annotations.exists() and not run.manifest_path.exists()
    moved = run.root / "_superseded" / run_id
    assert (moved / "annotations" / "part-x.parquet").exists() and (moved / "manifest.json").exists()


def test_shards_without_a_manifest_are_not_resumed_silently(tmp_path: Path):
    config = minimal(tmp_path)
    run = RunDir(Path(config.output))
    write_shard(pa.table({"image_id": ["a"], "status": ["ok"]}), run.annotations / "part-x.parquet", "annotations")
    with pytest.raises(RunConfigChanged, match="manifest.json is missing"):
        run.open(config, force_new_run=False)


def test_a_manifest_written_by_earlier_versions_resumes_and_keeps_its_keys(tmp_path: Path):
    """The manifest as the dict-based writer left it after a killed first attempt: resume reads it, keeps its
    history and writes the same keys back, in the same order."""
    config = minimal(tmp_path)
    run = RunDir(Path(config.output))
    view = resume_view(config)
    old = {
        "format": "grainclip.pipeline.manifest/1",
        "run_id": "20261201T101603Z-18cbf651",
        "status": "running",
        "message": None,
        "created_at": "2026-12-01T10:16:03+00:00",
        "completed_at": None,
        "config_hash": config_hash(view),
        "resume_config": view,
        "config": config.model_dump(mode="json"),
        "attempts": [
            {"started_at": "2026-12-01T10:16:03+00:00", "status": "running", "rows": 0, "ray_address": "local"}
        ],
        "versions": {"python": "3.11.7", "ray": "2.60.0"},
        "annotators": {},
        "simulated": None,
        "rows": 0,
        "counts": {},
        "duplicates_dropped": 0,
        "throughput": {},
        "steps": {},
    }
    run.root.mkdir(parents=True)
    run.manifest_path.write_text(json.dumps(old, indent=2))

    run_id, previous = run.open(config, force_new_run=False)
    assert run_id == old["run_id"] and previous.attempts[0].ray_address == "local" and previous.throughput is None
    attempt = previous.start_attempt(config, "local")
    stats = [
        {
            "rows": 3,
            "describe_seconds": 1.5,
            "ground_seconds": 0.5,
            "prompt_tokens": 30,
            "output_tokens": 12,
            "describer": {"name": "partsworld", "simulated": True},
            "grounder": None,
        }
    ]
    previous.close_attempt(attempt, "complete", None, rows=3, seconds=1.5, counts={"ok": 3}, stats=stats, config=config)
    run.write_manifest(previous)

    written = json.loads(run.manifest_path.read_text())
    assert list(written) == list(old)
    assert written["created_at"] == old["created_at"] and written["versions"] == old["versions"]
    assert [a["status"] for a in written["attempts"]] == ["interrupted", "complete"]  # the killed attempt, named
    assert written["attempts"][1]["rows_per_second"] == 2.0 and written["rows"] == 3 and written["simulated"] is True
    assert written["throughput"]["describe"]["output_tokens_per_actor_second"] == 8.0
    assert written["throughput"]["ground"]["rows_per_actor_second"] == 6.0
    assert "output_tokens" not in written["throughput"]["ground"]


def test_an_unreadable_manifest_is_one_line_and_force_new_run_moves_it_aside(tmp_path: Path):
    config = minimal(tmp_path)
    run = RunDir(Path(config.output))
    run.root.mkdir(parents=True)
    for text, problem in (
        ("{not json", "not valid JSON"),
        ('{"run_id": "r", "rows": "many"}', "rows: Input should"),
        ("[]", "not a run manifest"),
    ):
        run.manifest_path.write_text(text)
        with pytest.raises(ConfigError, match=problem) as error:
            run.open(config, force_new_run=False)
        assert "\n" not in str(error.value) and "--force-new-run" in str(error.value)
    run_id, previous = run.open(config, force_new_run=True)
    assert previous is None and run_id and not run.manifest_path.exists()
    assert [p.read_text() for p in (run.root / "_superseded").glob("*/manifest.json")] == ["[]"]


def test_contains_sorted_matches_exact_ids_only():
    done = np.sort(np.array([b"abc", b"img-10", b"z"]))
    ids = ["abc", "abcd", "ab", "img-1", "img-10", "z", "zz", ""]
    assert contains_sorted(done, ids).tolist() == [True, False, False, False, True, True, False, False]
    assert contains_sorted(np.array([], dtype="S1"), ["a"]).tolist() == [False]
    assert contains_sorted(done, []).tolist() == []


def test_fixed_width_bytes_equals_encoding_each_id_and_committed_ids_reads_every_shard(tmp_path):
    ids = ["abc", "", "img-10", "é日本", "z"]
    sliced = pa.chunked_array([pa.array(["skipped", *ids[:2]]), pa.array(ids[2:])]).slice(1)
    assert fixed_width_bytes(sliced).tolist() == [i.encode() for i in ids]
    assert fixed_width_bytes(pa.array([], pa.string())).tolist() == []
    run, committed = RunDir(tmp_path), [i for i in ids if i]  # a shard never holds an empty id
    for name, shard in (("part-a.parquet", committed[:2]), ("part-b.parquet", committed[2:])):
        write_shard(pa.table({"image_id": shard, "status": ["ok"] * len(shard)}), run.annotations / name, "annotations")
    assert run.committed_ids().tolist() == sorted(i.encode() for i in committed)
    assert contains_sorted(run.committed_ids(), ["é日本", "img-1", "z"]).tolist() == [True, False, True]


def test_prepare_marks_broken_rows_and_skips_committed_ones():
    batch = pa.Table.from_pylist(
        [
            {"image_id": "a", "image": b"x", "caption": "one", "class_name": "k1"},
            {"image_id": None, "image": b"y", "caption": "two", "class_name": "k2"},
            {"image_id": "", "image": b"y", "caption": None, "class_name": "k3"},
            {"image_id": "c", "image": None, "caption": "four", "class_name": "k4"},
            {"image_id": "d", "image": b"z", "caption": "five", "class_name": "k5"},
        ]
    )
    out = prepare_images(batch, np.sort(np.array([b"d"])))
    rows = {r["class_name"]: r for r in out.to_pylist()}
    assert set(rows) == {"k1", "k2", "k3", "k4"}  # d was committed before
    assert rows["k1"]["status"] is None and rows["k1"]["error"] is None
    for key in ("k2", "k3"):
        assert rows[key]["image_id"].startswith(MISSING_ID_PREFIX)
        assert rows[key]["status"] == "invalid_input" and "no image_id" in rows[key]["error"]
    assert rows["k2"]["image_id"] == rows["k3"]["image_id"]  # same bytes -> same stable id
    assert rows["k4"]["status"] == "invalid_input" and "neither image bytes nor image_uri" in rows["k4"]["error"]


def test_the_pipeline_and_annotate_rows_mark_the_same_rows_invalid(partsworld_small):
    """One set of input checks: a row is invalid_input, with the same reason, on either path or on neither."""
    from grainclip.annotate import annotate_rows, build_describer, build_grounder
    from grainclip.config.annotate import DescriberConfig, GrounderConfig

    rows = [
        {"image_id": "a", "image": b"x"},
        {"image_id": None, "image": b"y"},
        {"image_id": " ", "image": b"y"},
        {"image_id": "c", "image": None},
        {"image_id": None, "image": None},
        {"image_id": "e", "image": b""},
    ]
    truth = {"truth": str(partsworld_small)}
    plain = annotate_rows(
        rows,
        build_describer(DescriberConfig(name="partsworld", options=truth)),
        build_grounder(GrounderConfig(name="partsworld", options=truth)),
    )
    piped = prepare_images(pa.Table.from_pylist(rows)).to_pylist()
    invalid = [(r["status"] == "invalid_input", r["error"] if r["status"] == "invalid_input" else None) for r in plain]
    assert invalid == [(r["status"] == "invalid_input", r["error"]) for r in piped]
    assert [flag for flag, _ in invalid] == [False, True, True, True, True, False]
    assert plain[4]["error"] == "row has no image_id; row has neither image bytes nor image_uri"
    assert plain[5]["status"] == "decode_failed"  # empty bytes are an image that fails to decode, not a missing one


def test_duplicate_ids_keep_the_first_committed_row(tmp_path: Path):
    run = RunDir(tmp_path / "run")

    def shard(name: str, ids: list[str], caption: str) -> None:
        rows = pa.table({"image_id": ids, "caption": [caption] * len(ids), "status": ["ok"] * len(ids)})
        write_shard(rows, run.annotations / name, "annotations")

    shard("part-a.parquet", ["1", "2", "2"], "first")
    shard("part-b.parquet", ["2", "3"], "second")
    shard("part-c.parquet", ["3"], "third")
    assert run.drop_duplicate_ids("zstd") == 3
    table = read_table(run.annotations, "annotations")
    assert sorted(table.column("image_id").to_pylist()) == ["1", "2", "3"]
    captions = dict(zip(table.column("image_id").to_pylist(), table.column("caption").to_pylist()))
    assert captions == {"1": "first", "2": "first", "3": "second"}
    assert not (run.annotations / "part-c.parquet").exists()  # emptied shards are removed
    assert run.drop_duplicate_ids("zstd") == 0
    assert pq.read_schema(run.annotations / "part-b.parquet").metadata[b"grainclip.schema"] == b"annotations/1"


def test_error_fraction_stops_with_counts_and_an_example():
    progress = AttemptProgress()
    progress.add(
        {
            "rows": 50,
            "statuses": {"ok": 5, "describe_failed": 45},
            "error_examples": {"describe_failed": "connection refused"},
        }
    )
    progress.check_errors(max_fraction=0.1, min_rows=100)  # too few rows to judge yet
    with pytest.raises(ErrorFractionExceeded) as error:
        progress.check_errors(max_fraction=0.1, min_rows=50)
    message = str(error.value)
    assert "stopped after 50 rows: 45 failed rows (90.0% > max_error_fraction 10.0%)" in message
    assert "describe_failed: 45" in message and "connection refused" in message
    # The end-of-run check words the same fraction over the committed rows as "completed with ...".
    assert error_fraction_problem(progress.counts, progress.error_examples, 0.1) in message
    progress.add({"rows": 950, "statuses": {"ok": 950}, "error_examples": {}})
    progress.check_errors(max_fraction=0.1, min_rows=100)  # 4.5 % now


def test_a_stage_runtime_env_replaces_the_annotators():
    gdino = grounder_class("groundingdino-py").runtime_env
    assert gdino and "pip" in gdino
    assert actor_pool_options(StageConfig(), gdino)["runtime_env"] == gdino
    prebuilt = {"py_executable": "/envs/gdino/bin/python"}
    assert actor_pool_options(StageConfig(runtime_env=prebuilt), gdino)["runtime_env"] == prebuilt
    assert "runtime_env" not in actor_pool_options(StageConfig(runtime_env={}), gdino)
    options = actor_pool_options(StageConfig(min_actors=2, max_actors=4, num_gpus=1, max_restarts=5), None)
    assert (options["compute"].min_size, options["compute"].max_size) == (2, 4)
    assert options["num_gpus"] == 1 and options["max_restarts"] == 5 and "runtime_env" not in options


def test_batches_in_flight_default_from_the_describer_and_need_describe_async(tmp_path: Path):
    from grainclip.pipelines.preflight import preflight
    from grainclip.pipelines.runner import batches_in_flight

    vllm = {"describer": {"name": "vllm", "model": "m"}}
    assert batches_in_flight(minimal(tmp_path, describe=vllm)) == describer_class("vllm").default_batches_in_flight > 1
    assert batches_in_flight(minimal(tmp_path, describe={**vllm, "batches_in_flight": 1})) == 1
    assert batches_in_flight(minimal(tmp_path)) == 1  # partsworld serves one batch at a time
    with pytest.raises(ConfigError, match="describer 'partsworld' serves one batch at a time"):
        preflight(minimal(tmp_path, describe={"batches_in_flight": 3}))
    options = actor_pool_options(StageConfig(), None, concurrency=3)
    assert options["compute"].max_concurrent_calls_per_actor == 3  # Ray: max_concurrency of each actor
    assert actor_pool_options(StageConfig(), None)["compute"].max_concurrent_calls_per_actor is None


def test_step_configs_point_at_the_run_and_finished_steps_are_skipped(tmp_path: Path):
    train_yaml, eval_yaml = tmp_path / "train.yaml", tmp_path / "evaluate.yaml"
    train_yaml.write_text("backbone: {model: ViT-B-16}\nsteps: 5\ndata: {train: /elsewhere}\n")
    eval_yaml.write_text(
        "models: [{label: baseline, type: open_clip, name: ViT-B-16}]\n"
        "datasets: [{name: novel, source: {kind: partsworld, path: /pw}}]\n"
    )
    config = minimal(
        tmp_path, train={"config": str(train_yaml), "overrides": {"steps": 7}}, evaluate={"config": str(eval_yaml)}
    )
    run = RunDir(Path(config.output))
    plan = plan_steps(config, run)
    assert plan.train.data.train == run.annotations  # always this run's annotations
    assert plan.train.output_dir == run.root / "train" and plan.train.steps == 7
    assert [(m.label, getattr(m, "path", None)) for m in plan.evaluate.models] == [
        ("pipeline-grain", run.root / "train" / "model"),
        ("baseline", None),
    ]
    assert plan.evaluate.out == run.root / "evaluate"

    # Outputs present: nothing runs (no Ray needed), the manifest says why.
    (run.root / "train" / "model").mkdir(parents=True)
    (run.root / "train" / "model" / "grain_model.json").write_text("{}")
    (run.root / "evaluate").mkdir()
    (run.root / "evaluate" / "results.json").write_text("{}")
    outcomes = run_steps(plan, RunManifest(run_id="r"), run)
    assert outcomes["train"].startswith("skipped") and outcomes["evaluate"].startswith("skipped")
    assert json.loads(run.manifest_path.read_text())["steps"] == outcomes

    broken = minimal(tmp_path, train={"config": str(train_yaml), "overrides": {"batchsize": 3}})
    with pytest.raises(ConfigError, match="batchsize"):
        plan_steps(broken, run)
    with pytest.raises(ConfigError, match="step config file not found"):
        plan_steps(minimal(tmp_path, train={"config": str(tmp_path / "nope.yaml")}), run)


def test_source_kinds_resolve_by_name_and_a_plugin_kind_owns_its_paths(tmp_path: Path, monkeypatch):
    """A package that registers a kind in grainclip.sources is usable from YAML; preflight and resume see its paths."""
    from grainclip.pipelines.preflight import preflight
    from grainclip.registry import available
    from grainclip.sources import SOURCES_GROUP

    assert {"parquet", "image_folder", "webdataset", "partsworld", "huggingface"} <= set(available(SOURCES_GROUP))
    (tmp_path / "lines_source.py").write_text(
        "from typing import ClassVar, Literal\nfrom grainclip.sources import Source\n\n"
        "class LinesSource(Source):\n    kind: Literal['lines']\n    path: str\n    index: str | None = None\n"
        "    path_fields: ClassVar[tuple[str, ...]] = ('path', 'index')\n"
    )
    dist = tmp_path / "lines_source-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lines-source\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[grainclip.sources]\nlines = lines_source:LinesSource\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    config = parse_config(
        {"output": "out", "source": {"kind": "lines", "path": "a.txt", "index": "b.txt"}}, PipelineConfig
    ).with_absolute_paths()
    assert (config.source.path, config.source.index) == (str(tmp_path / "a.txt"), str(tmp_path / "b.txt"))
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(ConfigError, match=r"source path\(s\) not found: .*b\.txt$"):
        preflight(config)
    with pytest.raises(ConfigError, match=r"source\.indx: unknown key"):
        parse_config({"output": "out", "source": {"kind": "lines", "path": "a", "indx": "b"}}, PipelineConfig)
    with pytest.raises(ConfigError, match=r"unknown source kind 's3bucket'; available: .*huggingface.*lines"):
        parse_config({"output": "x", "source": {"kind": "s3bucket", "path": "x"}}, PipelineConfig)


def test_huggingface_source_reads_parquet_folders_and_refuses_what_it_cannot_read(tmp_path: Path):
    import datasets

    from grainclip.sources import parse_source
    from grainclip.sources.huggingface import read_units

    dataset = datasets.Dataset.from_dict({"image": [b"x", b"y", b"z"], "caption": ["a", "b", None], "n": [1, 2, 3]})
    dataset.to_parquet(str(tmp_path / "pq" / "part-0.parquet"))
    source = parse_source({"kind": "huggingface", "path": str(tmp_path / "pq"), "keep_columns": ["n"]})
    source.check()
    rows = pa.concat_tables([read_units(pa.Table.from_pylist([vars(u)]), source.columns()) for u in source.units()])
    assert rows.to_pylist() == [
        {"image_id": "0", "image": b"x", "image_uri": None, "caption": "a", "n": 1},
        {"image_id": "1", "image": b"y", "image_uri": None, "caption": "b", "n": 2},
        {"image_id": "2", "image": b"z", "image_uri": None, "caption": None, "n": 3},
    ]
    with pytest.raises(ConfigError, match=r"no column\(s\) \['picture'\]; the dataset has \['image', 'caption', 'n'\]"):
        parse_source({"kind": "huggingface", "path": str(tmp_path / "pq"), "image_column": "picture"}).check()
    datasets.DatasetDict({"train": dataset}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(ConfigError, match=r"holds a DatasetDict: set `split` to one of \['train'\]"):
        parse_source({"kind": "huggingface", "path": str(tmp_path / "dict")}).check()
    with pytest.raises(FileNotFoundError, match="no Parquet or Arrow files"):
        (tmp_path / "empty").mkdir()
        parse_source({"kind": "huggingface", "path": str(tmp_path / "empty")}).check()
