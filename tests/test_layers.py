"""The layers of npyseq, checked on its import graph.

format -> storage -> order -> keras -> front ends (cli): a module imports only
from its own layer or the layers below it; only ``npyseq.keras`` imports
``keras``; no module imports an underscored name from another module; and
there is no import circle. Read with ``ast`` from the source files, so lazy
(function-local) imports count too.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "npyseq")

# What each top-level part of the package may import from npyseq. Shared
# leaves (errors, _arguments) are allowed everywhere.
LEAVES = {"npyseq.errors", "npyseq.arguments", "npyseq.forks"}
ALLOWED = {
    "format": {"format"},
    "order": {"order"},
    "storage": {"format", "storage"},
    "keras": {"format", "storage", "order", "keras"},
    "cli": {"format", "storage", "order"},
    "__init__": {"format", "storage", "order", "keras"},
    "__main__": {"cli"},
}


def _modules() -> dict[str, str]:
    found = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                found[rel.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (for type checkers; never run)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            found |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return found


def _imports(module: str, path: str, runtime_only: bool = False) -> list[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file;
    with ``runtime_only``, not those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    skip = _type_checking_only(tree) if runtime_only else set()
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(a.name, [], node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            names = [a.name for a in node.names]
            # `from npyseq.storage import dataset` imports a module, not a name.
            submodules = [n for n in names if f"{base}.{n}" in MODULES]
            out += [(f"{base}.{n}", [], node.lineno) for n in submodules]
            rest = [n for n in names if n not in submodules]
            if rest or not submodules:
                out.append((base, rest, node.lineno))
    return out


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _npyseq_imports(runtime_only: bool = False):
    for module, path in sorted(MODULES.items()):
        for target, names, line in _imports(module, path, runtime_only):
            if target == "npyseq" or target.startswith("npyseq."):
                yield module, path, target, names, line


def test_every_module_belongs_to_a_layer():
    unknown = sorted({m for m in MODULES if m not in LEAVES and m != "npyseq" and _part(m) not in ALLOWED})
    assert not unknown, f"modules outside the layers: {unknown}"


def test_no_module_imports_upwards():
    bad = []
    for module, path, target, _, line in _npyseq_imports():
        if target in LEAVES or target == "npyseq":  # the package itself (__version__) is imported by all
            continue
        if module in LEAVES:
            bad.append(f"{path}:{line}: the leaf {module} imports {target}")
        elif _part(target) not in ALLOWED[_part(module)]:
            bad.append(f"{path}:{line}: {module} ({_part(module)}) imports {target} ({_part(target)})")
    assert not bad, "\n".join(bad)


def test_only_npyseq_keras_imports_keras_or_a_backend():
    bad = []
    for module, path in MODULES.items():
        if _part(module) == "keras":
            continue
        for target, _, line in _imports(module, path):
            if target.split(".")[0] in {"keras", "tensorflow", "jax", "torch"}:
                bad.append(f"{path}:{line}: {module} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_underscored_name_is_imported_from_another_module():
    bad = []
    for module, path, target, names, line in _npyseq_imports():
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        if private:
            bad.append(f"{path}:{line}: {module} imports {private} from {target}")
    assert not bad, "\n".join(bad)


def test_no_import_circle():
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, _, target, _, _ in _npyseq_imports(runtime_only=True):
        if target in graph and target != module:
            graph[module].add(target)
    state: dict[str, int] = {}
    stack: list[str] = []
    circles = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                circles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("path", sorted(MODULES.values()))
def test_no_module_is_over_500_lines(path):
    with open(path, encoding="utf-8") as f:
        lines = sum(1 for _ in f)
    assert lines <= 500, f"{path}: {lines} lines; a module over 500 lines holds two ideas"


def test_argument_ints_are_checked_in_one_place():
    """User arguments go through npyseq.arguments; format/ checks JSON values (no numpy ints there)."""
    pattern = "isinstance(value, (int, np.integer))"
    found = []
    for module, path in MODULES.items():
        text = open(path, encoding="utf-8").read()
        if module != "npyseq.arguments" and ("np.integer)" in text and "isinstance(" in text
                                            and " or not isinstance(" in text):
            found += [f"{path}:{n}" for n, line in enumerate(text.splitlines(), 1)
                      if " or not isinstance(" in line and "np.integer" in line]
    assert not found, f"hand-written int checks (use npyseq.arguments, like {pattern!r} there): {found}"
