"""The typer application every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="tagsmith",
    help=(
        "Tokenizer-aware tag design for Stable Diffusion 1.5: see how tags split into CLIP "
        "tokens, compare tag forms against neighbour concepts, and rank trigger words."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Modules tagsmith/cli/<name>.py whose @app.command() functions make up the CLI, in the order
# their commands appear in --help. Importing them must stay cheap (no torch at module level).
COMMAND_MODULES: list[str] = [
    "tokenize_cmd",
    "embed_cmd",
    "suggest_cmd",
    "trigger_cmd",
    "score_cmd",
    "explore_cmd",
    "dataset_cmd",
]


def _print_version(value: bool) -> None:
    if value:
        from tagsmith import __version__

        typer.echo(f"tagsmith {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True,
        callback=_print_version,
    ),
) -> None:
    """Tokenizer-aware tag design for Stable Diffusion 1.5."""
