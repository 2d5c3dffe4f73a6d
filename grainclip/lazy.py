"""Package names that load on first use, so importing a package (the CLI imports every domain's) stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, modules: dict[str, tuple[str, ...]]) -> tuple[Callable[[str], Any], list[str]]:
    """A module `__getattr__` that imports a name's defining module when the name is first read, and `__all__`.

    `modules` maps each defining module to the names it exports. Packages pass it as a literal: the import-graph
    test (tests/test_architecture.py) reads it to count `from package import name` as importing that module.
    """
    owner = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in owner:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(owner[name]), name)

    return __getattr__, sorted(owner)
