"""The one progress reporter: says on stderr what is happening whenever a step takes > 1 s.

Commands hand ``Progress`` (or its ``step``/``count`` methods) to the library's progress
callbacks. On a terminal it draws a spinner for plain steps and a bar per counted phase; when
stderr is a pipe or a file it writes one line per phase, and only for a phase still running
after ``delay`` seconds, so quick commands stay quiet and logs stay short. stdout is never
touched, so ``--json`` output stays pure.
"""

from __future__ import annotations

import threading
import time
from typing import Any

DELAY_S = 1.0


class Progress:
    """A context manager; ``progress("building the index")`` starts a new plain step and
    ``progress.count("encode", done, total)`` reports a counted phase."""

    def __init__(self, console: Any = None, *, delay: float | None = None,
                 interactive: bool | None = None, labels: dict[str, str] | None = None,
                 unit: str = "tags") -> None:
        if console is None:
            from tagsmith.cli._console import err_console as console
        self.console = console
        self.delay = DELAY_S if delay is None else delay
        self.interactive = console.is_terminal if interactive is None else interactive
        self.labels = labels or {}
        self.unit = unit
        self._lock = threading.Lock()
        self._phase: str | None = None
        self._generation = 0
        self._timer: threading.Timer | None = None
        self._live: Any = None
        self._step_task: Any = None
        self._tasks: dict[str, Any] = {}
        self._started: dict[str, float] = {}

    # -- the callbacks handed to the library -------------------------------------------------
    def __call__(self, message: str) -> None:
        self.step(message)

    def step(self, message: str) -> None:
        """A new phase without a count ("reading the vocabulary")."""
        if self.interactive:
            live = self._ensure_live()
            from tagsmith.text.display import shown

            if self._step_task is None:
                self._step_task = live.add_task(shown(message) + "…", total=None, kind="step")
            else:
                live.update(self._step_task, description=shown(message) + "…")
            return
        self._begin(message, message)

    def count(self, phase: str, done: int, total: int) -> None:
        """Progress of a counted phase; a phase name not seen before starts a new phase."""
        label = self.labels.get(phase, phase)
        if self.interactive:
            live = self._ensure_live()
            if self._step_task is not None:
                live.remove_task(self._step_task)
                self._step_task = None
            task = self._tasks.get(phase)
            if task is None:
                task = live.add_task(label, total=total, kind="count")
                self._tasks[phase] = task
            live.update(task, completed=done, total=total)
            return
        if self._phase != phase:
            self._begin(phase, f"{label}: {total:,} {self.unit}")

    # -- context manager ---------------------------------------------------------------------
    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._generation += 1
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if self._live is not None:
            if self._step_task is not None:
                self._live.remove_task(self._step_task)
                self._step_task = None
            self._live.stop()
            self._live = None

    # -- not a terminal: one line per phase that lasts ----------------------------------------
    def _begin(self, phase: str, line: str) -> None:
        with self._lock:
            self._phase = phase
            self._generation += 1
            generation = self._generation
            if self._timer is not None:
                self._timer.cancel()
            self._started[phase] = time.monotonic()
            if self.delay <= 0:
                self._timer = None
                self._write(line)
                return
            self._timer = threading.Timer(self.delay, self._late, (generation, line))
            self._timer.daemon = True
            self._timer.start()

    def _late(self, generation: int, line: str) -> None:
        with self._lock:
            if generation != self._generation:
                return
        self._write(line)

    def _write(self, line: str) -> None:
        from tagsmith.text.display import shown

        try:  # a folder or file name in the line may hold terminal escapes: shown() defuses them
            self.console.file.write(f"tagsmith: {shown(line)}…\n")
            self.console.file.flush()
        except (OSError, ValueError):
            pass  # stderr closed: progress is not worth an error

    # -- a terminal: rich's live display -------------------------------------------------------
    def _ensure_live(self) -> Any:
        if self._live is None:
            self._live = _rich_progress(self.console, self.unit)
            self._live.start()
        return self._live


def _rich_progress(console: Any, unit: str) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.progress import (
        Progress as RichProgress,
    )
    from rich.text import Text

    class OnlyCounted(ProgressColumn):
        """Shows ``inner`` for counted phases and nothing for plain steps."""

        def __init__(self, inner: ProgressColumn) -> None:
            super().__init__()
            self.inner = inner

        def render(self, task: Any) -> Any:
            if task.fields.get("kind") != "count":
                return Text("")
            return self.inner.render(task)

    class Rate(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None:
                return Text("")
            return Text(f"{speed:>6,.0f} {unit}/s", style="progress.data.speed")

    class Remaining(ProgressColumn):
        def render(self, task: Any) -> Text:
            if task.finished or task.speed is None:
                return Text("")
            return Text("eta ") + TimeRemainingColumn().render(task)

    return RichProgress(
        SpinnerColumn(finished_text="✓"),
        TextColumn("{task.description:<10}", markup=False),
        OnlyCounted(BarColumn()),
        OnlyCounted(MofNCompleteColumn()),
        OnlyCounted(Rate()),
        OnlyCounted(TimeElapsedColumn()),
        OnlyCounted(Remaining()),
        console=console,
        transient=False,
    )
