"""`tagsmith score`: token split and leakage risk of every tag of a vocabulary."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tagsmith.cli._app import app
from tagsmith.cli._model_options import (
    ModelOptions,
    with_model_options,
)

PHASE_LABELS = {"tokenize": "tokenize", "encode": "encode", "neighbors": "neighbours"}


@app.command("score")
@with_model_options
def score_command(
    vocab: Annotated[
        Path | None,
        typer.Argument(
            show_default=False, metavar="VOCAB",
            help="Tag list: tagcomplete CSV, WD14 selected_tags.csv or one tag per line "
            "(gzip OK). Default: $TAGSMITH_VOCAB.",
        ),
    ] = None,
    output: Annotated[
        Path,
        typer.Option("--output", "-o", metavar="OUT",
                     help="Score file to write (.csv, .jsonl or .parquet)."),
    ] = ...,  # type: ignore[assignment]
    fmt: Annotated[
        str | None,
        typer.Option("--format", "-f", show_default=False, metavar="csv|jsonl|parquet",
                     help="Output format (default: from OUT's extension)."),
    ] = None,
    neighbors: Annotated[
        int, typer.Option("--neighbors", "-k", min=1, max=100, metavar="K",
                          help="Nearest tags listed per tag."),
    ] = 5,
    min_count: Annotated[
        int | None,
        typer.Option("--min-count", min=0, show_default=False, metavar="N",
                     help="Skip tags with fewer posts (tags without a count are kept)."),
    ] = None,
    category: Annotated[
        list[str] | None,
        typer.Option("--category", "-c", show_default=False, metavar="CAT",
                     help="Only these categories: a number or a name (Danbooru lists: general, "
                     "artist, copyright, character, meta; e621 lists also species, invalid, "
                     "lore), repeatable or comma-separated."),
    ] = None,
    numbering: Annotated[
        str,
        typer.Option("--numbering", metavar="auto|danbooru|e621",
                     help="Whose category numbers the list uses; auto: e621 when the file is "
                     "named so or uses 6, 7 or 8, else Danbooru."),
    ] = "auto",
    limit: Annotated[
        int | None,
        typer.Option("--limit", "-n", min=1, show_default=False, metavar="N",
                     help="Score only the first N tags left after the filters (a tagcomplete "
                     "list is sorted by post count, so: the N most used)."),
    ] = None,
    top: Annotated[
        int, typer.Option("--top", min=0, metavar="N", help="Riskiest tags shown in the summary."),
    ] = 15,
    model_options: ModelOptions = ModelOptions(),
) -> None:
    """Score every tag of a vocabulary: token split, nearest tags, and leakage risk towards
    more frequent tags that share its head token. Writes one row per tag to OUT."""
    from tagsmith.analysis.score import parse_categories, score_vocabulary
    from tagsmith.analysis.score_io import _pyarrow, format_for_path
    from tagsmith.cli._console import console, err_console
    from tagsmith.errors import UsageError
    from tagsmith.model.embedding import open_model
    from tagsmith.text.vocab import default_vocab_path, read_vocabulary

    path = vocab or default_vocab_path()
    if path is None:
        raise UsageError("Give a vocabulary file, or set TAGSMITH_VOCAB to one.")
    # Everything that could fail at the end is checked before a long run starts.
    if output.is_dir():
        raise UsageError(f"{output} is a folder; give a file name to write the scores to.")
    out_format = format_for_path(output, fmt)
    if out_format == "parquet":
        _pyarrow()
    out_parent = output.parent if str(output.parent) else Path(".")
    if not out_parent.is_dir():
        raise UsageError(f"Cannot write {output}: the folder {out_parent} does not exist.")
    numbering = numbering.lower()
    if numbering not in ("auto", "danbooru", "e621"):
        raise UsageError(f"--numbering {numbering!r} is not one of auto, danbooru, e621.")
    for scheme in ("danbooru", "e621"):  # a name unknown to both fails before any reading
        try:
            parse_categories(category or [], scheme)
            break
        except UsageError:
            if scheme == "e621":
                raise

    from tagsmith.cli._progress import Progress

    with Progress(err_console) as step:
        step(f"reading the vocabulary {path.name}")
        vocabulary = read_vocabulary(path)
    err_console.print(vocabulary.summary() + ".", highlight=False, markup=False)
    for note in vocabulary.notes:
        err_console.print(f"Note: {note}", highlight=False, markup=False)
    _print_problems(err_console, vocabulary.problems)
    if numbering == "auto":
        numbering = vocabulary.numbering
    categories = parse_categories(category or [], numbering)

    settings = model_options.settings()
    with Progress(err_console) as step:
        step("looking for the text encoder")
        embedder, notice = open_model(settings, explicit=model_options.explicit)
    if notice:
        err_console.print(f"Note: {notice}", style="yellow", highlight=False, markup=False)

    from tagsmith.text.vocab_index import vocabulary_token_ids

    with Progress(err_console) as step:
        # the vocabulary index suggest caches: a repeat run tokenizes nothing
        step("reading the vocabulary's token ids")
        token_ids = vocabulary_token_ids(vocabulary, cache_dir=settings.cache_dir,
                                         use_cache=not model_options.no_cache)
    try:
        with Progress(err_console, labels=PHASE_LABELS) as bars:
            result = score_vocabulary(
                vocabulary, embedder, k=neighbors, min_count=min_count,
                categories=categories or None, limit=limit, progress=bars.count,
                token_ids=token_ids, numbering=numbering,
            )
    except KeyboardInterrupt:
        if embedder is not None and not model_options.no_cache:
            err_console.print(
                "Stopped. Vectors already computed are in the embedding cache: run the same "
                f"command again to resume. {output} was not written.",
                style="yellow", highlight=False, markup=False,
            )
        raise
    finally:
        if embedder is not None:
            embedder.close()
    for note in (embedder.notes if embedder is not None else []):
        err_console.print(f"Note: {note}", highlight=False, markup=False)
    from tagsmith.analysis.score_io import write_scores

    write_scores(result.rows, output, out_format, summary=result.summary)
    _print_summary(console, result, output, top)


def _print_problems(err_console: Any, problems: list) -> None:
    from tagsmith.text.vocab import problem_lines

    for line in problem_lines(problems):
        err_console.print(f"  {line}", highlight=False, markup=False, style="yellow")


def _fmt(x: float | None, spec: str = ".3f") -> str:
    return "-" if x is None else format(x, spec)


def _print_summary(console: Any, result: Any, output: Path, top: int) -> None:
    from rich.table import Table

    from tagsmith.text.tokenizer import normalize_tag

    s = result.summary
    pct = 100 * s.n_split / s.n_tags if s.n_tags else 0
    lines = [
        f"Scored {_tags(s.n_tags)} -> {output}",
        # Short enough for 80 columns with six-figure counts.
        f"  {_tags(s.n_split)} ({pct:.1f}%) split a word into sub-word pieces; "
        f"{s.n_tags - s.n_split:,} {'does' if s.n_tags - s.n_split == 1 else 'do'} not.",
    ]
    if s.model:
        lines.insert(1, f"  model {s.model.get('label', '?')} {s.model.get('source', '?')} · "
                        f"clip skip {s.model.get('clip_skip')}")
    if s.filtered_out:
        lines.append(f"  {_tags(s.filtered_out)} left out by --min-count/--category/--limit.")
    if s.timings:
        lines.append("  time: " + ", ".join(
            f"{PHASE_LABELS.get(k, k)} {v:.1f}s" for k, v in s.timings.items()
        ))
    if s.baseline:
        b = s.baseline
        lines.append(f"  similarity: centred cosine, baseline of {b['reference']} (random pair "
                     f"{b['random_pairs']['median']:.2f}, top 1% > {b['random_pairs']['p99']:.2f})")
    console.print("\n".join(lines), highlight=False, markup=False)
    rows = s.riskiest[:top]
    if not rows:
        return
    with_model = s.model is not None
    title = (
        "Riskiest tags: close to a much more frequent tag sharing their head token"
        if with_model else
        "Tags most dominated by a frequent tag sharing their head token (no model: no similarity)"
    )
    table = Table(title=title, title_justify="left", show_lines=False)
    # Token splits are long: in a narrow terminal they would squeeze every other column.
    show_tokens = console.width >= 110
    table.add_column("tag", overflow="fold")
    table.add_column("posts", justify="right")
    if show_tokens:
        table.add_column("tokens", overflow="fold")
    table.add_column("shares head token with", overflow="fold")
    table.add_column("its posts", justify="right")
    if with_model:
        table.add_column("leak sim", justify="right")
        table.add_column("risk", justify="right")
    for r in rows:
        cells = [r.text, _fmt(r.count, ",")]
        if show_tokens:
            cells.append(" | ".join(r.tokens))
        cells += [normalize_tag(r.shares_token_with), _fmt(r.shares_token_count, ",")]
        if with_model:
            cells += [_fmt(r.leak_similarity), _fmt(r.leak_risk)]
        table.add_row(*cells)
    console.print(table)


def _tags(n: int) -> str:
    return f"{n:,} tag{'s' if n != 1 else ''}"
