"""Rich consoles shared by the commands: results to stdout, messages to stderr.

Everything they render passes through ``tagsmith.text.display.shown``, so a terminal escape, a
bidi override or an undecodable file-name byte in a caption, tag or file name reaches the
terminal as a visible escape, whichever table or message it sits in. Text is escaped before it
is wrapped (so nothing is cropped), and every segment is checked again on the way out. Rich's
own cursor and style controls are separate control segments and pass unchanged.
"""

from __future__ import annotations

from rich.console import Console
from rich.segment import Segment
from rich.text import Span, Text

from tagsmith.text.display import has_unsafe, shown


def safe_text(text: Text) -> Text:
    """A copy of ``text`` with unsafe characters escaped and its styles kept on the same parts."""
    plain = text.plain
    if not has_unsafe(plain):
        return text
    pieces: list[str] = []
    where = [0] * (len(plain) + 1)  # old offset -> new offset
    pos = 0
    for i, ch in enumerate(plain):
        where[i] = pos
        piece = shown(ch)
        pieces.append(piece)
        pos += len(piece)
    where[len(plain)] = pos
    spans = [Span(where[s.start], where[min(s.end, len(plain))], s.style) for s in text.spans]
    return Text(
        "".join(pieces), style=text.style, justify=text.justify, overflow=text.overflow,
        no_wrap=text.no_wrap, end=text.end, tab_size=text.tab_size, spans=spans,
    )


class SafeConsole(Console):
    """A rich Console that escapes unsafe characters in everything it renders, and never
    turns ``:name:`` into an emoji (``<lora:x:1>`` is not ``<lora❌1>``)."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - rich's arguments
        kwargs.setdefault("emoji", False)
        super().__init__(*args, **kwargs)

    def render_str(self, text: str, **kwargs) -> Text:  # noqa: ANN003 - rich's keywords
        return safe_text(super().render_str(text, **kwargs))

    def render(self, renderable, options=None):  # noqa: ANN001, ANN201 - rich's signature
        if isinstance(renderable, Text):
            renderable = safe_text(renderable)
        for seg in super().render(renderable, options):
            if seg.control or not has_unsafe(seg.text):
                yield seg
            else:
                yield Segment(shown(seg.text), seg.style, seg.control)


console = SafeConsole()
err_console = SafeConsole(stderr=True)
