"""`tagsmith explore`: the table model, the score-file reader, and the app driven by Pilot.

The app is checked on what it shows: rows are read back from the rendered table lines and
compared with orders, filters and rankings computed here from the library's own results.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tagsmith.errors import FileFormatError, InputError
from tagsmith.tui.loaders import (
    check_score_path,
    load_score_table,
    looks_like_score_file,
    split_text,
    words_from_pieces,
)
from tagsmith.tui.scorefile import read_score_columns
from tagsmith.tui.table import BOOL, FLOAT, INT, TEXT, Column, Table, TableView, parse_filter

sys.path.insert(0, str(Path(__file__).parent))
from fake_embedder import BagOfTokensEmbedder, random_table  # noqa: E402

# A tagcomplete-format vocabulary: tag,category,count,aliases.
VOCAB = """\
1girl,0,6008644,"1girls,sole_female"
solo,0,5000954,
long_hair,0,4350743,longhair
short_hair,0,2261608,
highres,5,5256195,hires
bottle,0,71684,
holding_bottle,0,20214,
water_bottle,0,11505,
wine_bottle,0,6727,
mayonnaise,0,526,
mayonnaise_bottle,0,144,
cross_tattoo,0,396,
tattoo,0,250000,
arm_tattoo,0,30000,
hijikata_toushirou,4,571,
gintama,3,20000,
holding,0,900000,
open_mouth,0,2365905,
closed_mouth,0,1167561,
smile,0,2873890,
light_smile,0,73800,
:d,0,500000,
^_^,0,40000,
"""

SIZE = (100, 30)


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """ScoreRows of VOCAB from the score library with a fixed bag-of-tokens encoder."""
    from tagsmith.analysis.score import score_vocabulary
    from tagsmith.text.vocab import read_vocabulary

    folder = tmp_path_factory.mktemp("vocab")
    path = folder / "tags.csv"
    path.write_text(VOCAB, encoding="utf-8")
    result = score_vocabulary(read_vocabulary(path), BagOfTokensEmbedder(random_table(32, 3)),
                              k=3)
    return result.rows


@pytest.fixture
def score_csv(scored, tmp_path: Path) -> Path:  # noqa: ANN001
    from tagsmith.analysis.score_io import write_scores

    return write_scores(scored, tmp_path / "scores.csv")


def shown(app) -> list[str]:  # noqa: ANN001
    """Tags on screen, top to bottom, read from the table's rendered lines."""
    from tagsmith.tui.widgets import RankingView

    view = app.screen.query_one(RankingView)
    key_col = view.view.table.column(view.view.table.key_column)
    out = []
    for y in range(1, view.scrollable_content_region.height):
        line = view.render_line(y).text
        if not line.strip() or "no rows match" in line:
            break
        start = 2 + sum(view._widths[c.key] + 1 for c in view._fixed[:-1])
        out.append(line[start : start + view._widths[key_col.key]].rstrip().rstrip("\u2026"))
    return out


def text_of(widget) -> str:  # noqa: ANN001
    """What a widget shows, as plain text lines."""
    from textual.geometry import Region

    w, h = widget.size
    return "\n".join(strip.text for strip in widget.render_lines(Region(0, 0, w, h)))


def flat(text: str) -> str:
    return " ".join(text.split())


async def type_into(pilot, text: str) -> None:  # noqa: ANN001
    """Type into the focused input: the first letters as keys, the rest as one edit (Pilot
    takes a tenth of a second per key on a busy machine)."""
    await pilot.press(*text[:2])
    pilot.app.focused.insert_text_at_cursor(text[2:])
    await pilot.pause()


async def loaded(pilot) -> None:  # noqa: ANN001
    """Wait until the top table's rows, or the reason there are none, are on screen."""
    from tagsmith.tui.app import RankingScreen

    screen = pilot.app.screen
    assert isinstance(screen, RankingScreen)
    await asyncio.wait_for(screen.shown.wait(), timeout=60)
    await pilot.pause()


# -- filter language and the table model -------------------------------------------------------


