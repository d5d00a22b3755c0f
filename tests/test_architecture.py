"""The layout stays true: one-way layers, no import circles, no imports hidden in functions.

Layers, each importing only the ones before it (see the README's "How the code is laid out"):
playbooks -> activities -> workflows -> tabletop -> workers.runtime -> workers.web -> workers.cli / workers.demo.
Workflows may import the activities' *contracts* (the data types and activity interfaces) but never an
implementation. The import graph is read with ``ast``, so this needs no imports of the code itself.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("playbooks", "activities", "workflows", "tabletop", "workers")
LAYERS = (
    ("playbooks",),
    ("activities",),
    ("workflows",),
    ("tabletop",),
    ("workers.runtime",),
    ("workers.web",),
    ("workers.cli", "workers.demo", "workers"),
)
WORKFLOWS_MAY_IMPORT_FROM_ACTIVITIES = {"activities.contracts"}


@dataclass(frozen=True)
class Import:
    source: str
    target: str
    line: int
    in_function: bool
    type_checking_only: bool


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_modules() -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[_module_name(path)] = path
    return modules


MODULES = _project_modules()


def _resolve(target: str) -> str | None:
    """The project module an import names (``a.b.c`` may be module ``a.b`` importing name ``c``)."""
    while target:
        if target in MODULES:
            return target
        if "." not in target:
            return None
        target = target.rsplit(".", 1)[0]
    return None


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, True, type_checking)
            elif isinstance(child, ast.If) and _is_type_checking(child):
                visit(child, in_function, True)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    target = _resolve(alias.name)
                    if target:
                        found.append(Import(module, target, child.lineno, in_function, type_checking))
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    target = _resolve(f"{child.module}.{alias.name}") or _resolve(child.module)
                    if target:
                        found.append(Import(module, target, child.lineno, in_function, type_checking))
            else:
                visit(child, in_function, type_checking)

    visit(tree, False, False)
    return found


ALL_IMPORTS = [imp for module, path in MODULES.items() for imp in _imports(module, path)]


def _layer(module: str) -> int:
    best, best_len = -1, -1
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    assert best >= 0, f"{module} belongs to no layer: add it to LAYERS"
    return best


def _where(imp: Import) -> str:
    return f"{MODULES[imp.source].relative_to(ROOT)}:{imp.line}: {imp.source} imports {imp.target}"


def test_the_graph_is_not_empty() -> None:
    # Guards the checks below against a parser that silently finds nothing.
    assert len(MODULES) > 40
    assert any(i.source == "workflows.rollback" and i.target == "playbooks.models" for i in ALL_IMPORTS)


def test_no_upward_imports() -> None:
    violations = [_where(i) for i in ALL_IMPORTS if _layer(i.target) > _layer(i.source)]
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_workflows_import_only_the_activity_contracts() -> None:
    violations = [
        _where(i) for i in ALL_IMPORTS
        if _layer(i.source) == _layer("workflows") and i.target.startswith("activities")
        and i.target not in WORKFLOWS_MAY_IMPORT_FROM_ACTIVITIES
    ]
    assert not violations, "workflows import activity implementations:\n" + "\n".join(violations)


def test_the_engine_never_imports_tabletop() -> None:
    engine = ("playbooks", "activities", "workflows", "workers.runtime")
    violations = [_where(i) for i in ALL_IMPORTS
                  if i.source.startswith(engine) and i.target.startswith("tabletop")]
    assert not violations, "\n".join(violations)


def test_no_imports_hidden_in_functions() -> None:
    violations = [_where(i) for i in ALL_IMPORTS if i.in_function]
    assert not violations, "move these imports to the top of the module:\n" + "\n".join(violations)


def _cycle() -> list[str] | None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for imp in ALL_IMPORTS:
        if not imp.type_checking_only and imp.target != imp.source:
            graph[imp.source].add(imp.target)
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(graph):
        if module not in state and (found := dfs(module)):
            return found
    return None


def test_no_import_circles() -> None:
    cycle = _cycle()
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("rule", ["layer", "circle"])
def test_the_checks_catch_a_violation(rule: str, tmp_path: Path) -> None:
    """The walker itself: a planted upward import and a planted circle are found."""
    planted = [Import("activities.flagd", "workers.runtime.settings", 1, False, False)] if rule == "layer" else [
        Import("activities.flagd", "activities.errors", 1, False, False),
        Import("activities.errors", "activities.flagd", 1, False, False)]
    if rule == "layer":
        assert any(_layer(i.target) > _layer(i.source) for i in planted)
    else:
        global ALL_IMPORTS
        saved = ALL_IMPORTS
        try:
            ALL_IMPORTS = saved + planted
            assert _cycle() is not None
        finally:
            ALL_IMPORTS = saved
