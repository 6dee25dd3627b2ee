"""`tagsmith explore`: the interactive ranking table (Textual, imported only when it runs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from tagsmith.cli._app import app
from tagsmith.cli._model_options import (
    ModelOptions,
    with_model_options,
)
from tagsmith.cli.suggest_cmd import (
    AvoidOption,
    CandidateOption,
    KeepOption,
    NeighborOption,
    VocabOption,
    WeightsOption,
)
from tagsmith.errors import InputError

ExploreTopOption = Annotated[
    int | None,
    typer.Option("--top", metavar="N", help="Show this many candidates (default: all).", min=1,
                 show_default=False),
]
ExportOption = Annotated[
    str,
    typer.Option("--export-to", metavar="PATH",
                 help="File name the export dialog (e) offers first."),
]


@app.command("explore")
@with_model_options
def explore_command(
    target: Annotated[str, typer.Argument(
        metavar="TAG_OR_FILE",
        help="A tag (\"mayonnaise bottle\") to rank its forms, a score file from "
        "tagsmith score (OUT.csv, OUT.jsonl, OUT.parquet), or a LoRA .safetensors to see "
        "tagsmith lora's table (with --model: what it moved).", show_default=False)],
    neighbor: NeighborOption = None,
    avoid: AvoidOption = None,
    keep: KeepOption = None,
    candidate: CandidateOption = None,
    vocab: VocabOption = None,
    top: ExploreTopOption = None,
    weights: WeightsOption = None,
    export_to: ExportOption = "marked-tags.txt",
    model_options: ModelOptions = ModelOptions(),
) -> None:
    """Explore a ranking in an interactive table: sort, filter, inspect token splits and
    neighbours, drill into suggest for any tag, mark tags and export them.

    Marked tags are printed on standard output when you quit, one per line, so
    `tagsmith explore scores.csv > picked.txt` keeps them.
    """
    from tagsmith.analysis.ranking import ScoreWeights
    from tagsmith.analysis.suggest import SuggestOptions
    from tagsmith.cli.tokenize_cmd import check_option_values as given
    from tagsmith.cli.tokenize_cmd import check_tag_arguments
    from tagsmith.tui.loaders import check_score_path, looks_like_lora_file, looks_like_score_file

    score_weights = ScoreWeights.parse(weights) if weights else ScoreWeights()
    # Bad option values fail here, not later inside the app; the model itself loads in the app.
    settings = model_options.settings()
    # Options that describe one tag apply to the tag given here; drill-downs get the rest.
    drill_options = SuggestOptions(
        vocab_path=vocab, top=top, weights=score_weights, cache_dir=model_options.cache_dir,
        use_cache=not model_options.no_cache,
    )
    if looks_like_lora_file(target):
        from tagsmith.model.lora import parse_lora_spec, without_loras
        from tagsmith.tui.app import LoraSource

        spec = parse_lora_spec(target)
        if not spec.path.is_file():
            raise InputError(f"There is no LoRA file at '{spec.path}'.")
        source: object = LoraSource(
            Path(target).expanduser(), without_loras(settings) if model_options.explicit else None,
            vocab,
        )
    elif looks_like_score_file(target):
        path = Path(target).expanduser()
        check_score_path(path)
        from tagsmith.tui.app import ScoreSource

        source = ScoreSource(path)
    else:
        check_tag_arguments([target])
        _refuse_other_files(target)
        from tagsmith.tui.app import SuggestSource

        source = SuggestSource(target, SuggestOptions(
            neighbors=given("--neighbor", neighbor), avoid=given("--avoid", avoid),
            keep=given("--keep", keep), candidates=given("--candidate", candidate),
            vocab_path=vocab, top=top, weights=score_weights,
            cache_dir=model_options.cache_dir, use_cache=not model_options.no_cache,
        ))
    _require_terminal()

    def load_model():  # noqa: ANN202 - (TagEmbedder | None, notice)
        from tagsmith.model.embedding import open_model

        return open_model(settings, explicit=model_options.explicit)

    from tagsmith.tui.app import ExploreApp

    explorer = ExploreApp(source, suggest_options=drill_options,  # type: ignore[arg-type]
                          model_loader=load_model, export_default=export_to)
    try:
        explorer.run()
    finally:
        # Whatever ended the app, what the user marked reaches stdout.
        for tag in explorer.marked:
            typer.echo(tag)
    if explorer.failure:
        from tagsmith.cli._console import err_console

        err_console.print(f"Error: {explorer.failure}", style="red", highlight=False, markup=False)
    if explorer.return_code not in (None, 0):
        raise typer.Exit(explorer.return_code or 1)


def _refuse_other_files(target: str) -> None:
    """An argument naming an existing file that is not a score file is a mistake, not a tag."""
    path = Path(target).expanduser()
    try:
        exists = path.exists()
    except (OSError, ValueError):  # a "tag" too long or odd to be a path
        return
    if exists:
        what = "a folder" if path.is_dir() else "a file"
        raise InputError(
            f"{target} is {what}, not a score file: explore opens what tagsmith score writes "
            "(.csv, .jsonl, .parquet), or ranks the forms of a tag given as text."
        )


def _require_terminal() -> None:
    # Textual draws on stderr and reads stdin; stdout stays free for the marked tags.
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        raise InputError(
            "tagsmith explore is interactive and needs a terminal on stdin and stderr; "
            "use tagsmith suggest or tagsmith score for output to files and pipes."
        )
