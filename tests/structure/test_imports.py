"""The package's import graph: no cycles, and the reference quantizer free of the kernels.

Every ``import`` statement in ``fp4sweep/`` counts, those inside functions included (they run
as soon as the function is called). ``from package import name`` is an edge to the submodule
``package.name`` where one exists, else to the package itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

import fp4sweep

ROOT = Path(fp4sweep.__file__).parent
REFERENCE = ["fp4sweep.quant.reference", "fp4sweep.quant.rng", "fp4sweep.quant.rounding",
             "fp4sweep.quant.scaling", "fp4sweep.quant.spec", "fp4sweep.quant.transforms",
             "fp4sweep.quant.formats"]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(path): path for path in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                    base = f"{anchor}.{base}" if base else anchor
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in files else base)
        graph[name] = {target for target in targets if target in files and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, stack = set(), [start]
    while stack:
        for target in graph[stack.pop()] - seen:
            seen.add(target)
            stack.append(target)
    return seen


def test_the_package_imports_have_no_cycle():
    assert find_cycle(import_graph()) is None


def test_the_reference_quantizer_imports_no_kernel_and_no_dispatch():
    graph = import_graph()
    for module in REFERENCE:
        assert not {m for m in reachable(graph, module)
                    if m.startswith("fp4sweep.quant.kernels") or m == "fp4sweep.quant.dispatch"}, module


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
