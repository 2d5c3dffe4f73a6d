"""Run configurations. Each domain owns one module (annotate, pipeline, train, evaluate); all are plain data."""

from grainclip.config.base import ConfigError, ConfigModel, dump_config, load_config, parse_config, parse_overrides

__all__ = ["ConfigError", "ConfigModel", "dump_config", "load_config", "parse_config", "parse_overrides"]
