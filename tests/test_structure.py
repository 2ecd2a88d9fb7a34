"""The shape of the package: no import cycle, no module over 400 lines, a docstring atop every module, and
``vit_exp.models`` free of Lightning, Hydra and the rest of vit_exp. Read from the source with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vit_exp"
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    """{dotted name: file} of every module of vit_exp (packages by their ``__init__``)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ["vit_exp", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imported(name: str, path: Path) -> set[str]:
    """Every module that ``name`` imports at run time, at its top or inside functions (``TYPE_CHECKING`` blocks
    aside: they never run)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking(node):
            return
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets.add(base)
            targets.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return targets


def _graph() -> dict[str, set[str]]:
    """{module: the vit_exp modules it imports}. Importing ``a.b.c`` also runs the packages ``a.b`` and ``a``,
    except those that hold the importer (Python is already running them)."""
    graph = {}
    for name, path in MODULES.items():
        edges = set()
        for target in _imported(name, path):
            if target not in MODULES:
                continue
            parts = target.split(".")
            for i in range(2, len(parts) + 1):
                parent = ".".join(parts[:i])
                if parent in MODULES and parent != name and not name.startswith(parent + "."):
                    edges.add(parent)
        graph[name] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := walk(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := walk(node)):
            return found
    return None


def test_the_cycle_finder_finds_cycles() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_graph_has_no_cycle() -> None:
    graph = _graph()
    assert graph["vit_exp.run"], "the parser sees run.py's imports"  # the test reads what it should
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_short_and_say_what_they_own(name: str) -> None:
    source = MODULES[name].read_text()
    lines = len(source.splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (> {MAX_LINES}): split it by concept"
    if source.strip():  # an empty namespace-like __init__ owns nothing
        assert ast.get_docstring(ast.parse(source)), f"{name} does not open with a docstring saying what it owns"


def test_models_import_torch_only() -> None:
    """``vit_exp.models`` imports nothing of Lightning, Hydra, OmegaConf, nor of vit_exp outside models."""
    offending = {}
    for name, path in MODULES.items():
        if name != "vit_exp.models" and not name.startswith("vit_exp.models."):
            continue
        bad = {
            t for t in _imported(name, path)
            if t.split(".")[0] in ("lightning", "pytorch_lightning", "hydra", "omegaconf")
            or (t.startswith("vit_exp") and t != "vit_exp" and not t.startswith("vit_exp.models"))
        }  # fmt: skip
        if bad:
            offending[name] = sorted(bad)
    assert not offending, offending
