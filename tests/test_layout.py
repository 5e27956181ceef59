"""The package layout holds: import arrows point one way, no cycles, the game-side packages stay
torch-free, private names stay private, modules stay small, and the package diagram in
docs/ARCHITECTURE.md is the graph the code really has.

Every import statement counts, wherever it is: module level, inside a function, or under
``if TYPE_CHECKING:``. Each check collects all its violations and reports them in one message,
each naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from import_graph import (
    FACADE,
    LAYERS,
    PACKAGE_DIR,
    ROOT,
    Import,
    Module,
    all_imports,
    imports_of,
    is_private,
    layer_of,
    loaded_at_import,
    module_graph,
    modules,
    npcrl_imports,
    private_attribute_uses,
    strongly_connected,
)

ARCHITECTURE_DOC = ROOT / "docs" / "ARCHITECTURE.md"

# npcrl/__init__.py is the public face: it may re-export from any layer except these, which pull
# in the trainer (torch) or the command line.
FACADE_FORBIDDEN = ("npcrl.cli", "npcrl.loop.run", "npcrl.train")

# Games, the simulator and the evaluator run without the training extra: every layer below train
# (and the public face) stays free of torch, transformers and the exporters that need them.
TORCH_FREE_LAYERS = frozenset(LAYERS[LAYERS.index("train") + 1 :]) | {FACADE}
HEAVY_MODULES = frozenset({"torch", "transformers", "exporters"})
# Nothing in npcrl imports the game.
NEVER_IN_NPCRL = frozenset({"pygame", "game_demo"})

MAX_MODULE_LINES = 450
DIAGRAM_MARKER = "<!-- package imports: checked by tests/test_layout.py -->"


def _fail_listing(problem: str, violations: Iterable[str]) -> None:
    lines = sorted(set(violations))
    if lines:
        pytest.fail(f"{len(lines)} {problem}:\n  " + "\n  ".join(lines), pytrace=False)


def _layer_violation(imp: Import) -> str | None:
    target = imp.target
    if target not in modules():
        return f"{imp.at} imports {target}, which is no module in npcrl/ (an old path? see npcrl/_moved.py)"
    source_layer, target_layer = layer_of(imp.source.name), layer_of(target)
    if source_layer == FACADE:
        if any(target == f or target.startswith(f + ".") for f in FACADE_FORBIDDEN):
            return f"{imp.at} npcrl/__init__.py imports {target} (the public face never loads the CLI, loop or trainer)"
        return None
    if target_layer == FACADE:
        return f"{imp.at} imports the public face `npcrl` (import the module that defines the name)"
    if LAYERS.index(target_layer) < LAYERS.index(source_layer):
        return f"{imp.at} imports {target}: {source_layer} → {target_layer} points up"
    return None


def test_imports_point_down_the_layers() -> None:
    _fail_listing(
        "imports against the layers " + " → ".join(LAYERS),
        filter(None, (_layer_violation(imp) for imp in npcrl_imports())),
    )


def test_no_import_cycles() -> None:
    graph = module_graph()
    violations = []
    for component in strongly_connected(graph):
        members = set(component)
        edges = {
            f"{imp.at} imports {target}"
            for source in component
            for target, imps in graph[source].items()
            if target in members
            for imp in imps
        }
        violations.append("cycle among " + ", ".join(component) + ":\n    " + "\n    ".join(sorted(edges)))
    _fail_listing("import cycles", violations)


def test_game_side_packages_never_import_torch_or_pygame() -> None:
    violations = []
    for imp in all_imports():
        root = imp.target.split(".")[0]
        layer = layer_of(imp.source.name)
        if root in NEVER_IN_NPCRL:
            violations.append(f"{imp.at} imports {imp.target} (npcrl never imports the game or pygame)")
        elif root in HEAVY_MODULES and layer in TORCH_FREE_LAYERS:
            violations.append(f"{imp.at} imports {imp.target} ({layer} runs without the training extra)")
    _fail_listing("heavy imports below the trainer", violations)


def _needs_more_than_the_game(name: str) -> bool:
    return name.split(".")[0] in HEAVY_MODULES | NEVER_IN_NPCRL or any(
        name == f or name.startswith(f + ".") for f in FACADE_FORBIDDEN
    )


def test_import_npcrl_loads_no_trainer_cli_or_torch() -> None:
    reached_by = loaded_at_import(FACADE)
    violations = []
    for name in filter(_needs_more_than_the_game, reached_by):
        chain = [name]
        step = reached_by[name]
        while step is not None:
            chain.append(f"{step.source.name} ({step.at})")
            step = reached_by[step.source.name]
        violations.append("import npcrl loads " + " ← ".join(chain))
    _fail_listing("modules loaded by `import npcrl` that need the trainer, the CLI or the game", violations)


def _private_violation(imp: Import) -> str | None:
    if imp.name is not None:
        if is_private(imp.name):
            return f"{imp.at} imports private {imp.name} from {imp.target}"
        return None
    # A private module may be used by the package that holds it, nowhere else.
    parent, _, last = imp.target.rpartition(".")
    if is_private(last) and parent != imp.source.package:
        return f"{imp.at} imports private module {imp.target} from outside {parent}"
    return None


def test_no_private_names_imported_across_modules() -> None:
    violations = [v for v in map(_private_violation, npcrl_imports()) if v]
    violations += [v for module in modules().values() for v in private_attribute_uses(module)]
    _fail_listing("uses of private names of another module (make the name public or move it)", violations)


def test_modules_stay_small() -> None:
    violations = []
    for module in modules().values():
        count = len(module.path.read_text(encoding="utf-8").splitlines())
        if count >= MAX_MODULE_LINES:
            violations.append(f"{module.where}: {count} lines (split it by job; the limit is {MAX_MODULE_LINES})")
    _fail_listing("modules too long", violations)


def package_arrows() -> dict[str, list[str]]:
    """For each layer (the public face first), the layers its modules import, top to bottom."""
    order = (FACADE, *LAYERS)
    arrows: dict[str, set[str]] = {layer: set() for layer in order}
    for imp in npcrl_imports():
        if imp.target in modules():
            source, target = layer_of(imp.source.name), layer_of(imp.target)
            if source != target:
                arrows[source].add(target)
    return {layer: sorted(targets, key=order.index) for layer, targets in arrows.items()}


def diagram_from_code() -> str:
    arrows = package_arrows()
    width = max(map(len, arrows))
    return "\n".join(f"{layer:<{width}} → {', '.join(targets) or '(nothing)'}" for layer, targets in arrows.items())


def diagram_in_doc() -> str | None:
    text = ARCHITECTURE_DOC.read_text(encoding="utf-8")
    match = re.search(re.escape(DIAGRAM_MARKER) + r"\s*```[^\n]*\n(.*?)\n```", text, re.DOTALL)
    return match.group(1).strip("\n") if match else None


def test_architecture_diagram_matches_the_code() -> None:
    expected = diagram_from_code()
    found = diagram_in_doc()
    if found is None:
        pytest.fail(f"docs/ARCHITECTURE.md has no fenced block after the line {DIAGRAM_MARKER}", pytrace=False)
    if [line.rstrip() for line in found.splitlines()] != expected.splitlines():
        pytest.fail(
            "The package diagram in docs/ARCHITECTURE.md differs from the imports in npcrl/. If the change "
            f"is intended, replace the fenced block after {DIAGRAM_MARKER} with:\n\n{expected}\n",
            pytrace=False,
        )


def test_layer_of_sorts_every_module_into_a_known_layer() -> None:
    unknown = [m.where for m in modules().values() if layer_of(m.name) not in (FACADE, *LAYERS)]
    assert not unknown, f"modules outside every layer (add the package to LAYERS in this test): {unknown}"


def test_the_checks_see_function_level_and_type_checking_imports(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from npcrl.train import ppo\n"
        "def f():\n"
        "    import torch\n"
        "    from npcrl.cli.main import _private\n",
        encoding="utf-8",
    )
    probe = Module("npcrl.runtime.probe", source)
    found = {(imp.line, imp.target, imp.name, imp.eager) for imp in imports_of(probe)}
    assert {
        (3, "npcrl.train.ppo", None, False),
        (5, "torch", None, False),
        (6, "npcrl.cli.main", "_private", False),
    } <= found


def test_the_checks_see_private_names_reached_through_a_module(tmp_path: Path) -> None:
    source = tmp_path / "probe.py"
    source.write_text(
        "import npcrl.runtime.sampler\n"
        "from npcrl.runtime import kvcache as kv\n"
        "kv._hidden\n"
        "npcrl.runtime.sampler._hidden()\n",
        encoding="utf-8",
    )
    probe = Module("npcrl.agent.probe", source)
    found = [line.split(" ", 1)[1] for line in private_attribute_uses(probe)]
    assert found == ["uses private _hidden of npcrl.runtime.kvcache", "uses private _hidden of npcrl.runtime.sampler"]


def test_cycles_are_found_with_every_member() -> None:
    graph: dict[str, dict[str, list[Import]]] = {
        "a": {"b": []},
        "b": {"c": []},
        "c": {"a": [], "d": []},
        "d": {},
        "e": {"e": []},
    }
    assert strongly_connected(graph) == [["a", "b", "c"]]


DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")))
REPO_PATH = re.compile(r"`((?:npcrl|tests|bench|scripts|exporters|game_demo)/[\w./-]*\w)(?:::[\w]+)?`")
SECTION = re.compile(r"^## (?:npcrl\.(\w+)|(Base modules))\b", re.MULTILINE)


def _missing_repo_paths(doc: Path) -> Iterator[str]:
    text = doc.read_text(encoding="utf-8")
    for match in REPO_PATH.finditer(text):
        if not (ROOT / match.group(1)).exists():
            number = text.count("\n", 0, match.start()) + 1
            yield f"{doc.relative_to(ROOT)}:{number} names {match.group(1)}, which does not exist"


def _modules_missing_from_their_package() -> Iterator[str]:
    """``name.py`` under a ``## npcrl.<package>`` (or ``## Base modules``) heading of ARCHITECTURE.md."""
    folder: Path | None = None
    for number, line in enumerate(ARCHITECTURE_DOC.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("## "):
            heading = SECTION.match(line)
            folder = None if heading is None else PACKAGE_DIR / (heading.group(1) or "")
        if folder is None:
            continue
        for name in re.findall(r"`(\w+\.py)`", line):
            if not (folder / name).is_file():
                yield f"docs/ARCHITECTURE.md:{number} lists {name}, not in {folder.relative_to(ROOT)}/"


def test_docs_name_only_files_that_exist() -> None:
    """A path in README.md or docs/ (``npcrl/agent/safety.py``, ``tests/loop/test_loop.py::name``)
    names a file or directory of the repository, and each module listed under a package's heading
    in docs/ARCHITECTURE.md is in that package."""
    violations = [v for doc in DOCS for v in _missing_repo_paths(doc)]
    _fail_listing("stale paths in the docs", [*violations, *_modules_missing_from_their_package()])


def test_readme_links_every_doc() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    unlinked = [doc.name for doc in DOCS[1:] if f"(docs/{doc.name})" not in readme]
    assert not unlinked, f"README.md has no link [..](docs/NAME) to: {unlinked}"
