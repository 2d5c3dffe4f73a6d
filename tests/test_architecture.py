"""Dependency direction, read from the source: the project's import graph has no cycle and points one way.

The graph is built with `ast` from every module of the packages in pyproject's package-dir mapping, so an import
hidden in a function body counts like one at the top of a file: a loop that only closes at call time is still a
loop, and it is what made the packages impossible to load or test apart. Three kinds of edge are told apart:

- `module`: runs when the importing module is imported;
- `function`: runs when a function (or method) is first called;
- `type-checking`: inside `if TYPE_CHECKING:`; never runs. These are left out of the cycle check (naming a type
  is the standard way to annotate without a runtime loop) but not out of the direction rules: a type named from
  the wrong package is still a dependency on that package's API.

A name a package exports lazily (`grainclip.lazy.lazy_exports`, as grainclip.train, grainclip.evaluate and
grainclip.pipelines do) resolves to the module that defines it, because that is what the import loads.
`importlib.import_module("grainclip...")` with a literal name counts as an import too.

The import tests at the bottom check the other half of the contract at run time: the packages an annotation node
or a GPU training machine imports load with the libraries that machine lacks blocked.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

#: The one module allowed to import every stage: the console script wires each domain's commands together.
COMPOSITION_ROOT = "grainclip.cli"

#: Which layers each layer may import (itself included). Core contracts sit under every stage; the pipeline
#: runs annotators and may launch training and evaluation; evaluation may load trained models and asks a
#: describer for class descriptors; nothing imports the pipelines.
ALLOWED = {
    "core": {"core"},
    "annotate": {"core", "annotate"},
    "train": {"core", "train"},
    "evaluate": {"core", "annotate", "train", "evaluate"},
    "pipelines": {"core", "annotate", "train", "evaluate", "pipelines"},
}


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    path: str
    line: int
    kind: str  # "module", "function" or "type-checking"

    def __str__(self) -> str:
        return f"{self.path}:{self.line} ({self.kind}) {self.source} -> {self.target}"


@cache
def project_modules() -> dict[str, Path]:
    """Module name -> file, for every module under pyproject's package-dir mapping."""
    package_dir = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules: dict[str, Path] = {}
    for package, folder in package_dir.items():
        root = REPO / folder
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if any(part.startswith(".") or "-" in part for part in parts):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join((package, *parts))] = path
    return modules


def layer(module: str) -> str:
    for stage in ("annotate", "pipelines", "train", "evaluate"):
        if module == f"grainclip.{stage}" or module.startswith(f"grainclip.{stage}."):
            return stage
    return "core"


def owning_module(name: str) -> str | None:
    """The project module that `import name` loads last: the name itself or its longest project prefix."""
    modules = project_modules()
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