def small_table() -> Table:
    tags = ["wine bottle", "bottle", "water bottle", "long hair", "mayonnaise bottle", "solo"]
    values = {
        "tag": tags,
        "count": np.array([6727, 71684, 11505, 4350743, 144, np.nan]),
        "n_tokens": np.array([2, 1, 2, 2, 3, 1], dtype=np.float64),
        "known": np.array([1, 1, 1, 1, 0, 1], dtype=np.float64),
        "leak": np.array([0.8, np.nan, 0.7, 0.1, 0.9, 0.2]),
        "kind": ["a", "b", "a", "c", "b", "a"],
    }
    columns = [
        Column("tag", "tag", TEXT, 20),
        Column("count", "count", INT, 9, aliases=("posts",)),
        Column("n_tokens", "n_tok", INT, 5, aliases=("tok",)),
        Column("known", "known", BOOL, 5),
        Column("leak", "leak", FLOAT, 5),
        Column("kind", "kind", TEXT, 6),
    ]
    return Table("t", columns, values, "tag", detail=lambda i: None)  # type: ignore[arg-type]


def test_filter_terms_are_words_and_column_conditions() -> None:
    t = small_table()
    f = parse_filter('bottle n_tokens>1 count>=1k known=false "wine bottle" nyoro~n', t)
    assert f.words == ("bottle", "wine bottle", "nyoro~n")
    assert [(c.column.key, c.op, c.value) for c in f.conditions] == [
        ("n_tokens", ">", 1.0), ("count", ">=", 1000.0), ("known", "=", False)]
    assert f.lookalikes == ("nyoro",)
    assert parse_filter("posts>2.5m tok<=2", t).conditions[0].value == 2_500_000
    assert parse_filter("tok<=2", t).conditions[0].column.key == "n_tokens"
    errors = parse_filter("known=maybe count>lots kind>a", t).errors
    assert len(errors) == 3 and "true or false" in errors[0] and "number" in errors[1]
    assert "text" in errors[2]
    # An unbalanced quote while typing is not an error.
    assert parse_filter('"wine bot', t).words == ("wine", "bot")


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("bottle", ["wine bottle", "bottle", "water bottle", "mayonnaise bottle"]),
        ("BOTTLE n_tokens>1", ["wine bottle", "water bottle", "mayonnaise bottle"]),
        ("wine_bottle", ["wine bottle"]),  # Danbooru's underscores find spaced tags
        ("count>=10000", ["bottle", "water bottle", "long hair"]),  # NaN never passes
        ("count!=144", ["wine bottle", "bottle", "water bottle", "long hair"]),
        ("known=false", ["mayonnaise bottle"]),
        ("kind=a leak>0.5", ["wine bottle", "water bottle"]),
        ("tag~ott kind!=a", ["bottle", "mayonnaise bottle"]),
        ("", ["wine bottle", "bottle", "water bottle", "long hair", "mayonnaise bottle", "solo"]),
    ],
)
def test_filter_selects_rows(query: str, expected: list[str]) -> None:
    view = TableView(small_table())
    view.set_query(query)
    assert [view.table.key(int(r)) for r in view.rows] == expected


def test_sort_orders_missing_values_last_and_flips() -> None:
    t = small_table()
    view = TableView(t)
    view.sort_by("leak")  # numbers start high first
    assert [t.key(int(r)) for r in view.rows] == [
        "mayonnaise bottle", "wine bottle", "water bottle", "solo", "long hair", "bottle"]
    view.sort_by("leak")  # again: ascending, NaN still last
    assert [t.key(int(r)) for r in view.rows][-1] == "bottle"
    assert [t.key(int(r)) for r in view.rows][0] == "long hair"
    view.sort_by("tag")  # text starts A-Z
    assert [t.key(int(r)) for r in view.rows] == sorted(t.keys())
    view.sort_by("n_tokens", descending=False)  # ties keep file order
    assert [t.key(int(r)) for r in view.rows] == [
        "bottle", "solo", "wine bottle", "water bottle", "long hair", "mayonnaise bottle"]
    view.set_query("bottle")
    view.reverse()
    assert [t.key(int(r)) for r in view.rows] == [
        "mayonnaise bottle", "wine bottle", "water bottle", "bottle"]
    view.original_order()
    assert [t.key(int(r)) for r in view.rows] == [
        "wine bottle", "bottle", "water bottle", "mayonnaise bottle"]
    assert view.status() == "4 of 6"


