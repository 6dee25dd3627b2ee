"""Rich consoles shared by the commands: results to stdout, messages to stderr.

Every segment they write passes through ``tagsmith.text.display.shown``, so a terminal escape,
a bidi override or an undecodable file-name byte in a caption, tag or file name reaches the
terminal as a visible escape, whichever table or message it sits in. (Rich's own cursor and
style controls are separate control segments and pass unchanged.)
"""

from __future__ import annotations

from rich.console import Console
from rich.segment import Segment

from tagsmith.text.display import has_unsafe, shown


class SafeConsole(Console):
    """A rich Console that escapes unsafe characters in everything it renders."""

    def render(self, renderable, options=None):  # noqa: ANN001, ANN201 - rich's signature
        for seg in super().render(renderable, options):
            if seg.control or not has_unsafe(seg.text):
                yield seg
            else:
                yield Segment(shown(seg.text), seg.style, seg.control)


console = SafeConsole()
err_console = SafeConsole(stderr=True)
