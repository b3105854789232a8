"""The layout rules of docs/architecture.md, checked on the source tree itself.

- no module of ``occle_core`` or ``occle_ros`` over 600 lines;
- no import cycle between first-party modules, counting every import (function-level ones included);
- ``occle_core`` imports neither ROS nor ``occle_ros`` nor the benchmarks / experiments; nothing in the product
  imports ``occle_bench``; evaluation never depends on the training command line;
- the module table of docs/architecture.md has a row for every module and no row for a module that is gone.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("occle_core", "occle_ros", "occle_bench", "occle_experiments")
MAX_LINES = 600
ROS_MODULES = (
    "rclpy",
    "rosidl_runtime_py",
    "sensor_msgs",
    "std_msgs",
    "visualization_msgs",
    "nav_msgs",
    "geometry_msgs",
    "diagnostic_msgs",
    "tf2_ros",
    "launch",
    "launch_ros",
    "builtin_interfaces",
)


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (absolute names), wherever the import statement stands."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)
    return out


def _first_party_edges() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        targets = set()
        for imp in _imports(name, path):
            # the deepest first-party module the import names (``from a.b import c``: a.b.c if a module, else a.b)
            parts = imp.split(".")
            for k in range(len(parts), 0, -1):
                cand = ".".join(parts[:k])
                if cand in MODULES:
                    if cand != name:
                        targets.add(cand)
                    break
        edges[name] = targets
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def _package_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    """Edges between modules, ignoring a package's own ``__init__`` re-exporting its children."""
    return {
        src: {dst for dst in dsts if not (MODULES[src].name == "__init__.py" and dst.startswith(src + "."))}
        for src, dsts in edges.items()
    }


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith("occle_bench")))
def test_no_module_over_600_lines(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name].relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"


def test_no_import_cycle():
    cycles = _cycles(_package_edges(_first_party_edges()))
    assert cycles == [], f"import cycles: {cycles}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("occle_core")))
def test_core_imports_no_ros_and_no_benchmarks(name):
    bad = sorted(
        imp for imp in _imports(name, MODULES[name]) if imp.split(".")[0] in (*ROS_MODULES, "occle_ros", "occle_bench")
    )
    assert bad == [], f"{name} imports {bad}: occle_core stays pure Python + torch"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("occle_ros")))
def test_product_does_not_import_the_benchmarks(name):
    bad = sorted(imp for imp in _imports(name, MODULES[name]) if imp.split(".")[0] == "occle_bench")
    assert bad == [], f"{name} imports the benchmarks: {bad}"


def test_evaluation_and_training_cli_are_apart():
    edges = _first_party_edges()
    assert "occle_core.train" not in edges["occle_core.evaluate"]
    assert "occle_core.evaluate" not in edges["occle_core.train"]


def test_the_module_table_names_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    rows = set(re.findall(r"^\| `([^`]+\.py)` \|", doc, re.M))
    files = {str(p.relative_to(ROOT)) for p in MODULES.values()}
    missing = sorted(f for f in files - rows if not f.endswith("__init__.py"))
    assert not missing, f"docs/architecture.md, 'Modules': no row for {missing}"
    assert rows <= files, f"docs/architecture.md, 'Modules': rows for modules that do not exist: {sorted(rows - files)}"