def test_incremental_word_search_matches_a_full_scan() -> None:
    rng = np.random.default_rng(0)
    letters = list("abot ")
    tags = ["".join(rng.choice(letters, size=int(rng.integers(1, 9)))) for _ in range(500)]
    t = Table("t", [Column("tag", "tag", TEXT, 10)], {"tag": tags}, "tag",
              detail=lambda i: None)  # type: ignore[arg-type]
    for word in ["b", "bo", "bot", "bott", "ot", "o", "a", "ab", "t_", "ta"]:
        expected = [(word in s) or (word.replace("_", " ") in s) for s in tags]
        assert t.word_mask(word).tolist() == expected, word


def test_marked_pseudo_column() -> None:
    t = small_table()
    marks = {"bottle", "solo"}
    view = TableView(t, marked=lambda: np.array([k in marks for k in t.keys()]))
    view.set_query("marked=true")
    assert [t.key(int(r)) for r in view.rows] == ["bottle", "solo"]
    view.set_query("marked=false bottle")
    assert len(view) == 3


def test_status_explains_a_lookalike_that_matches_nothing() -> None:
    view = TableView(small_table())
    view.set_query("n_tokns>3")
    assert len(view) == 0
    assert "'n_tokns' is no column" in view.status()


# -- token splits -----------------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["mayonnaise bottle", "cross-arm", "crossarm", "1girl", "^_^",
                                 "hijikata toushirou (gintama)", "caf\u00e9 au lait"])
def test_words_from_pieces_agree_with_the_tokenizer(tag: str) -> None:
    from tagsmith.text.tokenizer import load_tokenizer

    a = load_tokenizer().analyze(tag)
    words = words_from_pieces(a.tokens)
    assert [(w.text, w.pieces, w.known) for w in words] == [
        (w.text, w.pieces, w.known) for w in a.words]
    expected = " ".join(w.text if w.known else "+".join(
        p.removesuffix("</w>") for p in w.pieces) for w in a.words)
    if tag.isascii():
        assert split_text(a.tokens) == expected


def test_split_text_by_hand() -> None:
    assert split_text(("may", "onnaise</w>", "bottle</w>")) == "may+onnaise bottle"
    assert split_text(("cross</w>", "-</w>", "arm</w>")) == "cross - arm"
    assert split_text(()) == ""


# -- score files --------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_column_reader_agrees_with_read_score_file(scored, tmp_path: Path, fmt: str) -> None:  # noqa: ANN001
    from tagsmith.analysis.score_io import read_score_file, write_scores

    path = write_scores(scored, tmp_path / f"scores.{fmt}")
    reference = read_score_file(path)
    cols = read_score_columns(path)
    assert cols._rows is None  # the fast path, not the fallback
    assert len(cols) == len(reference) == len(scored)
    for i, row in enumerate(reference):
        assert cols.row(i) == row
    assert any(r.neighbors for r in reference) and any(r.leak_similarity is None
                                                       for r in reference)


def test_table_over_a_score_file(score_csv: Path, scored) -> None:  # noqa: ANN001
    table = load_score_table(score_csv)
    assert len(table) == len(scored)
    by_text = {r.text: r for r in scored}
    keys = {c.key for c in table.columns}
    assert {"tag", "count", "n_tokens", "known", "leak_risk", "leak_similarity",
            "shares_token_with", "split"} <= keys
    assert table.default_sort == ("leak_risk", True)
    for i in range(len(table)):
        r = by_text[table.key(i)]
        assert table.values["count"][i] == (r.count if r.count is not None else math.nan) or \
            r.count is None
        assert table.values["known"][i] == (0.0 if r.unknown_words else 1.0)
    i = table.keys().index("mayonnaise bottle")
    d = table.detail(i)
    assert d.tokens == ("may", "onnaise</w>", "bottle</w>")
    assert [w.text for w in d.words if not w.known] == ["mayonnaise"]
    r = by_text["mayonnaise bottle"]
    assert d.neighbors[0].role == "shares"
    assert d.neighbors[0].tag == r.shares_token_with.replace("_", " ")
    assert d.neighbors[0].similarity == r.leak_similarity
    assert [n.similarity for n in d.neighbors[1:]] == [
        n.similarity for n in r.neighbors if n.tag != r.shares_token_with]
    assert "splits 'mayonnaise' into may+onnaise" in d.reason
    assert f"{r.shares_token_count / r.count:,.0f}x as many" in d.reason


