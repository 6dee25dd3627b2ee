"""Rich consoles shared by the commands: results to stdout, messages to stderr."""

from __future__ import annotations

from rich.console import Console

console = Console()
err_console = Console(stderr=True)
