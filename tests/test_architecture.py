"""Imports flow one way (docs/architecture.md): the library never imports the app, the benchmarks or
the training script, and its own modules import each other without cycles."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Top-level names of the project's code that sits on the library.
ABOVE_THE_LIBRARY = {"benchmarks", "webapp", "app", "train"}


def _dynamic_import(node: ast.AST) -> bool:
    """``importlib.import_module("name")`` or ``__import__("name")`` with a literal name."""
    return (
        isinstance(node, ast.Call)
        and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
        and bool(node.args)
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )


def imported(source: str, package: str = "regcore") -> set[str]:
    """Absolute names of the modules ``source`` (a module of ``package``) imports, including
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.add(node.module)
            else:
                base = ".".join(package.split(".")[: len(package.split(".")) - (node.level - 1)]) or "<outside>"
                names |= {f"{base}.{node.module}"} if node.module else {f"{base}.{alias.name}" for alias in node.names}
        elif _dynamic_import(node):
            names.add(node.args[0].value)
    return names


def _library_modules() -> dict[str, set[str]]:
    files = sorted((ROOT / "regcore").rglob("*.py"))
    assert len(files) > 15
    return {path.relative_to(ROOT).as_posix(): imported(path.read_text()) for path in files}


def test_the_library_imports_nothing_above_it():
    offenders = {
        path: sorted(n for n in names if n.split(".")[0] in ABOVE_THE_LIBRARY or n.startswith("<outside>"))
        for path, names in _library_modules().items()
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_the_app_side_does_not_import_the_benchmarks():
    for path in sorted([ROOT / "app.py", *(ROOT / "webapp").rglob("*.py")]):
        assert not any(n.split(".")[0] == "benchmarks" for n in imported(path.read_text(), "webapp")), path


def test_library_modules_import_each_other_without_cycles():
    graph = {
        Path(path).stem: {n.split(".")[1] for n in names if n.startswith("regcore.")} - {Path(path).stem}
        for path, names in _library_modules().items()
    }
    done: set[str] = set()

    def visit(module: str, stack: tuple[str, ...]) -> None:
        assert module not in stack, f"import cycle: {' -> '.join((*stack, module))}"
        if module in done:
            return
        for dep in sorted(graph.get(module, ())):
            visit(dep, (*stack, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())
    assert not graph["filters"] and not graph["warp"] and not graph["errors"]  # the bottom layer stands alone


def test_the_check_sees_every_kind_of_import():
    """The checks above can fail: each way of importing a forbidden module is caught."""
    for source in (
        "import benchmarks.suite",
        "from webapp import compute",
        "from app import demo",
        "import train as t",
        "import importlib\nimportlib.import_module('benchmarks.run')",
        "__import__('webapp')",
    ):
        assert any(n.split(".")[0] in ABOVE_THE_LIBRARY for n in imported(source)), source
    assert imported("from .. import app") == {"<outside>.app"}  # beyond the package's top
    assert imported("from .pipeline import METHODS") == {"regcore.pipeline"}
    assert imported("from . import losses") == {"regcore.losses"}