def test_big_file_sends_its_first_rows_early(scored, tmp_path: Path,  # noqa: ANN001
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from tagsmith.analysis.score_io import write_scores
    from tagsmith.tui import scorefile

    monkeypatch.setattr(scorefile, "FIRST_CHUNK_ROWS", 5)
    for fmt in ("csv", "jsonl", "parquet"):
        path = write_scores(scored, tmp_path / f"s.{fmt}")
        early: list[Table] = []
        table = load_score_table(path, first_rows=early.append)
        assert len(early) == 1 and len(early[0]) == 5
        assert early[0].keys() == table.keys()[:5]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"just,some,columns\n1,2,3\n", "not a tagsmith score file"),
        (b"\xff\xfe\x00garbage", "not a tagsmith score file"),
        (b'{"tag": "a", "n_tokens": 1}\n{"tag": \n', "line 2"),
        (b"PAR1 this is not parquet", "parquet"),
    ],
)
def test_bad_score_files_raise_one_sentence(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(FileFormatError) as err:
        load_score_table(path)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_header_only_file_is_an_empty_table(tmp_path: Path) -> None:
    from tagsmith.analysis.score import COLUMNS

    path = tmp_path / "empty.csv"
    path.write_text(",".join(COLUMNS) + "\n", encoding="utf-8")
    table = load_score_table(path)
    assert len(table) == 0
    assert "holds no rows" in table.notices[0]


def test_score_path_checks(tmp_path: Path) -> None:
    assert looks_like_score_file("out.csv") and looks_like_score_file("OUT.JSONL")
    assert looks_like_score_file("x.parquet") and not looks_like_score_file("mayonnaise bottle")
    with pytest.raises(InputError, match="does not exist"):
        check_score_path(tmp_path / "missing.csv")
    (tmp_path / "dir.csv").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        check_score_path(tmp_path / "dir.csv")


# -- the app --------------------------------------------------------------------------------------


def score_app(path: Path, **kw):  # noqa: ANN003, ANN201
    from tagsmith.tui.app import ExploreApp, ScoreSource

    return ExploreApp(ScoreSource(path), **kw)


def test_app_sorts_by_key_and_by_header_click(score_csv: Path, scored) -> None:  # noqa: ANN001
    from tagsmith.tui.widgets import RankingView

    by_risk = [r.text for r in sorted(scored, key=lambda r: -(r.leak_risk if r.leak_risk
                                                              is not None else -1))]
    by_count = [r.text for r in sorted(scored, key=lambda r: -(r.count or 0))]

    async def go() -> None:
        app = score_app(score_csv)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            rows = shown(app)
            assert rows == by_risk[: len(rows)] and len(rows) >= 10
            await pilot.press("2")  # second column: count, high first
            assert shown(app) == by_count[: len(shown(app))]
            await pilot.press("2")  # again: low first
            assert shown(app)[0] == "mayonnaise bottle"
            view = app.screen.query_one(RankingView)
            # Click the header of the tag column: A-Z.
            x = 2 + 1
            await pilot.click(RankingView, offset=(x, 0))
            assert shown(app)[:3] == sorted(r.text for r in scored)[:3]
            await pilot.click(RankingView, offset=(x, 0))
            assert shown(app)[0] == sorted(r.text for r in scored)[-1]
            await pilot.press("o")
            assert shown(app)[:3] == [r.text for r in scored][:3]
            assert view.view.sort_key is None

    run(go())


def test_app_filter_box(score_csv: Path, scored) -> None:  # noqa: ANN001
    from tagsmith.tui.widgets import FilterBar, RankingView

    async def go() -> None:
        app = score_app(score_csv)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("slash")
            assert isinstance(app.focused, FilterBar)
            await type_into(pilot, "bottle n_tokens>1")
            rows = shown(app)
            assert sorted(rows) == ["holding bottle", "mayonnaise bottle", "water bottle",
                                    "wine bottle"]
            await pilot.press("escape")
            assert isinstance(app.focused, RankingView)
            assert "4 of 23" in text_of(app.screen.query_one("#titlebar"))
            # Keys act on the table again, and the filter is kept.
            await pilot.press("2")
            assert shown(app)[0] == "holding bottle"
            await pilot.press("slash", "ctrl+u")
            await type_into(pilot, "known=false")
            await pilot.press("enter")
            assert isinstance(app.focused, RankingView)
            assert sorted(shown(app)) == sorted(r.text for r in scored if r.unknown_words)

    run(go())


def test_app_marks_exports_and_returns_marks(score_csv: Path, tmp_path: Path) -> None:
    async def go() -> list[str] | None:
        app = score_app(score_csv, export_default=str(tmp_path / "picked.txt"))
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("2")  # by count: 1girl, solo, highres, ...
            first = shown(app)[:3]
            await pilot.press("space", "space", "space", "up", "space")  # unmark the third
            assert list(app.marked) == first[:2]
            await pilot.press("e")
            await pilot.press("enter")
            await pilot.pause()
            assert (tmp_path / "picked.txt").read_text(encoding="utf-8") == \
                "".join(t + "\n" for t in first[:2])
            # An existing file is replaced only after a second Enter.
            await pilot.press("space", "e", "enter")
            await pilot.pause()
            assert "Enter again" in text_of(app.screen.query_one("#export-msg"))
            assert (tmp_path / "picked.txt").read_text(encoding="utf-8").count("\n") == 2
            await pilot.press("enter")
            await pilot.pause()
            assert (tmp_path / "picked.txt").read_text(encoding="utf-8").count("\n") == 3
            # Escape cancels; a folder that does not exist gets a sentence, not a crash.
            await pilot.press("e", "ctrl+u")
            await type_into(pilot, str(tmp_path / "nope" / "x.txt"))
            await pilot.press("enter")
            await pilot.pause()
            assert "does not exist" in text_of(app.screen.query_one("#export-msg"))
            await pilot.press("escape", "q")
        return app.return_value

    marks = run(go())
    assert marks is not None and len(marks) == 3


def test_app_drills_into_suggest_and_back(score_csv: Path) -> None:
    from tagsmith.analysis.suggest import suggest
    from tagsmith.tui.app import RankingScreen, SuggestSource

    expected = [rc.form for rc in suggest("mayonnaise bottle").candidates]

    async def go() -> None:
        app = score_app(score_csv)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            await pilot.press("slash")
            await type_into(pilot, "mayonnaise bottle")
            await pilot.press("enter")
            await pilot.press("space", "up")  # mark it, then back onto it
            first = app.screen
            await pilot.press("enter")
            await loaded(pilot)
            screen = app.screen
            assert isinstance(screen, RankingScreen) and screen is not first
            assert screen.source == SuggestSource("mayonnaise bottle")
            assert shown(app) == expected
            # Marks are shared across tables.
            assert screen.query_one("RankingView").is_marked("mayonnaise bottle")
            title = text_of(screen.query_one("#titlebar"))
            assert "scores.csv \u203a suggest \u201cmayonnaise bottle\u201d" in title
            await pilot.press("down", "enter")  # drill again, into the hyphenated form
            await loaded(pilot)
            assert app.screen.source == SuggestSource(expected[1])
            await pilot.press("b", "backspace")
            assert app.screen is first
            assert first.view.query == "mayonnaise bottle"
            assert shown(app) == ["mayonnaise bottle"]
            await pilot.press("b")  # nothing to go back to: stays
            assert app.screen is first

    run(go())


def test_app_suggest_with_a_model(tmp_path: Path) -> None:
    """A suggest ranking with an encoder: score columns, rank order and similarity bars."""
    from tagsmith.analysis.suggest import SuggestOptions, suggest
    from tagsmith.tui.app import ExploreApp, SuggestSource
    from tagsmith.tui.widgets import DetailPane

    emb = BagOfTokensEmbedder(random_table(32, 7))
    options = SuggestOptions(neighbors=["wine bottle"])
    result = suggest("mayonnaise bottle", options, embedder=emb)
    loads: list[int] = []

    def loader():  # noqa: ANN202
        loads.append(1)
        return emb, None

    async def go() -> None:
        app = ExploreApp(SuggestSource("mayonnaise bottle", options), model_loader=loader)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            table = app.screen.table
            # No --avoid: no avoid column rather than an empty one.
            assert [c.key for c in table.columns][:6] == [
                "rank", "form", "score", "fidelity", "leakage", "n_tokens"]
            forms = [rc.form for rc in result.candidates]
            assert shown(app) == forms[: len(shown(app))] and len(shown(app)) >= 8
            scores = [table.cell(table.column("score"), i) for i in range(len(table))]
            assert scores == [f"{rc.score:.3f}" for rc in result.candidates]
            detail = table.detail(0)
            best = result.candidates[0]
            assert detail.reason == best.reason
            assert {n.tag: n.similarity for n in detail.neighbors} == best.similarity
            pane = app.screen.query_one(DetailPane)
            text = pane.text()
            assert "wine bottle" in text and best.reason[:20] in text
            await pilot.press("3")  # by score, high first: suggest's own order
            assert shown(app) == forms[: len(shown(app))]
            await pilot.press("3")  # low first
            assert shown(app)[0] == forms[-1]
            await pilot.press("enter")  # drill down reuses the loaded model
            await loaded(pilot)
            assert app.screen.table.columns[2].key == "score"
            assert loads == [1]

    run(go())


def test_app_detail_pane_scrolls_with_shift_j_k() -> None:
    from tagsmith.analysis.suggest import SuggestOptions
    from tagsmith.tui.app import ExploreApp, SuggestSource
    from tagsmith.tui.widgets import DetailPane

    emb = BagOfTokensEmbedder(random_table(32, 7))
    options = SuggestOptions(neighbors=["wine bottle", "water bottle", "jar", "ketchup", "can"])

    async def go() -> None:
        app = ExploreApp(SuggestSource("mayonnaise bottle", options),
                         model_loader=lambda: (emb, None))
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            pane = app.screen.query_one(DetailPane)
            assert pane.max_scroll_y > 0  # more neighbours than lines at 80x24
            await pilot.press("J")
            assert pane.scroll_y > 0
            await pilot.press("K")
            assert pane.scroll_y == 0

    run(go())


@pytest.mark.slow
def test_app_suggest_with_a_tiny_text_encoder(tiny_model: Path) -> None:
    """The real encoder path: open_model on a tiny random SD1.5-style checkpoint."""
    from tagsmith.analysis.suggest import suggest
    from tagsmith.model.embedding import EncoderSettings, open_model
    from tagsmith.tui.app import ExploreApp, SuggestSource

    settings = EncoderSettings(model=str(tiny_model))
    emb, _ = open_model(settings, explicit=True)
    expected = suggest("cross tattoo", embedder=emb)

    async def go() -> None:
        # The loader hands over the embedder open_model gave (as the CLI's loader does).
        app = ExploreApp(SuggestSource("cross tattoo"), model_loader=lambda: (emb, None))
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            assert app.screen.error is None
            forms = [rc.form for rc in expected.candidates]
            assert shown(app) == forms[: len(shown(app))]
            t = app.screen.table
            assert [t.cell(t.column("score"), i) for i in range(len(t))] == [
                f"{rc.score:.3f}" for rc in expected.candidates]

    run(go())


def test_app_without_a_model_shows_tokens_and_the_notice() -> None:
    from tagsmith.tui.app import ExploreApp, SuggestSource

    async def go() -> None:
        app = ExploreApp(SuggestSource("mayonnaise bottle"),
                         model_loader=lambda: (None, "No model here; give one with --model."))
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            keys = [c.key for c in app.screen.table.columns]
            assert "score" not in keys and "split" in keys
            assert "No model here" in text_of(app.screen.query_one("#notices"))
            await pilot.press("question_mark")
            assert type(app.screen).__name__ == "HelpScreen"
            await pilot.press("escape")
            assert type(app.screen).__name__ == "RankingScreen"

    run(go())


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty"), (b"no,score\ncolumns,here\n", "not a tagsmith score file")],
)
def test_app_opens_a_bad_file_with_its_message(tmp_path: Path, content: bytes,
                                               message: str) -> None:
    from tagsmith.tui.widgets import RankingView

    path = tmp_path / "bad.csv"
    path.write_bytes(content)

    async def go() -> None:
        app = score_app(path)
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            assert message in (app.screen.error or "")
            # Compared without spaces: a long path makes the message fold mid-word.
            box = "".join(text_of(app.screen.query_one("#message")).split())
            assert message.replace(" ", "") in box and "qquits" in box
            assert not app.screen.query_one(RankingView).display
            await pilot.press("space", "enter", "e", "slash", "2")  # nothing to act on
            assert app.screen.error is not None
            await pilot.press("q")
        assert app.return_value == []

    run(go())


