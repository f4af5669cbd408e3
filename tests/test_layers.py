"""The house's layers, read off the imports: no circle, nothing below the app imports it, and the
cluster client is only reached lazily from ``open_storage``.

Every import counts, including those under ``TYPE_CHECKING`` and inside functions: a type-only
import is still coupling a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("liteq", "cluster")
#: Modules allowed to import the app facade: the entry points above it.
APP_USERS = {"liteq.__init__", "liteq.app", "liteq.testing", "liteq.__main__"}
#: The CLI package (``liteq.cli.*``) is an entry point too: its commands load and open apps.
APP_USER_PACKAGES = ("liteq.cli.", "liteq.dashboard")
#: Where the library may reach the cluster package, inside the function: the store opener (a
#: ``liteq://`` URL). The CLI, an entry point, may too, in the commands that serve or drive a cluster.
LAZY_CLUSTER = {"liteq.storage.__init__:open_storage"}
#: The bottom of the storage layer, each module with the only liteq modules it may import: the
#: states, the records, the input checks and the contract every store implements.
STORAGE_FOUNDATION = {
    "liteq.storage.states": set(),
    "liteq.storage.records": set(),
    "liteq.storage.checks": {
        "liteq.exceptions",
        "liteq.inputs",
        "liteq.ratelimit",
        "liteq.storage.records",
        "liteq.storage.states",
    },
    "liteq.storage.contract": {"liteq.storage.records"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[0] == "cluster":  # installed as liteq.cluster (pyproject's package-dir)
        parts.insert(0, "liteq")
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            found[_module_name(path)] = path
    return found


def _resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The modules an import statement names, as absolute dotted names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        # A package's own module is spelled ``pkg.__init__`` here: its level-1 base is ``pkg``.
        base = module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    # ``from . import x`` and ``from .pkg import mod`` name modules: then the package itself is
    # not what is imported (the caller keeps the names that are modules).
    return [prefix, *(f"{prefix}.{alias.name}" for alias in node.names)]


def _edges() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)

    def canonical(name: str) -> str | None:
        if name in known:
            return name
        if f"{name}.__init__" in known:
            return f"{name}.__init__"
        return None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        out = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                prefix, *members = _resolve(name, is_package, node)
                if isinstance(node, ast.Import):
                    targets = [prefix, *members]
                else:
                    submodules = [m for m in members if canonical(m) is not None]
                    targets = submodules if submodules else [prefix]
                for target in targets:
                    found = canonical(target)
                    if found is not None and found != name:
                        out.add(found)
        graph[name] = out
    return graph


def _lazy_cluster_imports() -> set[str]:
    """Modules that import ``cluster`` inside a function (a lazy import)."""
    lazy = set()
    for name, path in _modules().items():
        if name.startswith("liteq.cluster"):
            continue
        for fn in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for node in ast.walk(fn):
                    if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("liteq.cluster"):
                        lazy.add(f"{name}:{fn.name}")
    return lazy


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_no_import_cycle_counting_type_checking_imports() -> None:
    # Given every import between liteq's and cluster's modules (TYPE_CHECKING and lazy ones too)
    graph = _edges()
    # When the graph is searched for a circle
    cycle = _cycle(graph)
    # Then there is none
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_only_the_entry_points_import_the_app() -> None:
    # Given the modules that import liteq.app
    graph = _edges()
    users = {name for name, targets in graph.items() if "liteq.app" in targets}
    # When the entry points (cli, testing, the package, the dashboard) are set aside
    below = {u for u in users if u not in APP_USERS and not u.startswith(APP_USER_PACKAGES)}
    # Then no lower module imports the app
    assert below == set(), f"modules below the app import it: {sorted(below)}"


def test_liteq_reaches_cluster_only_lazily_from_open_storage() -> None:
    # Given the imports of liteq's modules
    graph = _edges()
    eager = {
        name
        for name, targets in graph.items()
        if not name.startswith("liteq.cluster") and any(t.startswith("liteq.cluster") for t in targets)
    }
    # When the lazy (in-function) ones are listed
    lazy = _lazy_cluster_imports()
    # Then every import of the cluster package is lazy, and the library's only one is in open_storage
    assert {m for m in lazy if not m.startswith("liteq.cli.")} <= LAZY_CLUSTER, sorted(lazy)
    # (the graph counts lazy imports too: the CLI's are the cluster and dashboard commands' own modules)
    assert eager <= {"liteq.storage.__init__", "liteq.cli.cluster", "liteq.cli.dashboard"}, sorted(eager)


def test_the_storage_foundation_imports_nothing_above_it() -> None:
    # Given the imports of the modules every store and every layer above builds on
    graph = _edges()
    # When each is compared with what it may import
    extra = {name: graph[name] - allowed for name, allowed in STORAGE_FOUNDATION.items() if graph[name] - allowed}
    # Then none reaches further up (a store, the app, the worker or the cluster)
    assert extra == {}, extra


def test_the_cycle_finder_finds_a_circle() -> None:
    # Given a small graph with a circle through a type-only import
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    # When it is searched
    cycle = _cycle(graph)
    # Then the circle is reported
    assert cycle is not None and set(cycle) == {"a", "b", "c"}


def _private_uses_of_an_app(path: Path) -> list[str]:
    """``app._name`` / ``x.app._name`` attribute reads (dunders aside) in one file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.Attribute) or not node.attr.startswith("_") or node.attr.startswith("__"):
            continue
        owner = node.value
        name = owner.id if isinstance(owner, ast.Name) else owner.attr if isinstance(owner, ast.Attribute) else ""
        if name in ("app", "the_app"):
            found.append(f"{path.name}:{node.lineno} {name}.{node.attr}")
    return found


def test_nothing_outside_the_app_reaches_into_it() -> None:
    # Given every module but app.py
    paths = [p for name, p in _modules().items() if name != "liteq.app"]
    # When their reads of an app's private attributes are listed
    found = [use for p in paths for use in _private_uses_of_an_app(p)]
    # Then there are none: tasks, canvas and the scheduler go through the producer and registry
    assert found == []


#: The supervisor's parts, below the pool's loop (``liteq.pool``) that wires them together; the
#: deadline heap is at the bottom (it imports nothing of liteq).
POOL_PARTS = (
    "liteq.pool_options",
    "liteq.child_reports",
    "liteq.recycling",
    "liteq.shutdown",
    "liteq.dispatch",
    "liteq.upkeep",
    "liteq.liveness",
    "liteq.deadlines",
)


def test_the_pools_parts_sit_below_the_pool_and_the_deadline_heap_at_the_bottom() -> None:
    # Given the imports of the supervisor's parts
    graph = _edges()
    # When those that reach the pool (directly or through others) are listed
    climbing = [part for part in POOL_PARTS if "liteq.pool" in _reachable(graph, part)]
    # Then none does, and the deadline heap imports nothing of liteq
    assert climbing == []
    assert graph["liteq.deadlines"] == set()


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    stack = [start]
    while stack:
        for nxt in graph.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen
