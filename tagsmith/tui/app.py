"""`tagsmith explore`: the Textual app over score files and suggest rankings.

Each table (the score file, then one per drill-down) is a ``RankingScreen`` on the app's
screen stack, so going back is popping a screen and every table keeps its filter, sort and
cursor. Marks belong to the app and survive every screen; ``App.run`` returns them and the
CLI prints them on standard output. Slow work (reading a 140k-row file, loading the text
encoder, running suggest) runs in thread workers while the screen shows a loading state.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Static
from textual.worker import Worker, WorkerCancelled, WorkerState, get_current_worker

from tagsmith.errors import TagsmithError
from tagsmith.tui.loaders import (
    describe_load_error,
    load_lora_table,
    load_score_table,
    suggest_table,
)
from tagsmith.tui.table import Table, TableView
from tagsmith.tui.widgets import DetailPane, ExportScreen, FilterBar, HelpScreen, RankingView

ModelLoader = Callable[[], tuple[Any, "str | None"]]

# Tables bigger than this are filtered when typing pauses for DEBOUNCE_S seconds.
DEBOUNCE_ROWS = 20_000
DEBOUNCE_S = 0.12
FILTER_PLACEHOLDER = "/ filter: words  n_tokens>3  count>=1k  known=false   ? help"


@dataclass(frozen=True)
class ScoreSource:
    """A score file written by ``tagsmith score``."""

    path: Path

    @property
    def label(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class SuggestSource:
    """``suggest(tag)``; ``options`` None means the app's drill-down options."""

    tag: str
    options: Any = None

    @property
    def label(self) -> str:
        return f"suggest \u201c{self.tag}\u201d"


@dataclass(frozen=True)
class LoraSource:
    """A LoRA file's ``tagsmith lora`` report; ``settings`` (the base model) measures moves."""

    path: Path
    settings: Any = None
    vocab: Path | None = None

    @property
    def label(self) -> str:
        return f"lora {self.path.name}"


Source = ScoreSource | SuggestSource | LoraSource


