"""The import graph of npcrl/, read from the sources with ``ast`` (nothing is imported): every
import statement with its file, line, target and whether it runs at import time. Used by
tests/test_layout.py.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "npcrl"

# Top to bottom: a module may import from its own layer or any layer below it.
LAYERS = (
    "cli",
    "serve",
    "loop",
    "train",
    "evaluation",
    "sim",
    "agent",
    "reward",
    "playlog",
    "runtime",
    "privacy",
    "base",
)
BASE_MODULES = frozenset({"errors", "paths", "durable", "validate", "tomlfile", "_moved"})
FACADE = "npcrl"  # npcrl/__init__.py, the public face


@dataclass(frozen=True)
class Module:
    name: str
    path: Path

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"

    @property
    def package(self) -> str:
        """The package that relative imports and private submodules are judged against."""
        return self.name if self.is_package else self.name.rpartition(".")[0]

    @property
    def where(self) -> str:
        return self.path.relative_to(ROOT).as_posix() if self.path.is_relative_to(ROOT) else self.path.name


@dataclass(frozen=True)
class Import:
    source: Module
    line: int
    target: str  # a module name: an npcrl module when it is one, else the name as written
    name: str | None  # the name taken from the target by ``from target import name``
    eager: bool  # runs when the module is imported: not inside a function or ``if TYPE_CHECKING:``

    @property
    def at(self) -> str:
        return f"{self.source.where}:{self.line}"


@cache
def modules() -> dict[str, Module]:
    found = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        module = Module(".".join(parts), path)
        found[module.name] = module
    return found


def layer_of(module_name: str) -> str:
    parts = module_name.split(".")
    if len(parts) == 1:
        return FACADE
    if parts[1] in BASE_MODULES:
        return "base"
    return parts[1]


def absolute_origin(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.package.split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(node: ast.AST, eager: bool = True) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below ``node``, with whether it runs at import time."""
    for child in ast.iter_child_nodes(node):
        yield child, eager
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            yield from _statements(child, eager=False)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                yield stmt, False
                yield from _statements(stmt, eager=False)
            for stmt in child.orelse:
                yield stmt, eager
                yield from _statements(stmt, eager)
        else:
            yield from _statements(child, eager)


def _parse(module: Module) -> ast.Module:
    return ast.parse(module.path.read_text(encoding="utf-8"), filename=str(module.path))


def imports_of(module: Module) -> Iterator[Import]:
    known = modules()
    for node, eager in _statements(_parse(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(module, node.lineno, alias.name, None, eager)
        elif isinstance(node, ast.ImportFrom):
            origin = absolute_origin(module, node)
            for alias in node.names:
                submodule = f"{origin}.{alias.name}"
                if submodule in known:
                    yield Import(module, node.lineno, submodule, None, eager)
                else:
                    yield Import(module, node.lineno, origin, alias.name, eager)


@cache
def all_imports() -> tuple[Import, ...]:
    return tuple(imp for module in modules().values() for imp in imports_of(module))


def npcrl_imports() -> Iterator[Import]:
    return (imp for imp in all_imports() if imp.target == FACADE or imp.target.startswith(FACADE + "."))


def module_graph() -> dict[str, dict[str, list[Import]]]:
    graph: dict[str, dict[str, list[Import]]] = {name: defaultdict(list) for name in modules()}
    for imp in npcrl_imports():
        if imp.target in modules() and imp.target != imp.source.name:
            graph[imp.source.name][imp.target].append(imp)
    return graph


def strongly_connected(graph: dict[str, dict[str, list[Import]]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; the components of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(graph[succ])))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return components


def _loaded_by(module_name: str) -> Iterator[str]:
    """The module and the packages above it, which Python runs first."""
    parts = module_name.split(".")
    for end in range(1, len(parts) + 1):
        yield ".".join(parts[:end])


def loaded_at_import(root: str) -> dict[str, Import | None]:
    """Every module ``import root`` runs (imports inside functions and under ``TYPE_CHECKING`` do
    not run), each with the import that first reached it."""
    eager: dict[str, list[Import]] = defaultdict(list)
    for imp in all_imports():
        if imp.eager:
            eager[imp.source.name].append(imp)
    reached_by: dict[str, Import | None] = {root: None}
    queue = [root]
    while queue:
        for imp in eager[queue.pop()]:
            for name in _loaded_by(imp.target):
                if name not in reached_by:
                    reached_by[name] = imp
                    if name in modules():
                        queue.append(name)
    return reached_by


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else None
    return None


def _module_aliases(module: Module, tree: ast.Module) -> dict[str, str]:
    """Local name -> the npcrl module (or the ``npcrl`` root) it is bound to by an import."""
    bound = {}
    for node, _ in _statements(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname and alias.name in modules():
                    bound[alias.asname] = alias.name
                elif not alias.asname and alias.name.split(".")[0] == FACADE:
                    bound[FACADE] = FACADE
        elif isinstance(node, ast.ImportFrom):
            origin = absolute_origin(module, node)
            for alias in node.names:
                if f"{origin}.{alias.name}" in modules():
                    bound[alias.asname or alias.name] = f"{origin}.{alias.name}"
    return bound


def private_attribute_uses(module: Module) -> Iterator[str]:
    """``alias._name`` where ``alias`` is another npcrl module: a private name reached past an import."""
    tree = _parse(module)
    bound = _module_aliases(module, tree)
    for node, _ in _statements(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            head, _, rest = (_dotted(node.value) or "").partition(".")
            owner = ".".join(filter(None, (bound.get(head), rest)))
            if owner in modules() and owner != module.name:
                yield f"{module.where}:{node.lineno} uses private {node.attr} of {owner}"
