"""The project's import graph, read from the source with `ast` (nothing is imported): no import cycle, and the
layering of docs/ARCHITECTURE.md (`distill` <- `student` <- `pipelines`; `benchmarks/` never import `pipelines`;
`student/` imports nothing of the distill run; `distill/tasks/` knows no teacher).

Every import statement counts, wherever it stands (module top, function body, `if TYPE_CHECKING:`): a
function-level import is a runtime edge, and a type-only one still ties the two modules together. Only imports of
project modules are edges. `import a.b.c` and `from a.b import c` (c a module) are edges to `a.b.c`;
`from a.b import name` is an edge to `a.b` (its `__init__`).
"""
import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("distill", "student", "pipelines", "benchmarks")
# What `student/` must not import: the distill run (issue 19, point 7).
DISTILL_RUN = ("distill.manifest", "distill.shards", "distill.teacher_loop", "distill.run")


@dataclass(frozen=True)
class Edge:
    """`source` imports the project module `target` at `where` (`file:line`, the file relative to the root)."""

    source: str
    target: str
    where: str


def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name -> file, for every `.py` under each package folder (`pkg/__init__.py` is `pkg`).
    A folder without `__init__.py` (`benchmarks/`, a folder of scripts) still names its files `folder.stem`."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module that importing `name` runs: `name` itself, else its longest known parent (`a.b` for a
    missing `a.b.attr`); None outside the project."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path], root: Path) -> Iterator[Edge]:
    """Every edge from `module` (file `path`) to a project module, relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    file = path.relative_to(root).as_posix()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    statements = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
    for node in sorted(statements, key=lambda node: node.lineno):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            if node.level:
                base_parts = package.split(".")
                if node.level - 1 >= len(base_parts):
                    raise AssertionError(f"{path}:{node.lineno}: relative import beyond the top-level package")
                base = ".".join(base_parts[: len(base_parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            # `from base import sub` imports the submodule `base.sub` when there is one, else a name of `base`.
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for name in names:
            target = _resolve(name, modules)
            if target is not None and target != module:
                yield Edge(module, target, f"{file}:{node.lineno}")


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, list[Edge]]:
    """module -> its edges to project modules (each target once, at its first line)."""
    modules = module_files(root, packages)
    graph = {}
    for module, path in modules.items():
        first: dict[str, Edge] = {}
        for edge in imports_of(module, path, modules, root):
            first.setdefault(edge.target, edge)
        graph[module] = list(first.values())
    return graph


def strongly_connected(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative: no recursion limit), those that hold a cycle: more than
    one module (a module never imports itself here). Each component sorted, the list sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(graph[start]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            advanced = False
            for edge in edges:
                nxt = edge.target
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(graph.get(nxt, []))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return sorted(components)


def describe_cycles(graph: dict[str, list[Edge]]) -> list[str]:
    """One paragraph per cycle (strongly connected component): its modules, then each import inside it."""
    lines = []
    for component in strongly_connected(graph):
        members = set(component)
        inner = [edge for module in component for edge in graph[module] if edge.target in members]
        lines.append(f"cycle among {', '.join(component)}:\n" + "\n".join(
            f"    {edge.source} -> {edge.target}  ({edge.where})" for edge in inner))
    return lines


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layering_violations(graph: dict[str, list[Edge]]) -> list[str]:
    """Imports against the package rules, one line each (`where: rule: source -> target`)."""
    rules = [
        ("distill imports neither student nor pipelines", "distill", ("student", "pipelines")),
        ("student never imports pipelines", "student", ("pipelines",)),
        ("benchmarks import library modules, never pipelines", "benchmarks", ("pipelines",)),
        ("student imports nothing of the distill run", "student", DISTILL_RUN),
    ]
    found = []
    for rule, source_package, forbidden in rules:
        for module, edges in sorted(graph.items()):
            if not _within(module, source_package):
                continue
            for edge in edges:
                if any(_within(edge.target, bad) for bad in forbidden):
                    found.append(f"{edge.where}: {rule}: {edge.source} -> {edge.target}")
    return found


def mentions(root: Path, folder: str, word: str) -> list[str]:
    """Files of `folder` whose text holds `word` anywhere (the `grep -rln WORD folder` of the acceptance; caches
    left out)."""
    return sorted(path.relative_to(root).as_posix() for path in (root / folder).rglob("*")
                  if path.is_file() and "__pycache__" not in path.parts and word.encode() in path.read_bytes())


# --- the project ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project_graph() -> dict[str, list[Edge]]:
    return import_graph(ROOT, PACKAGES)


def test_the_graph_reads_the_project(project_graph):
    # A sanity floor, so that a path or parsing mistake cannot make the other tests pass on an empty graph.
    assert {"distill.ofa.modeling_ofa", "student.modeling_narvl", "pipelines.cli"} <= set(project_graph)
    targets = {edge.target for edge in project_graph["student.modeling_narvl"]}
    assert "distill.ofa" in targets or any(t.startswith("distill.ofa.") for t in targets), targets


def test_no_import_cycles(project_graph):
    cycles = describe_cycles(project_graph)
    if cycles:
        pytest.fail(f"{len(cycles)} import cycle(s):\n" + "\n".join(cycles), pytrace=False)


def test_package_layering(project_graph):
    violations = layering_violations(project_graph)
    if violations:
        pytest.fail(f"{len(violations)} import(s) against the layering:\n" + "\n".join(violations), pytrace=False)


def test_tasks_know_no_teacher():
    files = mentions(ROOT, "distill/tasks", "teachers")
    if files:
        pytest.fail("distill/tasks/ mentions `teachers` in: " + ", ".join(files), pytrace=False)


# --- the checker itself, on packages written for it -----------------------------------------------------------


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_checker_finds_a_cycle_through_a_function_level_relative_import(tmp_path):
    root = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "import os\nfrom .sub import b\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/b.py": "from pkg.sub.c import thing\n",
        "pkg/sub/c.py": "def f():\n    from ..a import x\n    return x\nthing = 1\n",
        "pkg/clean.py": "from pkg.a import x\n",
    })
    graph = import_graph(root, ["pkg"])
    assert [e.target for e in graph["pkg.a"]] == ["pkg.sub.b"]  # `os` is not a project module
    assert [(e.target, e.where) for e in graph["pkg.sub.c"]] == [("pkg.a", "pkg/sub/c.py:2")]
    assert strongly_connected(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub.c"]]
    [message] = describe_cycles(graph)
    assert "pkg.sub.c -> pkg.a" in message and "pkg/sub/c.py:2" in message


def test_checker_passes_a_clean_graph_and_reports_two_cycles_apart(tmp_path):
    clean = _write(tmp_path / "clean", {
        "lib/__init__.py": "from lib.core import run\n",
        "lib/core.py": "from . import util\n",
        "lib/util.py": "import lib.errors\n",
        "lib/errors.py": "",
        "app/__init__.py": "",
        "app/cli.py": "from lib import run\nfrom lib.util import helper\n",
    })
    graph = import_graph(clean, ["lib", "app"])
    assert {e.target for e in graph["app.cli"]} == {"lib", "lib.util"}
    assert [e.target for e in graph["lib.core"]] == ["lib.util"]
    assert strongly_connected(graph) == [] and describe_cycles(graph) == []
    knotted = _write(tmp_path / "knotted", {
        "lib/__init__.py": "",
        "lib/x.py": "from lib import y\n",
        "lib/y.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lib.x import X\n",
        "lib/p.py": "import lib.q\n",
        "lib/q.py": "def g():\n    import lib.p\n",
    })
    assert strongly_connected(import_graph(knotted, ["lib"])) == [["lib.p", "lib.q"], ["lib.x", "lib.y"]]


def test_checker_reports_layering_violations(tmp_path):
    root = _write(tmp_path, {
        "distill/__init__.py": "",
        "distill/run.py": "",
        "distill/tasks/__init__.py": "",
        "distill/tasks/vqa.py": "# the teachers run the model\n",
        "distill/core.py": "def f():\n    from student import m\n",
        "student/__init__.py": "",
        "student/m.py": "from distill.run import go\nfrom distill import core\n",
        "pipelines/__init__.py": "",
        "benchmarks/bench.py": "from pipelines import cli\n",
    })
    graph = import_graph(root, PACKAGES)
    assert layering_violations(graph) == [
        "distill/core.py:2: distill imports neither student nor pipelines: distill.core -> student.m",
        "benchmarks/bench.py:1: benchmarks import library modules, never pipelines: benchmarks.bench -> pipelines",
        "student/m.py:1: student imports nothing of the distill run: student.m -> distill.run",
    ]
    assert mentions(root, "distill/tasks", "teachers") == ["distill/tasks/vqa.py"]
