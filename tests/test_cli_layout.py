"""Every command's output at 80x24 and at 120 columns: nothing wider than the terminal, table
rows that stay lined up, and text snapshots of the tables (no model needed, so they are exact).

Update the snapshots after an intended change with ``TAGSMITH_UPDATE_SNAPSHOTS=1``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from rich.cells import cell_len

from tagsmith.cli import EXIT_OK, run

SNAPSHOTS = Path(__file__).parent / "cli_snapshots"  # not __snapshots__: the SVG plugin prunes that
WIDTHS = (80, 120)


def _dataset(root: Path) -> Path:
    folder = root / "mayo_lora" / "4_mayo"
    folder.mkdir(parents=True)
    for i in range(8):
        (folder / f"{i}.png").write_bytes(b"")
        extra = ", kitchen" if i % 2 else ", smile"
        (folder / f"{i}.txt").write_text(f"1girl, maid, mayonnaise_bottle{extra}",
                                         encoding="utf-8")
    return root / "mayo_lora"


def _vocab(root: Path) -> Path:
    p = root / "tags.csv"
    p.write_text("bottle,0,71684,\nwine_bottle,0,6727,\nmayonnaise_bottle,0,144,\n"
                 "holding_bottle,0,20214,\nmayonnaise,0,526,\ncross,0,9000,\n",
                 encoding="utf-8")
    return p


COMMANDS = {
    "tokenize": ["tokenize", "mayonnaise bottle", "mayonnaise-container", "cross-arm",
                 "crossarm", "1girl"],
    "tokenize_prompt": ["tokenize", "--prompt", "masterpiece, (red hair:1.2), smile BREAK "
                        "outdoors"],
    "suggest": ["suggest", "mayonnaise bottle", "--vocab", "{vocab}", "-c", "mayo jar"],
    "trigger": ["trigger", "cross tattoo", "--part", "arm", "--part", "chest", "--part", "legs",
                "--top", "3"],
    "score": ["score", "{vocab}", "-o", "{tmp}/s.csv"],
    "dataset": ["dataset", "{dataset}", "--no-model", "--top", "6"],
    "retag": ["retag", "{dataset}", "--map", "mayonnaise bottle=mayonnaise-container",
              "--dry-run"],
}


def _render(name: str, width: int, tmp_path: Path, monkeypatch, capsys) -> str:  # noqa: ANN001
    # The CLI's consoles are created once per process (with the COLUMNS of that moment), so
    # a terminal size is given to fresh ones here rather than through the environment.
    from rich.console import Console

    from tagsmith.cli import _console

    monkeypatch.setattr(_console, "console", Console(width=width, height=24))
    monkeypatch.setattr(_console, "err_console", Console(width=width, height=24, stderr=True))
    monkeypatch.chdir(tmp_path)
    subs = {"{vocab}": "tags.csv", "{tmp}": ".", "{dataset}": "mayo_lora"}
    _vocab(tmp_path)
    _dataset(tmp_path)
    args = []
    for a in COMMANDS[name]:
        for k, v in subs.items():
            a = a.replace(k, v)
        args.append(a)
    code = run(args)
    cap = capsys.readouterr()
    assert code == EXIT_OK, cap.err
    # timings differ from run to run; everything else is exact
    return re.sub(r"(?<=[a-z] )\d+\.\ds\b", "0.0s", cap.out) if name == "score" else cap.out


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_output_fits_and_matches_its_snapshot(name: str, width: int, tmp_path: Path,
                                              monkeypatch, capsys) -> None:  # noqa: ANN001
    out = _render(name, width, tmp_path, monkeypatch, capsys)
    too_wide = [line for line in out.splitlines() if cell_len(line) > width]
    assert not too_wide, f"{len(too_wide)} lines wider than {width}: {too_wide[0]!r}"
    snap = SNAPSHOTS / f"{name}_{width}.txt"
    if os.environ.get("TAGSMITH_UPDATE_SNAPSHOTS") == "1" or not snap.exists():
        snap.parent.mkdir(parents=True, exist_ok=True)
        snap.write_text(out, encoding="utf-8")
        if os.environ.get("TAGSMITH_UPDATE_SNAPSHOTS") != "1":
            pytest.fail(f"wrote a new snapshot {snap.name}; check it and commit it")
    assert out == snap.read_text(encoding="utf-8")


@pytest.mark.parametrize("width", WIDTHS)
def test_trigger_members_stay_beside_their_tokens(width: int, tmp_path: Path, monkeypatch,
                                                  capsys) -> None:  # noqa: ANN001
    out = _render("trigger", width, tmp_path, monkeypatch, capsys)
    lines = out.splitlines()
    for member in ("cross-arm", "cross-chest", "cross-legs"):
        line = next(row for row in lines if f" {member} " in row)
        # the member's first token is on the member's own line, not a line above or below
        assert line.split(member, 1)[1].split()[0].startswith("cross")


@pytest.mark.parametrize("width", [30, 44, 80])
def test_explore_detail_header_never_splits_a_fact(width: int) -> None:
    from rich.console import Console

    from tagsmith.tui.table import RowDetail
    from tagsmith.tui.widgets import render_detail

    detail = RowDetail(title="mayonnaise bottle", tokens=("may", "onnaise</w>", "bottle</w>"),
                       words=(), facts=(("posts", "144"), ("", "general"), ("", "3 tokens"),
                                        ("risk", "0.39")),
                       neighbors=(), reason="")
    console = Console(width=width, record=True, force_terminal=False)
    console.print(render_detail(detail))
    text = console.export_text()
    assert "3 tokens" in text  # never "3" at a line's end and "tokens" on the next
    for line in text.splitlines():
        assert line.strip() not in ("tokens", "3")


@pytest.mark.parametrize("width", WIDTHS)
def test_embed_output_fits(width: int, tiny_model: Path, monkeypatch, capsys) -> None:  # noqa: ANN001
    from rich.console import Console

    from tagsmith.cli import _console

    monkeypatch.setattr(_console, "console", Console(width=width, height=24))
    assert run(["embed", "mayonnaise_bottle", "mayonnaise container", "--model",
                str(tiny_model)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "2 x " in out
    assert all(cell_len(line) <= width for line in out.splitlines())


@pytest.mark.parametrize("width", WIDTHS)
def test_suggest_with_a_model_fits_and_keeps_every_number(
    width: int, tiny_model: Path, tmp_path: Path, monkeypatch, capsys  # noqa: ANN001
) -> None:
    """The similarity matrix gives way in the neighbour's name, never in a number or a post
    count ("-0.…" and "71,…" at 80 columns before)."""
    from rich.console import Console

    from tagsmith.cli import _console

    monkeypatch.setattr(_console, "console", Console(width=width, height=24))
    rows = [("mayonnaise_bottle", 144), ("mayonnaise", 526), ("bottle", 71_684),
            ("holding_bottle", 20_214), ("water_bottle", 11_505), ("wine_bottle", 6_727),
            ("bottle_cap_on_a_very_long_tag_name_(series_name)", 1_219),
            ("mayonnaise_on_a_very_long_tag_name_(another_series)", 964),
            ("perfume_bottle", 1_219), ("in_bottle", 438)]
    vocab = tmp_path / "big.csv"
    vocab.write_text("".join(f'{t},0,{c},""\n' for t, c in rows), encoding="utf-8")
    assert run(["suggest", "mayonnaise bottle", "--vocab", str(vocab),
                "--model", str(tiny_model)]) == EXIT_OK
    out = capsys.readouterr().out
    assert all(cell_len(line) <= width for line in out.splitlines())
    matrix = out.split("similarity (centred cosine", 1)[1].split("Recommended:", 1)[0]
    rows = [line for line in matrix.splitlines() if line.startswith("│")]
    assert rows
    for line in rows:
        cells = [c.strip() for c in line.strip("│").split("│")]
        numbers = cells[3:]
        assert numbers and all(re.fullmatch(r"-?\d\.\d\d|", c) for c in numbers), line
        assert re.fullmatch(r"[\d,]*", cells[1]), line
