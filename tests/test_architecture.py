"""The structure DESIGN.md agrees on, checked on the source: imports flow one way (chat, documents -> tenants ->
vectordb) with no cycle between modules, vectordb imports no other app, and only the apps that own a thing touch it."""

from __future__ import annotations

import ast
from pathlib import Path

from config.settings_paths import BASE_DIR

APPS = ("config", "tenants", "documents", "chat", "vectordb")


def _modules() -> dict[str, Path]:
    found = {}
    for app in APPS:
        for path in sorted((BASE_DIR / app).rglob("*.py")):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(BASE_DIR).with_suffix("").parts).removesuffix(".__init__")
            found[name] = path
    return found


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules this file imports, at module level or inside functions."""
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                imported.add(name)
    return imported


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in graph:
        if node not in index:
            visit(node)
    return groups


def test_no_import_cycles_between_modules():
    graph = _graph()
    # Packages import their own modules to re-export them: that is not a cycle of the code's own making.
    for name in graph:
        graph[name] = {target for target in graph[name] if not name.startswith(target + ".")}

    assert _cycles(graph) == []


def test_imports_flow_one_way_between_apps():
    allowed = {
        "vectordb": {"vectordb"},
        "tenants": {"tenants", "vectordb", "config"},
        "documents": {"documents", "tenants", "vectordb", "config"},
        "chat": {"chat", "documents", "tenants", "vectordb", "config"},
    }
    wrong = [
        f"{module} imports {target}"
        for module, targets in _graph().items()
        for target in targets
        if module.split(".")[0] in allowed and target.split(".")[0] not in allowed[module.split(".")[0]]
    ]

    assert wrong == []


def _mentions(text: str) -> list[str]:
    return sorted(str(path.relative_to(BASE_DIR)) for path in _modules().values() if text in path.read_text())


def test_only_tenants_decrypts_credentials_and_writes_the_registry():
    assert [path for path in _mentions("decrypt_credentials") if not path.startswith("tenants/")] == []
    assert [path for path in _mentions("VectorDatabase.objects") if not path.startswith("tenants/")] == []


def test_only_vectordb_connects_to_tenant_databases():
    # Providers administer servers (as a superuser, never as a tenant); the embedded server's helper sets it up.
    allowed = ("vectordb/connections.py", "tenants/provisioners/", "config/embedded_postgres.py")

    assert [path for path in _mentions("psycopg.connect(") if not path.startswith(allowed)] == []
