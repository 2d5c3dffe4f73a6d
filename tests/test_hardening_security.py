"""Security checks over the source tree and the writers (issue 8).

- Checkpoints: every torch.load in grainclip's own code passes weights_only (True, or an option whose
  default is True); no pickle / dill / joblib / cloudpickle loads, no np.load(allow_pickle=True), no
  pandas.read_pickle; model weights are safetensors.
- YAML: only yaml.safe_load / safe_dump (no yaml.load, unsafe_load, full_load, yaml.Loader); a YAML config
  carrying a python object tag is a config error and runs nothing.
- Writes stay inside the output directory: names derived from data or from files on disk (shard names from
  image_ids, a run id read back from manifest.json, model labels and dataset names in plot names) cannot
  leave it. Locations the user writes in the config (output, output_dir, out) are the user's choice.

The API key drill (key in an env var, absent from logs, manifest, stats and Parquet of a real pipeline run,
even when the server echoes it) is in test_hardening_pipeline.py; the describer-level one in
test_annotate_openai.py.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("annotate", "pipelines", "train", "evaluate", "grainclip", "benchmarks", "scripts")
#: torch.load calls whose weights_only is an option rather than the constant True, with that option's model.
OPTION_WEIGHTS_ONLY = {"annotate/grounders/groundingdino_py.py": "grainclip.annotate.grounders.groundingdino_py"}


def source_files() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in (REPO / d).rglob("*.py")]
    assert len(files) > 50
    return files


def calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


def keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_no_unsafe_deserialisation_in_the_source_tree():
    problems = []
    for path in source_files():
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(), filename=rel)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                bad = [
                    n
                    for n in names
                    if n and n.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal")
                ]
                if bad:
                    problems.append(f"{rel}:{node.lineno} imports {bad}")
        for call, name in calls(tree):
            where = f"{rel}:{call.lineno} {ast.unparse(call)[:100]}"
            if name == "torch.load":
                value = keyword(call, "weights_only")
                if value is None:
                    problems.append(f"{where}: torch.load without weights_only")
                elif isinstance(value, ast.Constant):
                    if value.value is not True:
                        problems.append(f"{where}: weights_only={value.value!r}")
                elif rel not in OPTION_WEIGHTS_ONLY:
                    problems.append(f"{where}: weights_only is not the constant True")
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all"):
                problems.append(f"{where}: use yaml.safe_load")
            if name.endswith("read_pickle") or name.endswith("unpickle"):
                problems.append(f"{where}: pickle")
            if name in ("np.load", "numpy.load"):
                value = keyword(call, "allow_pickle")
                if value is not None and not (isinstance(value, ast.Constant) and value.value is False):
                    problems.append(f"{where}: allow_pickle")
            if name in ("eval", "exec"):
                problems.append(f"{where}: eval/exec")
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and ast.unparse(node) in (
                "yaml.Loader",
                "yaml.UnsafeLoader",
                "yaml.FullLoader",
            ):
                problems.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert not problems, "\n".join(problems)


def test_the_weights_only_option_defaults_to_true():
    import importlib

    for module in OPTION_WEIGHTS_ONLY.values():
        options = [cls for cls in vars(importlib.import_module(module)).values()
                   if isinstance(cls, type) and "weights_only" in getattr(cls, "model_fields", {})]  # fmt: skip
        assert options and all(cls.model_fields["weights_only"].default is True for cls in options)


def test_model_and_checkpoint_weights_are_safetensors(tmp_path):
    """What the trainer writes: safetensors for weights; the only torch.save file holds tensors and numbers
    (optimizer, scheduler, RNG) and is read back with weights_only=True (train/checkpoint.py)."""
    text = (REPO / "train" / "export.py").read_text() + (REPO / "train" / "checkpoint.py").read_text()
    assert "save_file(" in text and "load_file(" in text
    assert "weights_only=True" in (REPO / "train" / "checkpoint.py").read_text()


def test_yaml_with_a_python_tag_is_refused_and_runs_nothing(tmp_path):
    from grainclip.config.base import ConfigError, load_config
    from grainclip.config.pipeline import PipelineConfig

    marker = tmp_path / "pwned"
    path = tmp_path / "evil.yaml"
    path.write_text(f'output: !!python/object/apply:os.system ["touch {marker}"]\nsource: {{kind: parquet, path: x}}\n')
    with pytest.raises(ConfigError):
        load_config(path, PipelineConfig)
    assert not marker.exists()


def test_a_run_id_read_back_from_the_manifest_cannot_move_files_out_of_the_run(tmp_path):
    from grainclip.pipelines.rundir import RunDir

    outside = tmp_path / "outside"
    run = RunDir(tmp_path / "run")
    (run.annotations).mkdir(parents=True)
    (run.annotations / "part-x.parquet").write_bytes(b"shard")
    for evil in ("../../outside", "..", "/abs/path", "a/../../../outside", ""):
        run.manifest_path.write_text(json.dumps({"run_id": evil}))
        target = run.supersede(evil)
        assert target.resolve().is_relative_to((run.root / "_superseded").resolve()), (evil, target)
        assert target.name.startswith("unknown-")
        run.manifest_path.write_text("{}")
    assert not outside.exists()
    assert run.supersede("20260101T000000Z-0123abcd").name == "20260101T000000Z-0123abcd"  # real ids kept


def test_names_from_data_stay_inside_the_output(tmp_path):
    from grainclip.evaluate.report import _slug
    from grainclip.pipelines.rundir import RunDir

    run = RunDir(tmp_path / "run")
    path = run.shard_path(["../../../etc/passwd", "/abs/id", "a\\..\\b"])
    assert path.parent == run.annotations and path.name.startswith("part-") and "/" not in path.name
    for label in ("../../x", "/etc/passwd", "..", "a/b\\c"):
        name = f"regions_{_slug(label)}_{_slug('..')}.png"
        assert "/" not in name and "\\" not in name and ".." not in name, name
