"""Config loading: safe YAML, unknown keys refused, errors that name the field and what is allowed."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import Field

from grainclip.config import ConfigError, ConfigModel, load_config, parse_overrides


class Inner(ConfigModel):
    batch_size: int = Field(8, gt=0)
    mode: Literal["fast", "exact"] = "fast"


class Outer(ConfigModel):
    name: str
    inner: Inner = Inner()


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_valid_config_and_overrides(tmp_path):
    cfg = load_config(write(tmp_path, "name: x\ninner: {batch_size: 4}\n"), Outer, overrides={"inner.mode": "exact"})
    assert (cfg.name, cfg.inner.batch_size, cfg.inner.mode) == ("x", 4, "exact")


def test_cli_overrides_are_yaml_values_under_dotted_keys(tmp_path):
    overrides = parse_overrides(["inner.batch_size=16", " name = a=b", "inner.mode=exact"])
    assert overrides == {"inner.batch_size": 16, "name": "a=b", "inner.mode": "exact"}
    cfg = load_config(write(tmp_path, "name: x\n"), Outer, overrides=overrides)
    assert (cfg.name, cfg.inner.batch_size, cfg.inner.mode) == ("a=b", 16, "exact")
    for bad in ("inner.batch_size", "=3"):
        with pytest.raises(ConfigError, match="--set expects KEY=VALUE"):
            parse_overrides([bad])


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\ninner: {batch_size: -1}\n", "inner.batch_size: Input should be greater than 0"),
        ("name: x\ninner: {mode: slow}\n", "inner.mode: Input should be 'fast' or 'exact'; got 'slow'"),
        ("name: x\ninner: {batchsize: 3}\n", "inner.batchsize: unknown key"),
        ("inner: {}\n", "name: Field required"),
        ("- just\n- a list\n", "must be a mapping"),
        ("name: [unclosed\n", "not valid YAML"),
        ("name: !!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
    ],
)
def test_bad_configs_give_readable_errors(tmp_path, text, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), Outer)
    assert expected in str(info.value)
    assert "Traceback" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", Outer)


def test_enumeration_matcher_with_too_many_queries_is_a_readable_error(tmp_path):
    from grainclip.config.train import TrainConfig

    text = "data: {train: x}\nloss: {matcher: enumerate}\ndecoder: {region_queries: 9}\n"
    with pytest.raises(ConfigError, match="loss.matcher 'enumerate' scores every assignment, at most 8 region queries"):
        load_config(write(tmp_path, text), TrainConfig)
    assert (
        load_config(write(tmp_path, "data: {train: x}\nloss: {matcher: enumerate}\n"), TrainConfig).loss.matcher
        == "enumerate"
    )
