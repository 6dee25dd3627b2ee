"""The explore app's detail pane: the selected row's token split, neighbours and reason.

The pane draws its lines itself (Textual's Line API), so showing another row repaints the
pane and never lays out the screen unless the pane's scrollbar comes or goes.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text
from textual import events
from textual.geometry import Size
from textual.scroll_view import ScrollView
from textual.strip import Strip

from tagsmith.text.display import shown
from tagsmith.tui.table import RowDetail

PIECE_STYLES = ("bold cyan", "bold magenta", "bold green", "bold yellow")
ROLE_STYLES = {
    "keep": "green",
    "leak": "yellow",
    "avoid": "red",
    "nearest": "cyan",
    "shares": "magenta",
}
BAR_WIDTH = 20
_EIGHTHS = " \u258f\u258e\u258d\u258c\u258b\u258a\u2589"


def similarity_bar(value: float | None, width: int = BAR_WIDTH) -> Text:
    """A horizontal bar for a cosine similarity on a 0..1 scale (eighth-cell resolution)."""
    if value is None:
        return Text(" " * width)
    v = max(0.0, min(1.0, value))
    eighths = round(v * width * 8)
    full, part = divmod(eighths, 8)
    bar = "\u2588" * full + (_EIGHTHS[part] if part else "")
    return Text(bar.ljust(width), style="bold")


def render_pieces(tokens: tuple[str, ...]) -> Text:
    """Pieces in alternating colours; a dim ``</w>`` marks each word-final piece."""
    from tagsmith.text.tokenizer import WORD_END, piece_text

    text = Text()
    for i, piece in enumerate(tokens):
        if i:
            text.append(" ")
        text.append(piece_text(piece), style=PIECE_STYLES[i % len(PIECE_STYLES)])
        if piece.endswith(WORD_END):
            text.append(WORD_END, style="dim")
    return text


class FlowLine:
    """Pieces of text side by side, wrapped only between pieces: ``3 tokens`` never splits
    into ``3`` at the end of one line and ``tokens`` on the next."""

    def __init__(self, pieces: list[Text], gap: int = 2, style: str = "") -> None:
        self.pieces = pieces
        self.gap = gap
        self.style = style

    def __rich_measure__(self, console: Any, options: Any) -> Any:
        from rich.measure import Measurement

        widest = max((p.cell_len for p in self.pieces), default=0)
        total = sum(p.cell_len for p in self.pieces) + self.gap * max(0, len(self.pieces) - 1)
        return Measurement(min(widest, options.max_width), min(total, options.max_width))

    def __rich_console__(self, console: Any, options: Any) -> Any:
        width = max(1, options.max_width)
        line = Text(style=self.style)
        for piece in self.pieces:
            if line.cell_len and line.cell_len + self.gap + piece.cell_len > width:
                yield line
                line = Text(style=self.style)
            if line.cell_len:
                line.append(" " * self.gap)
            line.append_text(piece)
        if line.cell_len:
            yield line


def render_detail(d: RowDetail) -> Group:
    from tagsmith.text.tokenizer import piece_text

    pieces = [Text(shown(d.title))]
    for label, value in d.facts:
        fact = Text()
        if label:
            fact.append(f"{label} ", style="dim")
        fact.append(shown(value))
        pieces.append(fact)
    lines: list[Any] = [FlowLine(pieces, style="bold")]
    toks = Text("tokens  ", style="dim")
    toks.append_text(render_pieces(d.tokens))
    lines.append(toks)
    words = Text("words   ", style="dim")
    visible = [w for w in d.words if not w.punctuation]
    for i, w in enumerate(visible):
        if i:
            words.append("  ")
        if w.known:
            words.append(w.text, style="green")
            words.append(" known", style="dim green")
        else:
            words.append(w.text, style="yellow")
            words.append(" split " + "+".join(piece_text(p) for p in w.pieces), style="dim yellow")
    lines.append(words)
    if d.reason:
        reason = Text("reason  ", style="dim")
        reason.append(d.reason)
        lines.append(reason)
    if d.neighbors:
        order = {"keep": 0, "avoid": 1, "shares": 2, "leak": 3, "nearest": 4}
        ranked = sorted(
            d.neighbors,
            key=lambda n: (order.get(n.role, 5), -(n.similarity if n.similarity is not None
                                                   else -2.0)),
        )
        for n in ranked:
            line = Text(f"{n.role:<7} ", style=ROLE_STYLES.get(n.role, ""))
            bar = similarity_bar(n.similarity)
            bar.stylize(ROLE_STYLES.get(n.role, ""))
            line.append_text(bar)
            line.append(f" {n.similarity:5.2f} " if n.similarity is not None else "   \u2014  ")
            line.append(shown(n.tag))
            if n.note:
                line.append(f"  {n.note}", style="dim")
            line.no_wrap = True
            line.overflow = "ellipsis"
            lines.append(line)
    return Group(*lines)


class DetailPane(ScrollView, can_focus=False):
    """The selected row: token split, neighbours with similarity bars, and the reason.

    Drawn line by line (like ``RankingView``) rather than as a child widget: a child's
    height is part of the screen's layout, so every cursor move onto a row with one more or
    one less line laid out the whole screen again. Here a new row changes only the pane's
    virtual height, and the screen is laid out only when its scrollbar comes or goes.
    """

    DEFAULT_CSS = "DetailPane { overflow-x: hidden; }"

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.shows = 0  # contents built (tests count them: one per cursor move, not more)
        self.layouts = 0  # shows that needed the screen laid out again
        self._content: Any = Text("")
        self._strips: tuple[int, list[Strip]] | None = None  # (width, lines) drawn

    def show(self, detail: RowDetail | None, empty: str = "") -> None:
        self.shows += 1
        self._content = Text(empty, style="dim") if detail is None else render_detail(detail)
        self._strips = None
        width = self.scrollable_content_region.width
        if self.scroll_y:
            self.scroll_to(y=0, animate=False, force=True)
        if not width:
            self.refresh(layout=True)
            return
        size = Size(0, len(self._lines(width)))  # never wider than the pane: lines wrap
        if size == self.virtual_size:
            self.refresh()
            return
        room = self.scrollable_content_region.height
        if (size.height > room) == (self.virtual_size.height > room):
            # The scrollbar stays as it is: no layout, only the pane's own lines and bar.
            self.set_reactive(DetailPane.virtual_size, size)
            self._scroll_update(size)
            self.refresh()
        else:
            self.layouts += 1
            self.virtual_size = size

    def _lines(self, width: int) -> list[Strip]:
        if self._strips is None or self._strips[0] != width:
            from textual.visual import Visual, visualize

            visual = visualize(self, self._content)
            lines = Visual.to_strips(self, visual, width, None, self.visual_style)
            base = self.rich_style
            self._strips = (width, [line.adjust_cell_length(width, base) for line in lines])
        return self._strips[1]

    def on_resize(self, _: events.Resize) -> None:
        width = self.scrollable_content_region.width
        if width:
            self.virtual_size = Size(0, len(self._lines(width)))

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        lines = self._lines(width)
        pos = int(self.scroll_y) + y
        if 0 <= pos < len(lines):
            return lines[pos].crop(int(self.scroll_x), int(self.scroll_x) + width)
        return Strip.blank(width, self.rich_style)

    def text(self) -> str:
        """Everything the pane holds, as plain text lines (scrolled out of view included)."""
        width = self.scrollable_content_region.width or 80
        return "\n".join(line.text.rstrip() for line in self._lines(width))


