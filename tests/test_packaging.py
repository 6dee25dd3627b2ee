"""What a fresh install gets: the declared dependencies match what tagsmith imports, and CI
runs the README's own test command (read out of the README, so the two cannot drift apart)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
# Import names that differ from their distribution names.
DIST_OF = {"yaml": "pyyaml", "sklearn": "scikit-learn", "PIL": "pillow"}


def _dist_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].strip().lower().replace("_", "-")
            for r in requirements}


def _guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """An import inside ``try: ... except ImportError`` (or a broader handler)."""
    while node in parents:
        child, node = node, parents[node]
        if isinstance(node, ast.Try) and child in node.body:
            for h in node.handlers:
                names = [h.type] if not isinstance(h.type, ast.Tuple) else h.type.elts
                if h.type is None or any(getattr(n, "id", "") in (
                        "ImportError", "ModuleNotFoundError", "Exception") for n in names):
                    return True
    return False


def runtime_imports() -> dict[str, list[tuple[str, bool]]]:
    """Top-level third-party modules imported anywhere in tagsmith/ -> [(file, guarded)]."""
    found: dict[str, list[tuple[str, bool]]] = {}
    for path in sorted((ROOT / "tagsmith").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {c: p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("tagsmith", "__future__"):
                    continue
                found.setdefault(top, []).append(
                    (str(path.relative_to(ROOT)), _guarded(node, parents)))
    return found


def test_runtime_imports_match_the_declared_dependencies() -> None:
    declared = _dist_names(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    optional = _dist_names([r for name, reqs in extras.items() if name != "test" for r in reqs])
    imports = runtime_imports()
    used = {DIST_OF.get(m, m).lower().replace("_", "-") for m in imports}
    undeclared = {}
    for module, where in imports.items():
        dist = DIST_OF.get(module, module).lower().replace("_", "-")
        if dist in declared:
            continue
        # An optional extra is fine where at least one import of it is guarded (the guard
        # explains what to install); anything else must be a runtime dependency.
        if dist in optional and any(g for _, g in where):
            continue
        undeclared[module] = sorted({f for f, _ in where})
    assert not undeclared, f"imported but not in [project.dependencies]: {undeclared}"
    # click comes with typer (which vendors or requires it); nothing else may sit unused.
    assert declared - used == set(), f"declared but never imported: {declared - used}"


def test_references_only_tests_use_are_test_extras() -> None:
    declared = _dist_names(PYPROJECT["project"]["dependencies"])
    test = _dist_names(PYPROJECT["project"]["optional-dependencies"]["test"])
    assert {"transformers", "scikit-learn"} <= test
    assert not {"transformers", "scikit-learn"} & declared
    assert "scipy" in declared
    imports = runtime_imports()
    assert "transformers" not in imports and "sklearn" not in imports


def test_ci_takes_the_test_command_out_of_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    got = subprocess.run([sys.executable, str(ROOT / ".ci" / "readme_command.py"),
                          str(ROOT / "README.md")], capture_output=True, text=True, check=True)
    command = got.stdout.strip()
    assert command == 'pip install -e ".[test]" && python -m pytest -q'
    block = readme.split("<!-- ci: test command -->", 1)[1]
    assert command in block.split("```", 2)[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "readme_command.py" in ci and "pytest" not in ci.replace("pytest collected", "")


def test_quick_start_gives_both_install_lines_before_the_first_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    cpu = quick.index("download.pytorch.org/whl/cpu")
    gpu = quick.index("NVIDIA")
    first_run = quick.index('tagsmith suggest "mayonnaise bottle"')
    assert cpu < quick.index("pip install . &&", cpu) and gpu < quick.rindex("tagsmith suggest")
    assert first_run > quick.index("No NVIDIA GPU")  # the choice comes before any command
    assert "190 MB" in quick and "6 GB" in quick  # what each costs


def _fake_repo(tmp_path: Path, command: str) -> Path:
    repo = tmp_path / "repo"
    (repo / ".ci").mkdir(parents=True)
    for name in ("run", "readme_command.py"):
        (repo / ".ci" / name).write_bytes((ROOT / ".ci" / name).read_bytes())
    (repo / ".ci" / "run").chmod(0o755)
    (repo / "README.md").write_text(
        f"# x\n\n<!-- ci: test command -->\n```bash\n{command}\n```\n", encoding="utf-8")
    return repo


@pytest.mark.parametrize(("exit_code", "expected"), [(0, 0), (3, 3), (5, 1), (1, 1)])
def test_ci_fails_when_the_readme_command_fails(tmp_path: Path, exit_code: int,
                                                expected: int) -> None:
    repo = _fake_repo(tmp_path, f'python3 -c "import sys; sys.exit({exit_code})"')
    env = {**os.environ, "CI_NO_VENV": "1"}
    done = subprocess.run(["bash", str(repo / ".ci" / "run")], capture_output=True, text=True,
                          env=env)
    assert done.returncode == expected, done.stderr
    if exit_code == 5:
        assert "collected no tests" in done.stderr


def test_ci_refuses_a_readme_without_the_marker(tmp_path: Path) -> None:
    repo = _fake_repo(tmp_path, "true")
    (repo / "README.md").write_text("# nothing to run\n", encoding="utf-8")
    done = subprocess.run(["bash", str(repo / ".ci" / "run")], capture_output=True, text=True,
                          env={**os.environ, "CI_NO_VENV": "1"})
    assert done.returncode != 0 and "ci: test command" in done.stderr
