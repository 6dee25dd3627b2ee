"""Widgets of the explore app: the virtual ranking table, the filter box, modal screens.

``RankingView`` draws only the rows on screen straight from a ``TableView`` (Textual's Line
API), so 140k rows cost the same to show and scroll as 20: nothing is copied into widgets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from rich.cells import cell_len, set_cell_size
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.geometry import Region, Size
from textual.message import Message
from textual.reactive import reactive
from textual.screen import ModalScreen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input, Static

from tagsmith.text.display import shown
from tagsmith.tui.detail import DetailPane, render_detail, similarity_bar  # noqa: F401
from tagsmith.tui.table import Column, Table, TableView

MARK = "\u25cf"  # ●
GAP = 1  # blank cells between columns


def _fit(text: str, width: int, right: bool = False) -> str:
    """Pad or cut ``text`` to exactly ``width`` cells, with an ellipsis when cut."""
    if width <= 0:
        return ""
    if cell_len(text) > width:
        return set_cell_size(text, width - 1) + "\u2026"
    pad = width - cell_len(text)
    return " " * pad + text if right else text + " " * pad


class RankingView(ScrollView, can_focus=True):
    """A table over a ``TableView``: fixed header and tag column, rows drawn on demand."""

    COMPONENT_CLASSES: ClassVar[set[str]] = {
        "ranking--header",
        "ranking--header-sorted",
        "ranking--cursor",
        "ranking--cursor-blurred",
        "ranking--mark",
        "ranking--marked",
        "ranking--yes",
        "ranking--no",
        "ranking--empty",
    }

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up,k", "cursor(-1)", "Up", show=False),
        Binding("down,j", "cursor(1)", "Down", show=False),
        Binding("pageup,ctrl+b", "page(-1)", "Page up", show=False),
        Binding("pagedown,ctrl+f", "page(1)", "Page down", show=False),
        Binding("home,g", "first", "First row", show=False),
        Binding("end,G", "last", "Last row", show=False),
        Binding("left,h", "pan(-1)", "Scroll left", show=False),
        Binding("right,l", "pan(1)", "Scroll right", show=False),
    ]

    # repaint=False: watch_cursor redraws the two rows that change, not the whole table.
    cursor: reactive[int] = reactive(0, always_update=True, init=False, repaint=False)

    class CursorMoved(Message):
        """The highlighted row changed; ``row`` is a table row number or None."""

        def __init__(self, row: int | None) -> None:
            super().__init__()
            self.row = row

    class HeaderClicked(Message):
        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    class RowActivated(Message):
        """A row was double-clicked."""

        def __init__(self, row: int) -> None:
            super().__init__()
            self.row = row

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.view: TableView | None = None
        self.is_marked: Callable[[str], bool] = lambda _: False
        self._fixed: list[Column] = []
        self._scrolling: list[Column] = []
        self._widths: dict[str, int] = {}
        self._fixed_width = 0
        self._longest: tuple[Table, int] | None = None
        self._styles: dict[str, Style] = {}
        self._base: Style | None = None
        self._move_pending = False

    # -- data --------------------------------------------------------------------------
    def show(self, view: TableView, *, keep_row: int | None = None) -> None:
        """Show ``view``, keeping the cursor on ``keep_row`` when it is still there."""
        self.view = view
        self._layout()
        pos = view.position_of(keep_row) if keep_row is not None else None
        self._set_cursor(pos if pos is not None else 0, force=True)
        self.refresh()

    @property
    def current_row(self) -> int | None:
        v = self.view
        if v is None or not len(v) or not 0 <= self.cursor < len(v):
            return None
        return int(v.rows[self.cursor])

    def refresh_rows(self) -> None:
        self.refresh()

    # -- layout --------------------------------------------------------------------------
    def _layout(self) -> None:
        """Column widths for the current size: the tag column is sized to the tags, the
        last text column stretches to fill a wide terminal."""
        v = self.view
        if v is None:
            return
        table = v.table
        cols = table.columns
        key_index = next(i for i, c in enumerate(cols) if c.key == table.key_column)
        self._fixed = cols[: key_index + 1]
        self._scrolling = cols[key_index + 1 :]
        width = max(self.scrollable_content_region.width, 20)
        widths = {c.key: c.width for c in cols}
        key_col = cols[key_index]
        # The tag column takes what its tags need, up to 30% of a wide screen.
        cap = max(key_col.width, width * 3 // 10)
        key_width = max(len(key_col.label), min(self._longest_key(table), cap))
        widths[key_col.key] = min(key_width, max(12, width - 14))
        fixed = 2 + sum(widths[c.key] + GAP for c in self._fixed)
        rest = sum(widths[c.key] + GAP for c in self._scrolling)
        if self._scrolling and fixed + rest < width:
            last = self._scrolling[-1]
            if last.kind == "text":
                widths[last.key] += width - fixed - rest
        self._widths = widths
        self._fixed_width = fixed
        total = fixed + sum(widths[c.key] + GAP for c in self._scrolling)
        self.virtual_size = Size(total, len(v) + 1)

    def _longest_key(self, table: Table) -> int:
        if self._longest is None or self._longest[0] is not table:
            # A sample is enough: the column is capped at 40% of the screen anyway.
            keys = table.keys()
            self._longest = (table, max((cell_len(k) for k in keys[:20_000]), default=0))
        return self._longest[1]

    def on_resize(self, _: events.Resize) -> None:
        self._layout()
        self._scroll_to_cursor()

    def column_at(self, x: int) -> Column | None:
        """The column under screen column ``x`` of the widget."""
        if x < 2:
            return None
        pos = 2
        for c in self._fixed:
            if x < pos + self._widths[c.key] + GAP:
                return c
            pos += self._widths[c.key] + GAP
        x = x - self._fixed_width + int(self.scroll_x)
        pos = 0
        for c in self._scrolling:
            if x < pos + self._widths[c.key] + GAP:
                return c
            pos += self._widths[c.key] + GAP
        return None

    # -- drawing ---------------------------------------------------------------------------
    def render_lines(self, crop: Region) -> list[Strip]:
        self._base = self.rich_style
        return super().render_lines(crop)

    def notify_style_update(self) -> None:
        # Component styles are looked up once, not once per cell; a theme change clears them.
        self._styles = {}
        super().notify_style_update()

    def _style(self, name: str) -> Style:
        got = self._styles.get(name)
        if got is None:
            got = self._styles[name] = self.get_component_rich_style(name)
        return got

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        base = self._base if self._base is not None else self.rich_style
        v = self.view
        if v is None:
            return Strip.blank(width, base)
        if y == 0:
            return self._header(width, base)
        pos = int(self.scroll_y) + y - 1
        if pos >= len(v):
            if pos == 0 and len(v.table):
                style = base + self._style("ranking--empty")
                return Strip([Segment(_fit("  no rows match the filter", width), style)])
            return Strip.blank(width, base)
        return self._row(pos, int(v.rows[pos]), width, base)

    def _header(self, width: int, base: Style) -> Strip:
        v = self.view
        assert v is not None
        style = base + self._style("ranking--header")
        sorted_style = style + self._style("ranking--header-sorted")

        def label(c: Column) -> Segment:
            w = self._widths[c.key]
            text = c.label
            if v.sort_key == c.key:
                arrow = "\u25bc" if v.descending else "\u25b2"
                if cell_len(text) > w - 1:
                    text = set_cell_size(text, max(0, w - 1))
                text = _fit(text + arrow, w, c.right_aligned)
                return Segment(text + " " * GAP, sorted_style)
            return Segment(_fit(text, w, c.right_aligned) + " " * GAP, style)

        fixed = [Segment("  ", style), *(label(c) for c in self._fixed)]
        scrolling = [label(c) for c in self._scrolling]
        return self._join_cells(fixed, scrolling, width, style)

    def _row(self, pos: int, row: int, width: int, base: Style) -> Strip:
        v = self.view
        assert v is not None
        table = v.table
        key = table.key(row)
        marked = self.is_marked(key)
        style = base
        if pos == self.cursor:
            style = base + self._style(
                "ranking--cursor" if self.has_focus else "ranking--cursor-blurred"
            )
        marked_style = style + self._style("ranking--marked")
        segs: list[Segment] = [
            Segment(MARK + " " if marked else "  ",
                    style + self._style("ranking--mark"))
        ]
        for c in self._fixed:
            text = _fit(table.cell(c, row), self._widths[c.key], c.right_aligned)
            is_key = c.key == table.key_column
            segs.append(Segment(text + " " * GAP, marked_style if marked and is_key else style))
        scrolling = [self._cell(table, c, row, style) for c in self._scrolling]
        return self._join_cells(segs, scrolling, width, style)

    def _cell(self, table: Table, c: Column, row: int, style: Style) -> Segment:
        text = shown(table.cell(c, row))  # tags from strangers: escapes made visible
        cell_style = style
        if c.kind == "bool" and text:
            cell_style = style + self._style(
                "ranking--yes" if text == "yes" else "ranking--no"
            )
        return Segment(_fit(text, self._widths[c.key], c.right_aligned) + " " * GAP, cell_style)

    def _join_cells(self, fixed: list[Segment], scrolling: list[Segment], width: int,
                 style: Style) -> Strip:
        left = Strip(fixed)
        x = int(self.scroll_x)
        right = Strip(scrolling).crop(x, x + max(0, width - left.cell_length))
        return Strip.join([left, right]).adjust_cell_length(width, style)

    # -- cursor ----------------------------------------------------------------------------
    def _page_rows(self) -> int:
        return max(1, self.scrollable_content_region.height - 1)

    def _set_cursor(self, pos: int, *, force: bool = False) -> None:
        n = len(self.view) if self.view is not None else 0
        pos = max(0, min(pos, n - 1)) if n else 0
        if pos != self.cursor or force:
            self.cursor = pos
        self._scroll_to_cursor()

    def watch_cursor(self, old: int, new: int) -> None:
        # Only the two rows that changed are drawn again (a scroll redraws everything anyway).
        for pos in (old, new):
            self.refresh_line(pos + 1)  # virtual line: the header is line 0
        # Moves that arrive together (a held key) are announced once, with the last row:
        # the detail pane is built for the row the cursor stops on, not for every row passed.
        if not self._move_pending:
            self._move_pending = True
            self.call_later(self._announce_move)

    def _announce_move(self) -> None:
        self._move_pending = False
        self.post_message(self.CursorMoved(self.current_row))

    def watch_has_focus(self, _: bool) -> None:
        self.refresh()

    def _scroll_to_cursor(self) -> None:
        page = self._page_rows()
        top = int(self.scroll_y)
        if self.cursor < top:
            top = self.cursor
        elif self.cursor >= top + page:
            top = self.cursor - page + 1
        if top != int(self.scroll_y):
            self.scroll_to(y=top, animate=False, force=True)

    def action_cursor(self, step: int) -> None:
        self._set_cursor(self.cursor + step)

    def action_page(self, step: int) -> None:
        page = self._page_rows()
        self.scroll_to(y=self.scroll_y + step * page, animate=False, force=True)
        self._set_cursor(self.cursor + step * page)

    def action_first(self) -> None:
        self._set_cursor(0)

    def action_last(self) -> None:
        self._set_cursor(len(self.view) - 1 if self.view is not None else 0)

    def action_pan(self, step: int) -> None:
        self.scroll_to(x=max(0, self.scroll_x + step * 8), animate=False, force=True)

    def on_click(self, event: events.Click) -> None:
        offset = event.get_content_offset(self)
        if offset is None or self.view is None:
            return
        if offset.y == 0:
            column = self.column_at(offset.x)
            if column is not None:
                self.post_message(self.HeaderClicked(column.key))
            return
        pos = int(self.scroll_y) + offset.y - 1
        if 0 <= pos < len(self.view):
            self.focus()
            self._set_cursor(pos)
            if event.chain >= 2:
                self.post_message(self.RowActivated(int(self.view.rows[pos])))


class FilterBar(Input):
    """The filter box: ``/`` focuses it, Escape or Enter go back to the table."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "leave", "Back to the table", show=False),
    ]

    class Left(Message):
        pass

    def action_leave(self) -> None:
        self.post_message(self.Left())