@cache
def lazy_exports(module: str) -> dict[str, str]:
    """A package's lazily exported names -> the module defining each, from its `lazy_exports(__name__, TABLE)`."""
    tree = ast.parse(project_modules()[module].read_text())
    literals = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }
    owners: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "lazy_exports" and len(node.args) == 2:
            table = node.args[1]
            table = literals.get(table.id, table) if isinstance(table, ast.Name) else table
            for key, names in zip(table.keys, table.values):
                owners.update({name.value: key.value for name in names.elts})
    return owners


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class ImportCollector(ast.NodeVisitor):
    """Every import of a project module in one file, with the context it runs in."""

    def __init__(self, module: str, path: str) -> None:
        self.module, self.path = module, path
        self.is_package = path.endswith("__init__.py")
        self.kind = "module"
        self.edges: list[Edge] = []

    def add(self, target: str | None, node: ast.AST) -> None:
        if target is not None and target != self.module:
            self.edges.append(Edge(self.module, target, self.path, node.lineno, self.kind))

    def within(self, kind: str, nodes: list[ast.stmt] | list[ast.AST]) -> None:
        outer, self.kind = self.kind, kind if self.kind == "module" else self.kind
        for child in nodes:
            self.visit(child)
        self.kind = outer

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) -> None:
        self.within("function", [*getattr(node, "decorator_list", []), node.args])
        self.within("function", node.body if isinstance(node.body, list) else [node.body])

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node: ast.If) -> None:
        if is_type_checking(node.test):
            self.within("type-checking", node.body)
            self.within(self.kind, node.orelse)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.add(owning_module(alias.name), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            package = self.module.split(".") if self.is_package else self.module.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            if f"{base}.{alias.name}" in project_modules():
                self.add(f"{base}.{alias.name}", node)
            elif base in project_modules() and alias.name in lazy_exports(base):
                self.add(lazy_exports(base)[alias.name], node)
            else:
                self.add(owning_module(base), node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        first = node.args[0] if node.args else None
        if name == "import_module" and isinstance(first, ast.Constant) and isinstance(first.value, str):
            self.add(owning_module(first.value), node)
        self.generic_visit(node)


@cache
def import_edges() -> tuple[Edge, ...]:
    edges: list[Edge] = []
    for module, path in project_modules().items():
        edges.extend(collect(module, path.read_text(), str(path.relative_to(REPO))))
    return tuple(edges)


def collect(module: str, source: str, path: str) -> list[Edge]:
    collector = ImportCollector(module, path)
    collector.visit(ast.parse(source, filename=path))
    return collector.edges


def find_cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected component that has one (Tarjan, then a path search)."""
    graph: dict[str, dict[str, Edge]] = {}
    for edge in edges:
        graph.setdefault(edge.source, {}).setdefault(edge.target, edge)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            connect(node)

    cycles = []
    for component in components:
        start = min(component)
        # Shortest way back to `start` inside the component (breadth first), so the message is one loop.
        previous: dict[str, Edge] = {}
        frontier = [start]
        while frontier and start not in previous:
            following = []
            for node in frontier:
                for target, edge in sorted(graph.get(node, {}).items()):
                    if target in component and target not in previous:
                        previous[target] = edge
                        following.append(target)
            frontier = following
        loop, node = [], start
        while True:
            edge = previous[node]
            loop.append(edge)
            node = edge.source
            if node == start:
                break
        cycles.append(loop[::-1])
    return cycles


def test_the_collector_tells_the_kinds_of_import_apart():
    """The collector itself, on a known source: a collector that read nothing would pass every rule below."""
    name, owner = next(iter(lazy_exports("grainclip.train").items()))
    source = textwrap.dedent(f"""
        import importlib
        from typing import TYPE_CHECKING
        import grainclip.schema as schema
        from ..config import base
        from grainclip.train import {name}
        if TYPE_CHECKING:
            from grainclip.model_api import LoadedModel
        else:
            from grainclip import boxes
        def helper():
            from grainclip.images import decode_image
            return importlib.import_module("grainclip.envs")
        class Holder:
            def method(self):
                import grainclip.partsworld.scene
                import numpy
    """)
    edges = collect("grainclip.testing.snippet", source, "grainclip/testing/snippet.py")
    assert [(edge.target, edge.kind, edge.line) for edge in edges] == [
        ("grainclip.schema", "module", 4),
        ("grainclip.config.base", "module", 5),
        (owner, "module", 6),  # a lazily exported name: the module that defines it
        ("grainclip.model_api", "type-checking", 8),
        ("grainclip.boxes", "module", 10),
        ("grainclip.images", "function", 12),
        ("grainclip.envs", "function", 13),
        ("grainclip.partsworld.scene", "function", 16),
    ]


def test_the_graph_covers_the_whole_tree():
    edges = import_edges()
    assert {layer(module) for module in project_modules()} == set(ALLOWED)
    targets = {edge.target for edge in edges if edge.source == COMPOSITION_ROOT and edge.kind == "module"}
    assert {"grainclip.pipelines.cli", "grainclip.train.cli", "grainclip.evaluate.cli"} <= targets
    assert all(edge.target in project_modules() for edge in edges)


def test_cycle_finder_reports_a_loop_with_its_lines():
    loop = [
        Edge("a", "b", "a.py", 3, "module"),
        Edge("b", "c", "b.py", 5, "function"),
        Edge("c", "a", "c.py", 7, "function"),
        Edge("c", "d", "c.py", 8, "module"),
    ]
    (cycle,) = find_cycles(loop)
    assert [(edge.source, edge.target) for edge in cycle] == [("a", "b"), ("b", "c"), ("c", "a")]
    assert find_cycles(loop[:2] + loop[3:]) == []


def test_no_import_cycle_among_the_project_modules():
    runtime = [edge for edge in import_edges() if edge.kind != "type-checking"]
    cycles = find_cycles(runtime)
    if cycles:
        pytest.fail("\n\n".join("import cycle:\n  " + "\n  ".join(map(str, cycle)) for cycle in cycles), pytrace=False)


def test_imports_point_one_way():
    """Core under every stage, nothing imports the pipelines, train never imports evaluate, annotate no trainer."""
    wrong = [
        edge
        for edge in import_edges()
        if edge.source != COMPOSITION_ROOT and layer(edge.target) not in ALLOWED[layer(edge.source)]
    ]
    if wrong:
        lines = [f"{edge} ({layer(edge.source)} must not import {layer(edge.target)})" for edge in wrong]
        pytest.fail("imports against the dependency direction:\n  " + "\n  ".join(lines), pytrace=False)


def test_direction_rules_cover_the_required_bans():
    for layer_name in ("core", "annotate", "train", "evaluate"):
        assert "pipelines" not in ALLOWED[layer_name]
    assert "evaluate" not in ALLOWED["train"]
    assert not {"train", "evaluate"} & ALLOWED["annotate"]


BLOCKER = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))

class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"{name} is blocked: this machine does not have it", name=name)
        return None

sys.meta_path.insert(0, Blocker())
"""


@pytest.mark.parametrize(
    ("blocked", "imports"),
    [
        # An annotation node runs the pipeline and the annotators without the training stack.
        (
            ("open_clip", "torchvision"),
            "import grainclip.annotate, grainclip.pipelines, grainclip.cli\n"
            "from grainclip.pipelines import runner, stages, steps\n"
            "from grainclip.annotate import registry",
        ),
        # The GPU machine trains and evaluates without Ray or vLLM installed.
        (
            ("ray", "vllm"),
            "from grainclip.train import train, load_model\n"
            "from grainclip.train import cli as train_cli\n"
            "from grainclip.evaluate import evaluate, zero_shot_accuracy\n"
            "from grainclip.evaluate import cli as evaluate_cli",
        ),
        # Ray Data's coordinators unpickle the Ray Train data plan, which names this module: torch would cost
        # each of them ~12 CPU-s per run.
        (("torch", "torchvision", "open_clip"), "from grainclip.train import ray_data"),
    ],
    ids=["annotation-node", "training-machine", "ray-train-data-plan"],
)
def test_packages_import_with_the_missing_libraries_blocked(blocked: tuple[str, ...], imports: str):
    code = BLOCKER + textwrap.dedent(imports) + "\nprint('imported')\n"
    result = subprocess.run([sys.executable, "-c", code, ",".join(blocked)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-3000:]


def test_the_blocker_blocks():
    code = BLOCKER + "try:\n    import colorsys\nexcept ModuleNotFoundError:\n    print('ok')\n"
    result = subprocess.run([sys.executable, "-c", code, "colorsys"], capture_output=True, text=True)
    assert result.stdout.strip() == "ok", result.stderr
