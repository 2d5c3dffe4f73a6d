"""benchmarks/figures.json: the headline figure of each benchmark, with the command, date and commit it came from.

One file for all benchmarks, `name -> {value, unit, command, date, commit}`, updated in place: a benchmark
rewrites its own names and leaves every other name as it was. Docs quote these figures, so each one says
exactly how to reproduce it. Benchmarks record only when run in their recorded configuration
(`is_recorded_configuration`), so a smoke run with a few steps never overwrites a reported figure. Ratios come
from sides measured in the same run, alternating (`alternate`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

FIGURES = Path(__file__).resolve().parent / "figures.json"


def command_line() -> str:
    """The command that is running, as a person would type it again."""
    return "python " + " ".join(sys.argv)


def git_commit() -> str | None:
    """`git rev-parse HEAD` of the checkout the benchmarks live in (None outside a git checkout)."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=FIGURES.parent, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    return done.stdout.strip()


def record(name: str, value: float, unit: str, command: str | None = None, path: Path | None = None) -> dict[str, Any]:
    """Set `name` in figures.json (date and commit filled in; `command` defaults to this process's) and return it."""
    path = path or FIGURES
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[name] = {
        "value": value,
        "unit": unit,
        "command": command or command_line(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)  # a reader never sees half a file
    return figures[name]


def is_recorded_configuration(
    parser: argparse.ArgumentParser, args: argparse.Namespace, ignore: tuple[str, ...] = ()
) -> bool:
    """True when every option but those in `ignore` (e.g. an output folder) has its default value."""
    defaults = vars(parser.parse_args([]))
    return all(value == defaults[key] for key, value in vars(args).items() if key not in ignore)


def alternate(sides: dict[str, Callable[[], T]], repeats: int) -> dict[str, list[T]]:
    """Each side's results over `repeats` rounds, the sides in rotating order: none always runs first, so none
    always meets the cold cache or a load spike that the first of a round meets."""
    names = list(sides)
    results: dict[str, list[T]] = {name: [] for name in names}
    for repeat in range(repeats):
        k = repeat % len(names)
        for name in names[k:] + names[:k]:
            results[name].append(sides[name]())
    return results
