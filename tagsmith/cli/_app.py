"""The typer application every command module registers on."""

from __future__ import annotations

import typer


def _plain_help_names() -> None:
    """Help shows what a user types: no ``<bool>`` beside flags, no ``<str>`` beside arguments
    and ``TAG`` rather than ``{tag}`` in the usage line (typer >= 0.2x writes those)."""
    try:
        from typer.core import TyperArgument, TyperOption
    except ImportError:  # an older typer writes none of them
        return
    option_type = getattr(TyperOption, "display_type_rich", None)
    if option_type is not None and not getattr(option_type, "_tagsmith", False):
        def flag_type(self, ctx):  # noqa: ANN001, ANN202
            if getattr(self, "is_flag", False) and self.metavar is None:
                return ""
            return option_type(self, ctx)

        flag_type._tagsmith = True  # type: ignore[attr-defined]
        TyperOption.display_type_rich = flag_type
    if hasattr(TyperArgument, "display_type_rich"):
        TyperArgument.display_type_rich = lambda self, ctx: None
    if hasattr(TyperArgument, "_usage_display_name"):
        def usage_name(self) -> str:  # noqa: ANN001
            name = self.metavar or self.name.upper()
            if name.startswith("["):  # the metavar says it all, e.g. [TAG]...
                return name
            name = name if self.required else f"[{name}]"
            return name + ("..." if self.nargs != 1 and not name.endswith("...") else "")

        TyperArgument._usage_display_name = usage_name
    _fold_long_option_names()


def _fold_long_option_names() -> None:
    """A long option name (``--underscores-as-spaces``) breaks onto a second line at 80 columns
    instead of being cut to ``--underscores-as-s…``."""
    try:
        from typer import rich_utils
    except ImportError:
        return
    for name in ("highlighter", "negative_highlighter"):
        inner = getattr(rich_utils, name, None)
        if inner is None or getattr(inner, "_tagsmith", False):
            continue

        def folding(text, _inner=inner):  # noqa: ANN001, ANN202
            out = _inner(text)
            out.overflow = "fold"
            return out

        folding._tagsmith = True  # type: ignore[attr-defined]
        setattr(rich_utils, name, folding)


_plain_help_names()

app = typer.Typer(
    name="tagsmith",
    help=(
        "Tokenizer-aware tag design for Stable Diffusion (SD1.5, SDXL: Pony, Illustrious, "
        "NoobAI): see how tags split into CLIP "
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
    "lora_cmd",
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
    """Tokenizer-aware tag design for Stable Diffusion (SD1.5 and SDXL)."""