# -- modal screens -------------------------------------------------------------------------------

HELP_KEYS = [
    ("\u2191 \u2193  j k", "move"),
    ("PgUp PgDn g G", "page up, page down, first row, last row"),
    ("\u2190 \u2192  h l", "scroll the columns sideways"),
    ("J  K", "scroll the detail pane down / up"),
    ("/", "filter; Enter or Escape goes back to the table"),
    ("s  S", "sort by the next / previous column"),
    ("1 \u2026 9", "sort by that column; again reverses"),
    ("click a header", "sort by it; again reverses"),
    ("r  o", "reverse the sort; back to the original order"),
    ("space", "mark or unmark the row"),
    ("e", "export the marked tags to a file"),
    ("enter", "suggest forms of the row's tag (drill down)"),
    ("b  backspace", "back to the previous table"),
    ("?", "this help"),
    ("q", "quit; the marked tags go to standard output"),
]

FILTER_HELP = (
    "Filter: words match inside the tag (\"quoted phrase\" for a phrase); "
    "NAME OP VALUE compares a column: n_tokens>3  count>=1k  known=false  leak>0.8  "
    "kind=hyphen  marked=true. OP: = != < <= > >= and ~ (text contains)."
)


class HelpScreen(ModalScreen[None]):
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q,question_mark,enter", "close", "Close", show=False),
    ]

    def __init__(self, columns: list[Column], notices: list[str] | None = None) -> None:
        super().__init__()
        self._columns = columns
        self._notices = notices or []

    def compose(self) -> ComposeResult:
        keys = Text()
        for i, (k, what) in enumerate(HELP_KEYS):
            if i:
                keys.append("\n")
            keys.append(f"{k:<16}", style="bold")
            keys.append(what)
        cols = Text("Columns (name in filters, then aliases):\n", style="bold")
        for c in self._columns:
            names = c.key + (f" ({', '.join(c.aliases)})" if c.aliases else "")
            cols.append(f"  {names}\n", style="cyan")
            cols.append(f"      {c.help}\n", style="")
        with VerticalScroll(id="help-box"):
            yield Static(Text("tagsmith explore \u2014 keys", style="bold"), id="help-title")
            yield Static(keys)
            for notice in self._notices:
                yield Static(Text(notice, style="yellow"), classes="help-para")
            yield Static(Text(FILTER_HELP, style="dim"), classes="help-para")
            yield Static(cols, classes="help-para")
            yield Static(Text("Escape or ? closes this help.", style="dim"), classes="help-para")

    def action_close(self) -> None:
        self.dismiss(None)


