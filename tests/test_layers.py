"""The package's layers, read from its source: every import (inside functions too) points
down a layer or within one, no module imports itself through others, and nothing below the
plugin imports Qt or napari (docs/architecture.md, "Layers")."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import napari_vmunet

PACKAGE = Path(napari_vmunet.__file__).parent
QT = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt")

# Lower numbers are lower layers; a module may import its own layer and those below.
LAYERS = [
    (0, ("napari_vmunet", "napari_vmunet.io", "napari_vmunet.recipes", "napari_vmunet.metrics",
         "napari_vmunet.bundled")),
    (1, ("napari_vmunet.ops",)),
    (2, ("napari_vmunet.model", "napari_vmunet.checkpoint")),
    (3, ("napari_vmunet.engine",)),
    (4, ("napari_vmunet.cli", "napari_vmunet._napari")),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its source."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # "from . import a" depends on the module a; "from .a import b" on a (and on a.b
            # where that is a module)
            submodules = [f"{base}.{alias.name}" for alias in node.names
                          if f"{base}.{alias.name}" in MODULES]
            names_only = len(submodules) < len(node.names)
            targets = [*([base] if names_only else []), *submodules]
        else:
            continue
        found.update(t for t in targets if t in MODULES and t != name)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _layer(name: str) -> int:
    return max(level for level, roots in LAYERS
               for root in roots if name == root or name.startswith(root + "."))


def test_every_module_has_a_layer():
    assert all(_layer(name) >= 0 for name in MODULES)


def test_no_import_points_up_a_layer():
    upward = [f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
              for a, targets in GRAPH.items() for b in targets if _layer(b) > _layer(a)
              and b != "napari_vmunet"]
    assert not upward, "\n".join(upward)


def test_the_engine_and_the_command_line_stay_out_of_each_other_and_the_plugin():
    crossing = [f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
                if (a.startswith("napari_vmunet.cli") and b.startswith("napari_vmunet._napari"))
                or (a.startswith("napari_vmunet._napari") and b.startswith("napari_vmunet.cli"))]
    assert not crossing, "\n".join(crossing)


def test_there_is_no_circle_of_imports():
    circles, state = [], {}

    def visit(name, path):
        state[name] = "open"
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                circles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not circles, "\n".join(circles)


def test_nothing_below_the_plugin_imports_qt_or_napari():
    offenders = []
    for name, path in MODULES.items():
        if name.startswith("napari_vmunet._napari"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            offenders += [f"{name} imports {n}" for n in names if n.split(".")[0] in QT]
    assert not offenders, "\n".join(offenders)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_every_layer_below_the_plugin_imports_without_qt():
    below = [n for n in MODULES if not n.startswith("napari_vmunet._napari")
             and not n.endswith((".mamba", ".__main__"))]  # mamba-ssm: only on a GPU box
    code = (f"import importlib, sys\nfor m in {below!r}: importlib.import_module(m)\n"
            f"bad = [m for m in {QT!r} if m in sys.modules]\nprint(bad); sys.exit(bool(bad))")
    result = _run(code)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("module", [
    "napari_vmunet", "napari_vmunet.engine", "napari_vmunet.engine.events",
    "napari_vmunet.engine.training.settings", "napari_vmunet.model", "napari_vmunet.model.info",
    "napari_vmunet.recipes", "napari_vmunet.io", "napari_vmunet.cli"])
def test_what_widgets_and_the_parser_read_first_imports_no_torch(module):
    parse = "napari_vmunet.cli.build_parser().parse_args(['info'])\n"
    code = (f"import sys, {module}\n" + (parse if module == "napari_vmunet.cli" else "")
            + "sys.exit('torch' in sys.modules)")
    assert _run(code).returncode == 0, f"importing {module} imported torch"