def test_app_failed_suggest_shows_the_sentence() -> None:
    from tagsmith.tui.app import ExploreApp, SuggestSource

    async def go() -> None:
        app = ExploreApp(SuggestSource("()"))  # nothing left once prompt syntax is removed
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            assert "empty" in (app.screen.error or "")

    run(go())


def test_app_fits_80x24_and_goes_side_by_side_when_wide(score_csv: Path) -> None:
    from tagsmith.tui.widgets import DetailPane, RankingView

    async def go(size: tuple[int, int]) -> tuple[object, object]:
        app = score_app(score_csv)
        async with app.run_test(size=size) as pilot:
            await loaded(pilot)
            table = app.screen.query_one(RankingView).region
            detail = app.screen.query_one(DetailPane).region
            assert table.height >= 8 and detail.height >= 8
            assert len(shown(app)) >= 6
            return table, detail

    table, detail = run(go((80, 24)))
    assert detail.y > table.y and table.width == 80
    table, detail = run(go((160, 40)))
    assert detail.x > table.x and detail.y == table.y


def test_cursor_moves_build_one_detail_and_lay_out_nothing(score_csv: Path,  # noqa: ANN001
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            ) -> None:
    """A cursor move draws the two rows and builds the new row's detail once; the screen is
    laid out again only when the detail pane's scrollbar comes or goes, not whenever the
    detail has another number of lines (that relayout made every key slow on a big file)."""
    from textual.screen import Screen

    from tagsmith.tui.widgets import DetailPane, RankingView

    layouts = []
    original = Screen._refresh_layout

    def counted(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        layouts.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Screen, "_refresh_layout", counted)
    drawn = []
    draw_row = RankingView._row

    def counted_row(self, *args):  # noqa: ANN001, ANN002, ANN202
        drawn.append(args[0])
        return draw_row(self, *args)

    monkeypatch.setattr(RankingView, "_row", counted_row)

    async def go() -> None:
        app = score_app(score_csv)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            ranking = app.screen.query_one(RankingView)
            pane = app.screen.query_one(DetailPane)
            table = app.screen.table
            quiet = set()
            scroll_y = int(ranking.scroll_y)
            for _ in range(len(table) - 1):
                shows, pane_layouts = pane.shows, pane.layouts
                layouts.clear()
                drawn.clear()
                await pilot.press("down")
                assert pane.shows == shows + 1
                if int(ranking.scroll_y) == scroll_y:  # no scroll: only the two rows change
                    assert set(drawn) <= {ranking.cursor - 1, ranking.cursor}, drawn
                scroll_y = int(ranking.scroll_y)
                if pane.layouts == pane_layouts:  # the scrollbar stayed: no layout at all
                    assert not layouts
                    quiet.add(pane.virtual_size.height)
                row = ranking.current_row
                assert pane.text().splitlines()[0].startswith(table.detail(row).title)
            # Rows whose details differ in height were crossed without a layout.
            assert len(quiet) > 1
            # Moves that arrive together build the detail of the last row only.
            shows = pane.shows
            for _ in range(3):
                ranking.action_cursor(-1)
            await pilot.pause()
            assert pane.shows == shows + 1
            assert pane.text().splitlines()[0].startswith(
                table.detail(ranking.current_row).title)

    run(go())


