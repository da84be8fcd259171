"""The package's layers, lowest first: no module imports a higher layer, and no two modules import each other
(directly or round a cycle), counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "transferlab"
# docs/architecture.md draws the same ladder
LAYERS = [
    ("errors", "config", "precision", "atomic", "run_dir"),
    ("data", "evaluation.metrics"),
    ("backbones",),
    ("models",),
    ("tasks",),
    ("strategies",),
    ("training",),
    ("evaluation.plots", "evaluation.report", "evaluation.card", "pipeline"),
    ("lab", "deploy"),
    ("console", "commands", "cli"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    """The layer of a module: the longest matching prefix in LAYERS."""
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    assert best is not None, f"{module} is in no layer: add it to LAYERS (and docs/architecture.md)"
    return best[0]


def imports(path: Path) -> set[str]:
    """transferlab modules a file imports, anywhere in it."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("transferlab."):
            base = node.module.removeprefix("transferlab.")
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if (SRC / base.replace(".", "/") / a.name).exists()
                         or (SRC / base.replace(".", "/") / f"{a.name}.py").exists())
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("transferlab.") for a in node.names if a.name.startswith("transferlab."))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in SRC.rglob("*.py") if module_name(p)}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_module_imports_a_higher_layer():
    upward = [f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
              for module, targets in graph().items() for target in targets if layer(target) > layer(module)]
    assert upward == []


def test_no_import_cycles():
    edges = graph()
    # a package's __init__ is imported by its own modules' imports; that is not a cycle of code
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in edges.items()}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    assert cycles == []
