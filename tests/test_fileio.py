"""The one atomic writer: whole files only, and the permission bits any program would give."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tagsmith.cli import EXIT_OK, run
from tagsmith.fileio import atomic_write_text, atomic_writer


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():  # noqa: ANN201 - sets the process umask for one test, then restores it
    old = os.umask(0o022)
    os.umask(old)

    def set_(value: int) -> None:
        os.umask(value)

    yield set_
    os.umask(old)


@pytest.mark.parametrize(("mask", "expected"), [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_new_files_get_the_umask_mode(tmp_path: Path, umask, mask: int, expected: int) -> None:  # noqa: ANN001
    umask(mask)
    target = tmp_path / "new.txt"
    atomic_write_text(target, "x\n")
    assert _mode(target) == expected  # mkstemp's 0600 must not survive the rename


def test_replaced_files_keep_their_mode(tmp_path: Path, umask) -> None:  # noqa: ANN001
    umask(0o022)
    target = tmp_path / "old.csv"
    target.write_text("old\n")
    target.chmod(0o640)
    with atomic_writer(target, "w", encoding="utf-8") as fh:
        fh.write("new\n")
    assert target.read_text() == "new\n" and _mode(target) == 0o640


def test_files_the_cli_writes_are_readable_by_the_group(tmp_path: Path, umask, capsys) -> None:  # noqa: ANN001
    umask(0o022)
    out = tmp_path / "forms.csv"
    assert run(["suggest", "mayonnaise bottle", "--csv", str(out)]) == EXIT_OK, \
        capsys.readouterr().err
    assert _mode(out) == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
