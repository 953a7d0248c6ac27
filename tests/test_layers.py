"""The package's layers import only downward, function bodies included.

Each module's imports are read with `ast` (every `import` and `from ... import`
anywhere in the file, so a function-local import counts like one at the top),
resolved to the package's own modules, and checked against the layer map: a
layer may import the layers below it and nothing above; `testing` (stand-ins and
the float64 reference that the demo ships) only the command line may import;
and inside a layer the modules import each other without a circle.
"""

import ast
from pathlib import Path
from typing import Dict, Set

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mergekit_reasoning"
NAME = "mergekit_reasoning"

# Bottom to top. A layer may import every layer before it in this list.
LAYERS = ["core", "method", "executor", "vectors", "repro", "bench", "testing", "cli"]
# Who may import a layer beyond the rule above (None: anyone above it).
ONLY_IMPORTED_BY = {"testing": {"cli"}}
# Modules outside the layers, with what they may import.
OUTSIDE = {"": set(), "_startup": {"method"}}


def modules() -> Dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join((NAME,) + parts)] = path
    return found


def imports_of(module: str, path: Path, known: Set[str]) -> Set[str]:
    """The package's own modules that `module` imports, anywhere in its file."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:  # `from pkg import module` imports the module
                found.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source)
    return {name for name in found if name == NAME or name.startswith(NAME + ".")}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def graph() -> Dict[str, Set[str]]:
    found = modules()
    return {module: imports_of(module, path, set(found)) for module, path in found.items()}


def test_every_module_belongs_to_a_layer():
    strays = sorted(m for m in modules() if layer_of(m) not in LAYERS and layer_of(m) not in OUTSIDE)
    assert not strays, f"modules outside the layer map: {strays}"


def _allowed(importer: str, imported: str) -> bool:
    mine, theirs = layer_of(importer), layer_of(imported)
    if mine == theirs:
        return True
    if mine in OUTSIDE:
        return theirs in OUTSIDE[mine]
    if theirs in OUTSIDE:
        return False
    if theirs in ONLY_IMPORTED_BY and mine not in ONLY_IMPORTED_BY[theirs]:
        return False
    return LAYERS.index(theirs) < LAYERS.index(mine)


def test_imports_run_downward_only():
    wrong = sorted(
        f"{importer} imports {imported}"
        for importer, imported_set in graph().items()
        for imported in imported_set
        if not _allowed(importer, imported)
    )
    assert not wrong, "imports against the layer map:\n" + "\n".join(wrong)


def test_no_circle_inside_a_layer():
    edges = {
        module: {m for m in imported if m != module and not modules()[m].name == "__init__.py"}
        for module, imported in graph().items()
    }
    state: Dict[str, int] = {}

    def visit(module, trail):
        state[module] = 1
        for nxt in sorted(edges.get(module, ())):
            if state.get(nxt) == 1:
                cycle = trail[trail.index(nxt) :] + [nxt] if nxt in trail else [module, nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


@pytest.mark.parametrize(
    "importer, imported, allowed",
    [
        ("mergekit_reasoning.executor.stream", "mergekit_reasoning.method.kernel", True),
        ("mergekit_reasoning.method.kernel", "mergekit_reasoning.executor.stream", False),
        ("mergekit_reasoning.bench.sweep", "mergekit_reasoning.testing.standins", False),
        ("mergekit_reasoning.cli", "mergekit_reasoning.testing.demo", True),
        ("mergekit_reasoning.core.formats", "mergekit_reasoning.method.compat", False),
        ("mergekit_reasoning._startup.hook", "mergekit_reasoning.method.reasoning_vector", True),
        ("mergekit_reasoning._startup.hook", "mergekit_reasoning.executor.run", False),
    ],
)
def test_the_rule_itself(importer, imported, allowed):
    assert _allowed(importer, imported) is allowed


def test_function_local_imports_are_seen(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from mergekit_reasoning.executor import run\n    import mergekit_reasoning.cli\n")
    known = {"mergekit_reasoning.executor.run", "mergekit_reasoning.executor", "mergekit_reasoning.cli"}
    assert imports_of("mergekit_reasoning.core.m", module, known) == {
        "mergekit_reasoning.executor.run",
        "mergekit_reasoning.cli",
    }
