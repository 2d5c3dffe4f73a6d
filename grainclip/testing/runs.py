"""`grainclip pipeline run` as a child process that a test can SIGKILL, and clean up after, by pid.

A killed driver leaves its embedded Ray's agents and actors running; `PipelineProcess` remembers every
descendant it has seen so `kill_everything` ends them all, and only them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil


class PipelineProcess:
    """A `grainclip pipeline run CONFIG` subprocess and every process it started."""

    def __init__(self, config: Path, log: Path) -> None:
        self.log = log.open("w")
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "grainclip.cli", "pipeline", "run", str(config)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.seen: dict[int, psutil.Process] = {}

    def descendants(self) -> list[psutil.Process]:
        try:
            children = psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            children = []
        for child in children:
            self.seen.setdefault(child.pid, child)
        return children

    def named(self, text: str) -> list[psutil.Process]:
        """Live descendants whose name or command line holds `text` (ones that exit meanwhile are left out)."""
        found = []
        for child in self.descendants():
            try:
                if text in " ".join([child.name(), *child.cmdline()]):
                    found.append(child)
            except psutil.NoSuchProcess:  # ZombieProcess too: it exited after the listing
                continue
        return found

    def wait_until(self, condition: Callable[[], bool], timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            self.descendants()
            if self.process.poll() is not None:
                raise AssertionError(f"run exited ({self.process.returncode}) before the condition held")
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for the run")
            time.sleep(0.05)

    def kill_everything(self) -> None:
        self.descendants()
        for proc in [psutil.Process(self.process.pid) if self.process.poll() is None else None, *self.seen.values()]:
            try:
                if proc is not None and proc.is_running():
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
        self.process.wait(timeout=30)
        self.log.close()
