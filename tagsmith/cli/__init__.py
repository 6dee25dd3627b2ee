"""Command-line entry point.

Commands live one per module in this package and register on the shared typer app in
``_app``. This module maps every expected failure to one sentence on stderr and an exit code:
``TagsmithError`` -> 1 (``UsageError`` -> 2), bad arguments -> 2, Ctrl-C -> 130.
Heavy libraries (torch, transformers, textual) are imported inside the commands that need them.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tagsmith.errors import TagsmithError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _load_app():  # noqa: ANN202 - typer app
    import importlib

    from tagsmith.cli import _app

    # Importing a command module registers its commands on the app.
    for name in _app.COMMAND_MODULES:
        importlib.import_module(f"tagsmith.cli.{name}")
    return _app.app


def run(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code instead of exiting (used by tests and main)."""
    from tagsmith.cli._console import err_console

    app = _load_app()
    exit_types, abort_types, click_error_types = _click_exception_types()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        result = app(args=args, prog_name="tagsmith", standalone_mode=False)
    except exit_types as exc:
        code = int(getattr(exc, "exit_code", 0) or 0)
        if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into Exit(130)
            err_console.print("Interrupted.", style="yellow", highlight=False)
        return code
    except abort_types:
        err_console.print("Interrupted.", style="yellow", highlight=False)
        return EXIT_INTERRUPTED
    except click_error_types as exc:
        exc.show()
        return int(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("Interrupted.", style="yellow", highlight=False)
        return EXIT_INTERRUPTED
    except TagsmithError as exc:
        err_console.print(f"Error: {exc.message}", style="red", highlight=False, markup=False)
        return exc.exit_code
    except BrokenPipeError:
        # `tagsmith ... | head` closed the pipe: not an error worth a message.
        return EXIT_OK
    if isinstance(result, int):
        # With standalone_mode=False typer returns Exit codes instead of raising, Ctrl-C too.
        if result == EXIT_INTERRUPTED:
            err_console.print("Interrupted.", style="yellow", highlight=False)
        return result
    return EXIT_OK


def _click_exception_types() -> tuple[tuple[type, ...], tuple[type, ...], tuple[type, ...]]:
    """Exit, Abort and ClickException classes: typer >= 0.20 vendors click as typer._click."""
    exits: list[type] = []
    aborts: list[type] = []
    errors: list[type] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = __import__(module, fromlist=["ClickException"])
        except ImportError:
            continue
        for name, bucket in (("Exit", exits), ("Abort", aborts), ("ClickException", errors)):
            cls = getattr(mod, name, None)
            if isinstance(cls, type):
                bucket.append(cls)
    import typer

    exits.append(typer.Exit)
    aborts.append(typer.Abort)
    return tuple(exits), tuple(aborts), tuple(errors)


def exit_on_termination() -> None:
    """SIGTERM (a killed job, a timeout) and SIGHUP (the terminal closed) end the command as an
    exception, so every half-written output's temporary file is removed on the way out (the
    default action ends the process on the spot and leaves it behind). Exit 128 + signal."""
    import signal

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for name in ("SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None:
            signal.signal(number, stop)


def main() -> None:
    exit_on_termination()
    code = run()
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        pass
    sys.exit(code)
