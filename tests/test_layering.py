"""The import rules of the house, checked over the import graph of ``src/edh`` (every import,
including the lazy ones inside functions):

- roles (``encoders``, ``decoders``, ``heads``) import only the shared layers (``layers``, ``ops``,
  ``utils``), the feature contract, the registry and edh's errors, and their own role folder;
- ``layers``, ``ops`` and ``utils`` import no role (``ops`` may read the role contracts, the ``base``
  modules: generation runs over the step-decoder contract), no workflow;
- the core (``core``) imports no workflow, no training, no export, no data, no command;
- nothing but the CLI imports the commands;
- no module imports itself back through others (no cycles).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "edh"
SHARED = ("edh.layers", "edh.ops", "edh.utils", "edh.core.features", "edh.core.registry", "edh.core.errors",
          "edh.version")
ROLES = ("edh.encoders", "edh.decoders", "edh.heads")
CONTRACTS = ("edh.encoders.base", "edh.decoders.base", "edh.heads.base")  # what generation and export may read
WORKFLOWS = ("edh.workflows", "edh.train", "edh.export", "edh.commands", "edh.cli", "edh.data", "edh.inspection")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The edh module an import names (``from edh.x import y``: ``edh.x.y`` when that is a module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edh"):
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names if alias.name.startswith("edh")]
            for target in targets:
                resolved = _resolve(target, modules)
                if resolved and resolved != name and resolved != "edh":
                    edges.add(resolved)
        graph[name] = edges
    return graph


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _violations(sources: tuple[str, ...], allowed) -> list[str]:
    out = []
    for module, edges in sorted(import_graph().items()):
        if _within(module, sources):
            out += [f"{module} imports {target}" for target in sorted(edges) if not allowed(module, target)]
    return out


def _role_folder(module: str) -> str:
    return next(r for r in ROLES if _within(module, (r,)))


def test_roles_import_only_shared_layers_and_their_own_folder():
    assert _violations(ROLES, lambda m, t: _within(t, SHARED) or _within(t, (_role_folder(m),))) == []


def test_shared_layers_import_no_role_and_no_workflow():
    assert _violations(("edh.layers", "edh.utils"), lambda m, t: _within(t, SHARED)) == []
    assert _violations(("edh.ops",), lambda m, t: _within(t, SHARED + CONTRACTS)) == []


def test_core_imports_no_workflow():
    # the core may describe a model (`Model.describe` -> edh.inspection.describe, the shape trace)
    allowed = lambda m, t: not _within(t, WORKFLOWS + ROLES) or t == "edh.inspection.describe"  # noqa: E731
    assert _violations(("edh.core",), allowed) == []


def test_only_the_cli_imports_the_commands():
    bad = [f"{m} imports {t}" for m, edges in import_graph().items() for t in edges
           if _within(t, ("edh.commands", "edh.cli")) and not _within(m, ("edh.commands", "edh.cli"))]
    assert bad == []


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                item = stack.pop()
                on_stack.discard(item)
                component.append(item)
                if item == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