class RankingScreen(Screen[None]):
    """One ranking: title, filter box, the table, the detail pane and the key bar."""

    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (130, "-wide")]
    VERTICAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-short"), (36, "-tall")]

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("slash", "filter", "filter", key_display="/"),
        Binding("space", "mark", "mark"),
        Binding("enter", "drill", "suggest"),
        Binding("e", "export", "export"),
        Binding("backspace,b", "back", "back", show=False),
        Binding("s", "sort_next(1)", "sort", show=False),
        Binding("S", "sort_next(-1)", "sort back", show=False),
        Binding("r", "reverse", "reverse", show=False),
        Binding("o", "original_order", "original order", show=False),
        Binding("J", "scroll_detail(1)", "detail down", show=False),
        Binding("K", "scroll_detail(-1)", "detail up", show=False),
        *(Binding(str(i), f"sort_column({i})", show=False) for i in range(1, 10)),
    ]

    def __init__(self, source: Source, trail: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.source = source
        self.trail = (*trail, source.label)
        self.table: Table | None = None
        self.view: TableView | None = None
        self.error: str | None = None
        self._progress = ""
        self._filter_timer: Timer | None = None
        # Set once the complete table, or the reason there is none, is on screen: what a test
        # or a script driving the app waits for, rather than for some length of time.
        self.shown = asyncio.Event()

    @property
    def explore(self) -> ExploreApp:
        app = self.app
        assert isinstance(app, ExploreApp)
        return app

    def compose(self) -> ComposeResult:
        yield Static(id="titlebar")
        yield FilterBar(placeholder=FILTER_PLACEHOLDER, id="filter", compact=True)
        yield Static(id="notices")
        with Container(id="body"):
            with Container(id="main"):
                yield RankingView(id="table")
                yield Static(id="message")
            yield DetailPane(id="detail")
        yield Footer()

    def on_mount(self) -> None:
        ranking = self.query_one(RankingView)
        ranking.is_marked = self.explore.is_marked
        self.query_one("#notices").display = False
        self.query_one("#message").display = False
        # Nothing to filter until the rows are there; the table takes focus once they are.
        self.query_one(FilterBar).disabled = True
        ranking.loading = True
        self._progress = "starting"
        self._update_title()
        self._load()

    # -- loading ---------------------------------------------------------------------------
    @work(thread=True, exclusive=True, exit_on_error=False, name="load")
    def _load(self) -> Table:
        source = self.source
        if isinstance(source, ScoreSource):
            return load_score_table(source.path, self._report, first_rows=self._first_rows)
        if isinstance(source, LoraSource):
            return load_lora_table(source.path, source.settings, source.vocab,
                                   progress=self._report)
        result = self.explore.run_suggest(source.tag, source.options, self._report)
        return suggest_table(result)

    def _report(self, message: str) -> None:
        """Progress from the worker thread, shown in the title bar. Also where the worker
        stops early once its screen is gone (back or quit while loading)."""
        if get_current_worker().is_cancelled:
            raise WorkerCancelled("the screen was closed")
        try:
            self.app.call_from_thread(self._set_progress, message)
        except RuntimeError:  # the app is closing
            pass

    def _first_rows(self, table: Table) -> None:
        """The first rows of a big file, shown while the worker reads the rest."""
        try:
            self.app.call_from_thread(self._show_table, table, final=False)
        except RuntimeError:
            pass

    def _set_progress(self, message: str) -> None:
        self._progress = message
        self._update_title()

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.name != "load":
            return
        if event.state == WorkerState.SUCCESS:
            self._show_table(event.worker.result)
        elif event.state == WorkerState.ERROR:
            exc = event.worker.error
            if isinstance(exc, TagsmithError):
                message = exc.message
            elif isinstance(self.source, ScoreSource):
                message = describe_load_error(self.source.path, exc)
            else:
                message = f"suggest failed: {exc}."
            self._show_error(message)

    def _show_table(self, table: Table, *, final: bool = True) -> None:
        """Show a table; a later, complete table keeps the filter, sort and cursor row."""
        if final:
            self._progress = ""
        previous = self.view
        self.table = table
        self.view = TableView(table, marked=self._marked_mask)
        ranking = self.query_one(RankingView)
        # The cursor follows its row into the complete table, unless it is still at the top.
        keep = ranking.current_row if previous is not None and ranking.cursor > 0 else None
        if previous is not None:
            if previous.sort_key is None or table.column(previous.sort_key) is not None:
                self.view.sort_key = previous.sort_key
                self.view.descending = previous.descending
            self.view.set_query(previous.query)
        ranking.loading = False
        notices = self.query_one("#notices", Static)
        if final and table.notices:
            # Two lines at most here; the help screen (?) shows them whole.
            text = Text("\n".join(table.notices), style="yellow")
            notices.update(text)
            notices.display = True
        if final and not len(table):
            self._show_message(table.empty_message, error=False)
        ranking.show(self.view, keep_row=keep)
        filter_bar = self.query_one(FilterBar)
        if filter_bar.disabled:
            filter_bar.disabled = False
            ranking.focus()
        self._update_title()
        self._update_detail(ranking.current_row)
        if final:
            self.shown.set()

    def _show_error(self, message: str) -> None:
        self._progress = ""
        self.error = message
        if self.source is getattr(self.app, "source", None):
            # What the user asked for failed (a refused checkpoint, a bad file): the app still
            # shows the sentence, and quitting exits non-zero, as the plain commands do.
            self.app.failure = message
        ranking = self.query_one(RankingView)
        ranking.loading = False
        self._show_message(message, error=True)
        self._update_title()
        self.query_one(DetailPane).display = False
        self.shown.set()

    def _show_message(self, message: str, *, error: bool) -> None:
        box = self.query_one("#message", Static)
        text = Text(message, style="bold red" if error else "bold")
        back = "b goes back \u00b7 " if len(self.trail) > 1 else ""
        text.append(f"\n\n{back}q quits \u00b7 ? shows the keys", style="dim")
        box.update(text)
        box.display = True
        self.query_one(RankingView).display = False

    def _marked_mask(self) -> np.ndarray:
        assert self.table is not None
        keys = self.table.keys()
        marks = self.explore.marked
        return np.fromiter((k in marks for k in keys), dtype=bool, count=len(keys))

    # -- title and detail ------------------------------------------------------------------
    def _update_title(self) -> None:
        status = Text(no_wrap=True)
        if self._progress:
            status.append(f"{self._progress}\u2026", style="italic")
        elif self.error:
            status.append("cannot show this", style="red")
        elif self.view is not None:
            status.append(self.view.status())
            if self.view.sort_key:
                col = self.view.table.column(self.view.sort_key)
                label = col.label if col is not None else self.view.sort_key
                arrow = "\u25bc" if self.view.descending else "\u25b2"
                status.append(f" \u00b7 by {label} {arrow}")
            elif self.view.descending:
                status.append(" \u00b7 reversed")
        n = len(self.explore.marked)
        if n:
            status.append(f" \u00b7 {n} marked", style="bold yellow")
        # Title and status share one line of one widget, laid out here. A status widget of
        # width auto kept the width of its previous text whenever the text changed twice
        # between two layouts (Textual caches the box model until the next layout), so the
        # end of the status was cut off or padded, depending on timing.
        width = max(0, self.app.size.width - 2)  # the title bar's padding
        status.truncate(max(0, width - 12), overflow="ellipsis")
        # The trail loses its oldest parts first: where you are matters more than the way.
        room = max(10, width - status.cell_len - 2)
        parts = ["tagsmith explore", *self.trail]
        while len(" \u203a ".join(parts)) > room and len(parts) > 1:
            if parts[0] != "\u2026":
                parts[0] = "\u2026"
            elif len(parts) > 2:
                del parts[1]
            else:
                break
        line = Text(no_wrap=True, overflow="ellipsis")
        for i, part in enumerate(parts):
            if i:
                line.append(" \u203a ", style="dim")
            line.append(part, style="bold" if part == "tagsmith explore" else "")
        line.truncate(min(room, width), overflow="ellipsis")
        line.pad_right(width - line.cell_len - status.cell_len)
        line.append_text(status)
        self.query_one("#titlebar", Static).update(line)

    def on_resize(self) -> None:
        self._update_title()

    def _update_detail(self, row: int | None) -> None:
        pane = self.query_one(DetailPane)
        if self.table is None or row is None:
            pane.show(None, "" if self.table is None or len(self.table) else "")
            return
        try:
            pane.show(self.table.detail(row))
        except Exception as exc:  # noqa: BLE001 - a bad cell must not close the app
            pane.show(None, f"Cannot show this row: {exc}")

    def on_ranking_view_cursor_moved(self, event: RankingView.CursorMoved) -> None:
        self._update_detail(event.row)

    def on_ranking_view_header_clicked(self, event: RankingView.HeaderClicked) -> None:
        self._sort(event.key)

    def on_ranking_view_row_activated(self, event: RankingView.RowActivated) -> None:
        self.action_drill()

    # -- filter ----------------------------------------------------------------------------
    def action_filter(self) -> None:
        if self.view is not None:
            self.query_one(FilterBar).focus()

    def on_input_changed(self, event: FilterBar.Changed) -> None:
        if event.input.id != "filter" or self.view is None:
            return
        if self._filter_timer is not None:
            self._filter_timer.stop()
            self._filter_timer = None
        if len(self.view.table) > DEBOUNCE_ROWS:
            # On a big table, filter once typing pauses rather than on every key.
            self._filter_timer = self.set_timer(DEBOUNCE_S, self._apply_filter)
        else:
            self._apply_filter()

    def _apply_filter(self) -> None:
        self._filter_timer = None
        if self.view is None:
            return
        query = self.query_one(FilterBar).value
        if query == self.view.query:
            return
        # A new filter starts at its first match, as a search does.
        self.view.set_query(query)
        self.query_one(RankingView).show(self.view)
        self._update_title()

    def on_input_submitted(self, event: FilterBar.Submitted) -> None:
        if event.input.id == "filter":
            self._leave_filter()

    def on_filter_bar_left(self, _: FilterBar.Left) -> None:
        self._leave_filter()

    def _leave_filter(self) -> None:
        if self._filter_timer is not None:
            self._filter_timer.stop()
        self._apply_filter()
        self.query_one(RankingView).focus()

    # -- sort ------------------------------------------------------------------------------
    def _sort(self, key: str, descending: bool | None = None) -> None:
        if self.view is not None:
            self._reorder(lambda view: view.sort_by(key, descending))

    def _reorder(self, change: Callable[[TableView], None]) -> None:
        """Re-sort, keeping the cursor on its row unless it was at the top: at the top the
        user is looking at the ranking, not at one row."""
        assert self.view is not None
        ranking = self.query_one(RankingView)
        keep = ranking.current_row if ranking.cursor > 0 else None
        change(self.view)
        ranking.show(self.view, keep_row=keep)
        self._update_title()

    def action_sort_next(self, step: int) -> None:
        if self.view is None:
            return
        keys = [c.key for c in self.view.table.columns]
        i = keys.index(self.view.sort_key) + step if self.view.sort_key in keys else \
            (0 if step > 0 else -1)
        self._sort(keys[i % len(keys)])

    def action_sort_column(self, n: int) -> None:
        if self.view is not None and n <= len(self.view.table.columns):
            self._sort(self.view.table.columns[n - 1].key)

    def action_reverse(self) -> None:
        if self.view is not None:
            self._reorder(TableView.reverse)

    def action_original_order(self) -> None:
        if self.view is not None:
            self._reorder(TableView.original_order)

    def action_scroll_detail(self, step: int) -> None:
        pane = self.query_one(DetailPane)
        pane.scroll_to(y=pane.scroll_y + step * 3, animate=False)

    # -- marks, export, drill-down ----------------------------------------------------------
    def action_mark(self) -> None:
        ranking = self.query_one(RankingView)
        row = ranking.current_row
        if self.table is None or row is None:
            return
        self.explore.toggle_mark(self.table.key(row))
        if self.view is not None and any(c.column.key == "marked"
                                         for c in self.view.filter.conditions):
            self.view.refilter()
            ranking.show(self.view, keep_row=row)
        else:
            ranking.refresh_rows()
            ranking.action_cursor(1)
        self._update_title()

    def action_export(self) -> None:
        tags = list(self.explore.marked)
        if not tags:
            self.notify("No marked tags yet: mark rows with space first.", severity="warning")
            return

        def done(path: Path | None) -> None:
            if path is not None:
                self.notify(f"Wrote {len(tags)} tag{'s' if len(tags) != 1 else ''} to {path}.")

        self.app.push_screen(ExportScreen(tags, self.explore.export_default), done)

    def action_drill(self) -> None:
        row = self.query_one(RankingView).current_row
        if self.table is None or row is None:
            return
        tag = self.table.key(row)
        self.app.push_screen(RankingScreen(SuggestSource(tag), self.trail))

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.app.pop_screen()
        else:
            self.notify("This is the first table; q quits.", timeout=3)


def terminal_size() -> tuple[int, int]:
    """(columns, lines) of the terminal the app draws on: $COLUMNS/$LINES when set, else the
    first of stderr (where Textual draws), stdin and stdout that is a terminal. Not stdout
    first, as the standard library does: ``explore scores.csv > picked.txt`` would draw in
    80x24."""
    import os
    import sys

    size = None
    for stream in (sys.__stderr__, sys.__stdin__, sys.__stdout__):
        try:
            size = os.get_terminal_size(stream.fileno())
            break
        except (AttributeError, ValueError, OSError):
            continue
    columns, lines = (size.columns, size.lines) if size is not None else (80, 24)
    env = {name: os.environ.get(name, "") for name in ("COLUMNS", "LINES")}
    columns = int(env["COLUMNS"]) if env["COLUMNS"].isdigit() else columns
    lines = int(env["LINES"]) if env["LINES"].isdigit() else lines
    return columns or 80, lines or 24


def sized_by_the_terminal(driver: type) -> type:
    """``driver`` measuring the terminal with ``terminal_size`` (Textual's own drivers ask
    the standard library, which looks at stdout only)."""
    if not hasattr(driver, "_get_terminal_size"):
        return driver
    return type(driver.__name__, (driver,), {"_get_terminal_size": lambda _self: terminal_size()})


class ExploreApp(App[list[str]]):
    """Explore a score file or suggest's ranking. ``run()`` returns the marked tags."""

    CSS_PATH = "explore.tcss"
    TITLE = "tagsmith explore"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "help", key_display="?"),
        Binding("q", "quit", "quit"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True),
    ]

    def __init__(
        self,
        source: Source,
        *,
        suggest_options: Any = None,
        model_loader: ModelLoader | None = None,
        export_default: str = "marked-tags.txt",
    ) -> None:
        super().__init__()
        self.source = source
        self.suggest_options = suggest_options
        self.export_default = export_default
        self.marked: dict[str, None] = {}  # insertion-ordered set
        self._model_loader = model_loader
        self._model_lock = threading.Lock()
        self._model: tuple[Any, str | None] | None = None
        self.failure: str | None = None  # the first screen's load error, if any

    def get_driver_class(self) -> type:
        return sized_by_the_terminal(super().get_driver_class())

    def on_mount(self) -> None:
        self.push_screen(RankingScreen(self.source))

    # -- marks -------------------------------------------------------------------------
    def is_marked(self, tag: str) -> bool:
        return tag in self.marked

    def toggle_mark(self, tag: str) -> bool:
        if tag in self.marked:
            del self.marked[tag]
            return False
        self.marked[tag] = None
        return True

    # -- suggest -----------------------------------------------------------------------
    def embedder(self, progress: Callable[[str], None]) -> tuple[Any, str | None]:
        """The text encoder, loaded once on first use (from a worker thread)."""
        with self._model_lock:
            if self._model is None:
                if self._model_loader is None:
                    self._model = (None, None)
                else:
                    progress("loading the text encoder")
                    self._model = self._model_loader()
            return self._model

    def run_suggest(self, tag: str, options: Any, progress: Callable[[str], None]) -> Any:
        from tagsmith.analysis.suggest import SuggestOptions, suggest

        embedder, notice = self.embedder(progress)
        opts = options if options is not None else (self.suggest_options or SuggestOptions())
        return suggest(tag, opts, embedder=embedder, notices=[notice] if notice else [],
                       progress=progress)

    # -- actions -----------------------------------------------------------------------
    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        screen = self.screen
        table = screen.table if isinstance(screen, RankingScreen) else None
        self.push_screen(HelpScreen(table.columns if table else [],
                                    table.notices if table else []))

    async def action_quit(self) -> None:
        self.exit(list(self.marked), return_code=1 if self.failure else 0)
