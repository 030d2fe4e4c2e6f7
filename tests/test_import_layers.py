"""The package's floors: no module imports one above its own.

The order is written once, in docs/architecture.md between the ``layers`` markers (one floor a
line, lowest first, the packages and modules of that floor after the colon). This test reads it
there, parses every module of ``minimaskrcnn`` (imports at the top and inside functions alike),
and fails on an import that climbs, on a module that no floor names, and on an import inside a
function that carries no reason (a comment on its line).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "minimaskrcnn"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def read_floors(text: str) -> dict[str, int]:
    """``{top-level name: floor}`` from the block between ``<!-- layers begin -->`` and
    ``<!-- layers end -->``: lines ``N  what  a, b, c`` (N the floor, lowest 0; the columns
    apart by two or more spaces; the last column the packages and modules of the floor)."""
    m = re.search(r"<!-- layers begin -->(.*?)<!-- layers end -->", text, re.S)
    if m is None:
        raise ValueError(f"{ARCHITECTURE}: no layers block")
    floors: dict[str, int] = {}
    for line in m.group(1).splitlines():
        row = re.match(r"\s*(\d+)\s+.*?\s{2,}(\S.*)$", line)
        if row is None:
            continue
        for name in row.group(2).split(","):
            name = name.strip().strip("`").rstrip("/").removesuffix(".py")
            if name in floors:
                raise ValueError(f"{name} is on two floors")
            floors[name] = int(row.group(1))
    return floors


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def unit(module: str) -> str:
    """The floor-holding unit of a module: its top-level package or module under minimaskrcnn
    (``minimaskrcnn.model.rpn`` -> ``model``); the package itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(path: Path) -> list[tuple[str, int, bool]]:
    """``(imported minimaskrcnn module, line, inside a function)`` for every import of the
    file; ``from minimaskrcnn import ops`` names the submodule ``minimaskrcnn.ops``."""
    return imports_of(path.read_text(encoding="utf-8"), module_name(path),
                      path.name == "__init__.py")


def imports_of(source: str, mod: str, is_pkg: bool) -> list[tuple[str, int, bool]]:
    """:func:`imports` of ``source`` read as the module ``mod`` (a package if ``is_pkg``)."""
    tree = ast.parse(source)
    in_function: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for sub in ast.walk(node):
                if isinstance(sub, (ast.Import, ast.ImportFrom)):
                    in_function.add(id(sub))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = mod.split(".") if is_pkg else mod.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = []
            for a in node.names:
                sub = f"{source}.{a.name}"
                sub_path = ROOT.joinpath(*sub.split("."))
                is_module = sub_path.with_suffix(".py").exists() or sub_path.is_dir()
                targets.append(sub if is_module else source)
        else:
            continue
        for t in targets:
            if t == "minimaskrcnn" or t.startswith("minimaskrcnn."):
                out.append((t, node.lineno, id(node) in in_function))
    return out


FILES = sorted(PACKAGE.rglob("*.py"))
FLOORS = read_floors(ARCHITECTURE.read_text(encoding="utf-8"))


def test_layers_block_parses():
    # the block names the lowest and the highest floors the package has
    assert FLOORS["backend"] == 0
    assert FLOORS["cli"] == max(FLOORS.values())
    assert FLOORS["ops"] < FLOORS["model"] < FLOORS["training"]


def test_every_module_has_a_floor():
    missing = sorted({unit(module_name(p)) for p in FILES} - set(FLOORS))
    assert not missing, f"docs/architecture.md's layers block names no floor for {missing}"


def test_no_import_climbs():
    climbs = []
    for path in FILES:
        src = unit(module_name(path))
        for target, line, _ in imports(path):
            dst = unit(target)
            if dst != src and FLOORS.get(dst, -1) > FLOORS.get(src, -1):
                climbs.append(f"{path.relative_to(ROOT)}:{line} {src} (floor {FLOORS.get(src)}) "
                              f"imports {target} (floor {FLOORS.get(dst)})")
    assert not climbs, "imports that climb:\n" + "\n".join(sorted(set(climbs)))


def reason(line: str) -> str:
    """The words of a line's comment once ``noqa: CODES`` is removed ('' if none)."""
    if "#" not in line:
        return ""
    comment = line.split("#", 1)[1]
    comment = re.sub(r"noqa(:\s*[A-Z]+[0-9]+(\s*,\s*[A-Z]+[0-9]+)*)?", "", comment)
    return comment.strip(" ()")


@pytest.mark.parametrize("line,has_reason", [
    ("    import cupy", False),
    ("    import cupy  # noqa: PLC0415", False),
    ("    import numba  # noqa: F401, PLC0415", False),
    ("    import cupy  # noqa: PLC0415  (optional: only on a GPU machine)", True),
    ("    import matplotlib  # a heavy dependency", True),
])
def test_reason(line, has_reason):
    assert bool(reason(line)) is has_reason


def test_imports_inside_functions_say_why():
    silent = []
    for path in FILES:
        lines = path.read_text(encoding="utf-8").splitlines()
        tree = ast.parse("\n".join(lines))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    text = " ".join(lines[node.lineno - 1: node.end_lineno])
                    if not reason(text):
                        silent.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not silent, "imports inside functions without a reason on their line:\n" + "\n".join(
        sorted(set(silent)))


def test_the_checker_sees_a_climb():
    # the check itself: backend (floor 0) importing the model and ops is seen, with the
    # submodule named by `from minimaskrcnn import ops`, and the in-function import flagged
    src = ("from minimaskrcnn.model import build_model\nfrom minimaskrcnn import ops\n"
           "def f():\n    from . import config\n")
    found = imports_of(src, "minimaskrcnn.backend", is_pkg=False)
    assert found == [("minimaskrcnn.model", 1, False), ("minimaskrcnn.ops", 2, False),
                     ("minimaskrcnn.config", 4, True)]
    assert FLOORS[unit("minimaskrcnn.model")] > FLOORS[unit("minimaskrcnn.backend")]


@pytest.mark.parametrize("line,expected", [
    ("  3    detection ops   `ops/`, nn/", {"ops": 3, "nn": 3}),
    (" 10    the base       backend, _validate.py", {"backend": 10, "_validate": 10}),
    ("floor  what           packages", {}),
])
def test_read_floors_lines(line, expected):
    assert read_floors(f"<!-- layers begin -->\n{line}\n<!-- layers end -->") == expected
