"""Snapshots of the explore app's main screens (pytest-textual-snapshot).

Every screen is taken after its data is on screen (the screen says so: ``shown``, not a
pause of some length), from data fixed here (a vocabulary scored with a seeded bag-of-tokens
encoder), so the pictures change only when the UI does. Review a change with
``pytest tests/test_tui_snapshots.py --snapshot-report``; accept it with ``--snapshot-update``.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from fake_embedder import BagOfTokensEmbedder, random_table  # noqa: E402
from test_tui import VOCAB  # noqa: E402

SCORE_NAME = "danbooru-scores.csv"


@pytest.fixture(scope="module")
def score_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tagsmith.analysis.score import score_vocabulary
    from tagsmith.analysis.score_io import write_scores
    from tagsmith.text.vocab import read_vocabulary

    folder = tmp_path_factory.mktemp("snap")
    vocab = folder / "tags.csv"
    vocab.write_text(VOCAB, encoding="utf-8")
    rows = score_vocabulary(read_vocabulary(vocab), BagOfTokensEmbedder(random_table(32, 3)),
                            k=3).rows
    return write_scores(rows, folder / SCORE_NAME)


def score_app(path: Path):  # noqa: ANN201
    from tagsmith.tui.app import ExploreApp, ScoreSource

    return ExploreApp(ScoreSource(path))


def suggest_app(model: bool):  # noqa: ANN201
    from tagsmith.analysis.suggest import SuggestOptions
    from tagsmith.tui.app import ExploreApp, SuggestSource

    emb = BagOfTokensEmbedder(random_table(32, 7))
    notice = ("Similarity columns need the SD1.5 text encoder, and none was found; give one "
              "with --model PATH_OR_HUB_ID or the TAGSMITH_MODEL environment variable.")
    return ExploreApp(
        SuggestSource("mayonnaise bottle", SuggestOptions(neighbors=["wine bottle"])),
        model_loader=(lambda: (emb, None)) if model else (lambda: (None, notice)),
    )


async def loaded(pilot) -> None:  # noqa: ANN001
    """Wait until the top table's rows, or the reason there are none, are on screen."""
    from tagsmith.tui.app import RankingScreen

    screen = pilot.app.screen
    assert isinstance(screen, RankingScreen)
    await asyncio.wait_for(screen.shown.wait(), timeout=60)
    await pilot.pause()


async def press(pilot, *keys: str) -> None:  # noqa: ANN001
    """One key at a time, each handled in full (focus moves included) before the next:
    several keys in one ``pilot.press`` are only spaced by a guess at CPU idleness."""
    for key in keys:
        await pilot.press(key)


def test_score_file_80x24(snap_compare, score_file: Path) -> None:  # noqa: ANN001
    assert snap_compare(score_app(score_file), terminal_size=(80, 24), run_before=loaded)


def test_filtered_sorted_marked_100x30(snap_compare, score_file: Path) -> None:  # noqa: ANN001
    async def run_before(pilot) -> None:  # noqa: ANN001
        from tagsmith.tui.widgets import FilterBar

        await loaded(pilot)
        await press(pilot, "slash")
        assert isinstance(pilot.app.focused, FilterBar)
        pilot.app.focused.insert_text_at_cursor("bottle")
        await press(pilot, "enter", "2", "space", "down", "space")

    assert snap_compare(score_app(score_file), terminal_size=(100, 30), run_before=run_before)


def test_suggest_with_a_model_100x30(snap_compare) -> None:  # noqa: ANN001
    assert snap_compare(suggest_app(model=True), terminal_size=(100, 30), run_before=loaded)


def test_suggest_without_a_model_80x24(snap_compare) -> None:  # noqa: ANN001
    assert snap_compare(suggest_app(model=False), terminal_size=(80, 24), run_before=loaded)


def test_help_80x24(snap_compare, score_file: Path) -> None:  # noqa: ANN001
    async def run_before(pilot) -> None:  # noqa: ANN001
        from tagsmith.tui.widgets import HelpScreen

        await loaded(pilot)
        await press(pilot, "question_mark")
        assert isinstance(pilot.app.screen, HelpScreen)

    assert snap_compare(score_app(score_file), terminal_size=(80, 24), run_before=run_before)


def test_export_dialog_80x24(snap_compare, score_file: Path) -> None:  # noqa: ANN001
    async def run_before(pilot) -> None:  # noqa: ANN001
        from textual.widgets import Input

        from tagsmith.tui.widgets import ExportScreen

        await loaded(pilot)
        await press(pilot, "space", "space", "e")
        await pilot.pause()
        assert isinstance(pilot.app.screen, ExportScreen)
        # A blinking cursor is drawn or not depending on when the picture is taken.
        pilot.app.screen.query_one("#export-path", Input).cursor_blink = False

    assert snap_compare(score_app(score_file), terminal_size=(80, 24), run_before=run_before)


def test_bad_file_80x24(snap_compare, tmp_path: Path,  # noqa: ANN001
                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the message names the file as given: keep it the same
    Path("broken.csv").write_text("name,posts\nbottle,71684\n", encoding="utf-8")
    assert snap_compare(score_app(Path("broken.csv")), terminal_size=(80, 24),
                        run_before=loaded)


def test_wide_layout_160x40(snap_compare, score_file: Path) -> None:  # noqa: ANN001
    async def run_before(pilot) -> None:  # noqa: ANN001
        await loaded(pilot)
        await press(pilot, "down", "down")

    assert snap_compare(score_app(score_file), terminal_size=(160, 40), run_before=run_before)
