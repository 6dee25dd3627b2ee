"""The package's rooms and the direction of imports between them.

errors/fileio/paths -> text -> model -> analysis | captions -> cli | tui. The static check reads
every import in every module (function-level ones too, which is where the heavy ones live); the
subprocess checks prove it holds at run time as well, where a stray import would show up in
``sys.modules``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tagsmith"
GROUND = {"errors", "fileio", "paths", "__init__"}
# What each room may import from tagsmith (besides itself and the ground floor).
ALLOWED = {
    "text": set(),
    "model": {"text"},
    "analysis": {"text", "model"},
    "captions": {"text", "model"},
    "tui": {"text", "model", "analysis", "captions"},
    "cli": {"text", "model", "analysis", "captions", "tui"},
    "__main__": {"cli"},  # `python -m tagsmith`
}
MAX_LINES = 650


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "_data" not in p.parts)


def _room(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _tagsmith_imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "tagsmith":
                names = [f"tagsmith.{a.name}" for a in node.names]
            out += [(node.lineno, n) for n in names if n.split(".")[0] == "tagsmith"]
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "tagsmith"]
    return out


def test_every_room_imports_only_rooms_below_it() -> None:
    wrong = []
    for path in _modules():
        room = _room(path)
        allowed = GROUND | {room} | ALLOWED.get(room, set())
        for line, name in _tagsmith_imports(path):
            parts = name.split(".")
            target = parts[1] if len(parts) > 1 else "__init__"
            if target not in allowed and target != "__version__":
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {name}")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_ground_floor_imports_no_room() -> None:
    for name in ("errors", "fileio", "paths"):
        targets = {n.split(".")[1] for _, n in _tagsmith_imports(PACKAGE / f"{name}.py")}
        assert targets <= GROUND, f"tagsmith/{name}.py imports {targets - GROUND}"


def test_every_module_says_its_job_and_stays_small() -> None:
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text))
        assert doc, f"{path.relative_to(PACKAGE.parent)} has no module docstring"
        n = text.count("\n")
        assert n <= MAX_LINES, f"{path.relative_to(PACKAGE.parent)} has {n} lines (max {MAX_LINES})"


def test_the_rooms_are_packages_with_a_purpose() -> None:
    for room in (r for r in ALLOWED if (PACKAGE / r).is_dir()):
        init = PACKAGE / room / "__init__.py"
        assert init.is_file(), f"tagsmith/{room} is not a package"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))


@pytest.mark.parametrize(
    ("room", "forbidden"),
    [
        ("text", ("model", "analysis", "captions", "cli", "tui")),
        ("model", ("analysis", "captions", "cli", "tui")),
        ("analysis", ("captions", "cli", "tui")),
        ("captions", ("analysis", "cli", "tui")),
    ],
)
def test_importing_a_room_loads_nothing_above_it(room: str, forbidden: tuple[str, ...]) -> None:
    # The torch forward pass is the one module allowed to import torch at module level.
    modules = sorted(
        f"tagsmith.{room}.{p.stem}" for p in (PACKAGE / room).glob("*.py")
        if p.stem != "__init__" and f"{room}.{p.stem}" != "model.encoder"
    )
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[:2][-1] in {forbidden!r} "
        "and m.startswith('tagsmith.'))\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'textual', 'typer', 'rich') "
        "if m in sys.modules)\n"
        "print(bad, heavy)\n"
        "assert not bad and not heavy, (bad, heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr + out.stdout
