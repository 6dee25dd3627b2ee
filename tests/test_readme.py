"""The README's Python examples run as written, and every module path it or a docstring names
exists (a moved module must not leave a stale name behind)."""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
_BLOCK = re.compile(r"```python\n(.*?)```", re.S)
_DOTTED = re.compile(r"\btagsmith(?:\.[A-Za-z_]\w*)+")


def _python_blocks() -> list[str]:
    return [b for b in _BLOCK.findall(README.read_text(encoding="utf-8")) if ">>>" in b]


def test_the_readme_has_python_examples() -> None:
    blocks = _python_blocks()
    assert len(blocks) >= 2
    assert all("from tagsmith." in b for b in blocks)


def test_the_readme_python_examples_run(tiny_model: Path) -> None:
    # The examples name a checkpoint a user has; here it is the tiny random one in that layout.
    globs: dict = {}
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    parser = doctest.DocTestParser()
    for i, block in enumerate(_python_blocks()):
        text = block.replace('"anything-v5.safetensors"', repr(str(tiny_model)))
        test = parser.get_doctest(text, globs, f"README block {i}", str(README), 0)
        runner.run(test, clear_globs=False)
        globs = test.globs  # DocTest works on a copy; the next block goes on from it
    assert runner.failures == 0, f"{runner.failures} README example(s) failed (see output above)"
    assert globs["best"] is not None and globs["vectors"].shape[0] == 2


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            return False
        return True
    return False


def _named_paths() -> list[tuple[str, str]]:
    found = [("README.md", m) for m in _DOTTED.findall(README.read_text(encoding="utf-8"))]
    for path in sorted((ROOT / "tagsmith").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for m in _DOTTED.findall(text):
            found.append((str(path.relative_to(ROOT)), m))
    return sorted(set(found))


@pytest.mark.parametrize(("where", "dotted"), _named_paths())
def test_every_named_module_path_exists(where: str, dotted: str) -> None:
    assert _resolves(dotted), f"{where} names {dotted}, which does not exist"
