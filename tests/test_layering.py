"""The package's layering, read from the source (AST, no imports run): data flows one way, top to bottom.

    cli                              the Typer edge
    runner, starter                  orchestration of one run (and `gradcam init`)
    models, reports                  the model to explain; reading finished runs
    engine, io, demo, reference      autograd and CAM maths; pure file and pixel work; the demo's assets
    config, errors, events           the schema and the words every layer shares

A module may import its own layer or lower ones, never a higher one; no import circle at all (function-level
imports count: hiding an import in a function does not remove the circle); the two backends never import
each other. See ../shared/guide/ARCHITECTURE.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "gradcam_cli"

LAYERS = {
    "cli": 5,
    "runner": 4,
    "starter": 4,
    "models": 3,
    "reports": 3,
    "engine": 2,
    "io": 2,
    "demo": 2,
    "reference": 2,
    "config": 1,
    "errors": 1,
    "events": 1,
    "": 1,  # gradcam_cli/__init__.py: the version
}
PURE = ("io", "engine")  # import nothing from models/, runner/, reports/
BACKENDS = ("gradcam_cli.runner.local", "gradcam_cli.runner.ray_data")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every gradcam_cli module `path` imports, at any depth of the file (functions included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("gradcam_cli"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("gradcam_cli"):
            found.add(node.module)
            # `from gradcam_cli.models import from_onnx` imports a module, not a name
            found.update(
                f"{node.module}.{alias.name}"
                for alias in node.names
                if (PACKAGE.parent / f"{node.module}.{alias.name}".replace(".", "/")).with_suffix(".py").exists()
            )
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {i for i in imports_of(path) if i in modules and i != name} for name, path in modules.items()}


def part(module: str) -> str:
    """The first component below gradcam_cli: `runner`, `io`, `config` ... ('' for the package itself)."""
    return module.split(".")[1] if "." in module else ""


EDGES = graph()


def test_every_part_of_the_package_has_a_layer() -> None:
    unknown = sorted({part(module) for module in EDGES} - set(LAYERS))
    assert not unknown, f"give these a layer in tests/test_layering.py (and a place in the guide): {unknown}"


@pytest.mark.parametrize("module", sorted(EDGES))
def test_no_import_runs_up_the_layers(module: str) -> None:
    upward = [target for target in EDGES[module] if LAYERS[part(target)] > LAYERS[part(module)]]
    assert not upward, f"{module} imports from a higher layer: {upward}"


@pytest.mark.parametrize("lower", PURE)
def test_io_and_engine_are_pure(lower: str) -> None:
    offending = {
        module: sorted(t for t in targets if part(t) in ("models", "runner", "reports", "starter", "cli"))
        for module, targets in EDGES.items()
        if part(module) == lower
    }
    assert not {m: t for m, t in offending.items() if t}


def test_the_backends_do_not_import_each_other() -> None:
    local, ray = BACKENDS
    assert ray not in EDGES[local] and local not in EDGES[ray]


def test_no_import_circle() -> None:
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, "import circle: " + " -> ".join([*visiting[visiting.index(module) :], module])
        visiting.append(module)
        for target in sorted(EDGES[module]):
            if target.startswith(module + "."):
                continue  # a package's face naming its own modules
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(EDGES):
        visit(module)


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    """A hidden import is still an import: the rule above would catch the old pipeline <-> ray_engine circle."""
    source = tmp_path / "example.py"
    source.write_text("def f():\n    from gradcam_cli.runner.run import run\n    import gradcam_cli.cli\n")
    assert imports_of(source) == {"gradcam_cli.runner.run", "gradcam_cli.cli"}