class ExportScreen(ModalScreen[Path | None]):
    """Ask for a file name and write the marked tags there, one per line, atomically."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "cancel", "Cancel", show=False),
    ]

    def __init__(self, tags: list[str], default: str) -> None:
        super().__init__()
        self._tags = tags
        self._default = default
        self._confirm: Path | None = None

    def compose(self) -> ComposeResult:
        n = len(self._tags)
        with Vertical(id="export-box"):
            yield Static(
                Text(f"Export {n} marked tag{'s' if n != 1 else ''}, one per line, to:",
                     style="bold")
            )
            yield Input(value=self._default, id="export-path", compact=True)
            yield Static(Text("Enter writes, Escape cancels.", style="dim"), id="export-msg")

    def on_input_changed(self, _: Input.Changed) -> None:
        self._confirm = None

    def on_input_submitted(self, event: Input.Submitted) -> None:
        from tagsmith.errors import TagsmithError
        from tagsmith.fileio import atomic_write_text

        event.stop()
        msg = self.query_one("#export-msg", Static)
        raw = event.value.strip()
        if not raw:
            msg.update(Text("Give a file name.", style="red"))
            return
        path = Path(raw).expanduser()
        if path.is_file() and self._confirm != path:
            self._confirm = path
            msg.update(Text(f"{path} exists; Enter again replaces it.", style="yellow"))
            return
        try:
            atomic_write_text(path, "".join(t + "\n" for t in self._tags))
        except TagsmithError as exc:
            msg.update(Text(exc.message, style="red"))
            return
        except OSError as exc:
            msg.update(Text(f"Cannot write {path}: {exc.strerror or exc}.", style="red"))
            return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)