def test_app_scrolls_a_long_table(tmp_path: Path) -> None:
    """3,000 rows: paging to the end draws the last rows; nothing else is drawn."""
    from tagsmith.analysis.score import ScoreRow
    from tagsmith.analysis.score_io import write_scores
    from tagsmith.tui.widgets import RankingView

    rows = [ScoreRow(tag=f"tag_{i:05d}", text=f"tag {i:05d}", count=3_000 - i, category=0,
                     category_name="general", tokens=("tag</w>",), n_tokens=1,
                     known_words=("tag",), unknown_words=())
            for i in range(3_000)]
    path = write_scores(rows, tmp_path / "long.jsonl")

    async def go() -> None:
        app = score_app(path)
        async with app.run_test(size=(80, 24)) as pilot:
            await loaded(pilot)
            await pilot.press("end")
            view = app.screen.query_one(RankingView)
            assert shown(app)[-1] == "tag 02999"
            assert view.current_row == 2999
            await pilot.press("pageup", "home")
            assert shown(app)[0] == "tag 00000"
            await pilot.press("pagedown")
            assert view.cursor == view.scrollable_content_region.height - 1

    run(go())


# -- the command ----------------------------------------------------------------------------------


def test_cli_refuses_a_missing_file_before_starting(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from tagsmith.cli import run as cli

    assert cli(["explore", str(tmp_path / "nothing.csv")]) == 1
    err = capsys.readouterr().err
    assert "does not exist" in err and err.count("\n") == 1


def test_cli_needs_a_terminal(score_csv: Path, capsys) -> None:  # noqa: ANN001
    from tagsmith.cli import run as cli

    assert cli(["explore", str(score_csv)]) == 1  # pytest's stdin is not a terminal
    assert "needs a terminal" in capsys.readouterr().err


def test_cli_bad_weights_is_a_usage_error(capsys) -> None:  # noqa: ANN001
    from tagsmith.cli import run as cli

    assert cli(["explore", "mayonnaise bottle", "--weights", "nonsense=1"]) == 2
    assert "Unknown weight" in capsys.readouterr().err


def test_cli_bad_model_option_is_a_usage_error(capsys) -> None:  # noqa: ANN001
    from tagsmith.cli import run as cli

    assert cli(["explore", "mayonnaise bottle", "--context", "no slot here"]) == 2
    assert "exactly once" in capsys.readouterr().err


def test_cli_help_does_not_import_textual() -> None:
    code = (
        "import sys\n"
        "from tagsmith.cli import run\n"
        "try:\n    run(['explore', '--help'])\nexcept SystemExit:\n    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('textual', 'torch'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], capture_output=True,
                         text=True, check=True)
    assert "--neighbor" in out.stdout and "score file" in out.stdout
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_explore_shows_the_encoders_long_tag_note(tiny_model: Path) -> None:
    """A tag past the 75-token chunk, ranked with a model: the encoder's one-sentence note
    reaches the result, so explore's notices show it as the CLI does (it used to be CLI-only)."""
    from tagsmith.analysis.suggest import suggest
    from tagsmith.model.embedding import EncoderSettings, open_model
    from tagsmith.tui.loaders import suggest_table

    emb, _ = open_model(EncoderSettings(model=str(tiny_model)), explicit=True)
    tag = " ".join(["mayonnaise bottle"] * 40)  # 120 tokens
    result = suggest(tag, embedder=emb)
    notes = [n for n in result.notices if "only the first 75 tokens count" in n]
    assert len(notes) == 1 and tag not in notes[0]
    assert notes[0] in suggest_table(result).notices


@pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX")
def test_the_app_is_sized_by_its_terminal_when_stdout_is_redirected(tmp_path: Path) -> None:
    """``explore scores.csv > picked.txt``: stdout is a file, the app draws on stderr's
    terminal, and must take that terminal's size (the standard library says 80x24)."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    try:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 41, 133, 0, 0))
        code = (
            "import shutil\n"
            "from tagsmith.tui.app import ExploreApp, terminal_size\n"
            "driver = ExploreApp(None).driver_class\n"
            "print(tuple(shutil.get_terminal_size()), terminal_size(),"
            " driver._get_terminal_size(None))\n"
        )
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
        out = tmp_path / "picked.txt"
        with out.open("w") as fh:
            subprocess.run([sys.executable, "-c", code], stdin=slave, stderr=slave, stdout=fh,
                           env=env, check=True, timeout=60)
        stdlib, ours, drivers = out.read_text().strip().rsplit(") (", 2)
        assert stdlib == "(80, 24"  # what Textual's own driver would have used
        assert ours == drivers[:-1] == "133, 41"
        env["COLUMNS"] = "100"  # an explicit size still wins, as everywhere
        with out.open("w") as fh:
            subprocess.run([sys.executable, "-c", code], stdin=slave, stderr=slave, stdout=fh,
                           env=env, check=True, timeout=60)
        assert "(100, 41)" in out.read_text()
    finally:
        os.close(master)
        os.close(slave)
