"""The package's layers (docs/architecture.md): a module imports only from its own layer and
the layers below it, and no modules import each other in a circle. Read from the source's
import statements, function-level imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import pyro_vae

LAYERS = [
    "runtime",
    "models",
    "inference",
    "data",
    "runs",
    "evaluation",
    "figures",
    "training",
    "app",
    "cli",
]
ROOT = Path(pyro_vae.__file__).parent


def imports_of(source: str) -> set[str]:
    """The pyro_vae modules a source imports (``pyro_vae.x.y``), anywhere in the file."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pyro_vae"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("pyro_vae"))
    return found


def _layer(module: str) -> int | None:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else None


def violations(modules: dict[str, str]) -> list[str]:
    """``importer -> imported`` pairs where the imported module lies in a higher layer."""
    bad = []
    for name, source in modules.items():
        own = _layer(name)
        for target in imports_of(source):
            layer = _layer(target)
            if own is not None and layer is not None and layer > own:
                bad.append(f"{name} -> {target}")
    return sorted(bad)


def package_modules() -> dict[str, str]:
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        out[".".join(rel.parts).removesuffix(".__init__")] = path.read_text()
    return out


def test_no_layer_imports_a_higher_one():
    assert violations(package_modules()) == []
    # Negative control: a planted upward import is found.
    planted = {"pyro_vae.models.x": "def f():\n    from pyro_vae.training.loop import train\n"}
    assert "pyro_vae.models.x -> pyro_vae.training.loop" in violations(planted)


def find_cycle(modules: dict[str, str]) -> list[str] | None:
    """One circle of imports between the modules, or None."""
    graph = {
        name: {t for t in imports_of(src) if t in modules and t != name}
        for name, src in modules.items()
        if name != "pyro_vae"  # the package's own __init__ re-exports everything
    }
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := visit(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


def test_no_import_cycle_between_modules():
    assert find_cycle(package_modules()) is None
    # Negative control: two modules that import each other are a cycle.
    planted = {
        "pyro_vae.data.a": "from pyro_vae.data.b import f\n",
        "pyro_vae.data.b": "def f():\n    from pyro_vae.data.a import g\n",
    }
    assert find_cycle(planted) == ["pyro_vae.data.a", "pyro_vae.data.b", "pyro_vae.data.a"]
