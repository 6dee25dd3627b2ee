"""`tagsmith embed`: tag vectors from the user's text encoder, for notebooks and scripts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from tagsmith.cli._app import app
from tagsmith.cli._model_options import (
    ModelOptions,
    print_model_notes,
    with_model_options,
)

_PREVIEW_ROWS = 20


@app.command("embed")
@with_model_options
def embed_command(
    tags: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[TAG]...", show_default=False,
            help="Tags to embed, Danbooru style (long_hair and long hair are the same tag).",
        ),
    ] = None,
    file: Annotated[
        Path | None,
        typer.Option(
            "--file", "-f", metavar="PATH", show_default=False,
            help="Also embed the tags in this file: one per line ('-' for stdin), a tagcomplete "
            "CSV or a WD14 selected_tags.csv.",
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", metavar="PATH", show_default=False,
            help="Write the vectors here: .npy (float32, one row per tag, input order) or .json.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print [{\"tag\", \"vector\"}, ...] to stdout.")
    ] = False,
    model_options: ModelOptions = ModelOptions(),
) -> None:
    """Embed tags with the model's text encoder (SD1.5 or SDXL); one row per tag, in input order."""
    from tagsmith.cli._console import console, err_console
    from tagsmith.errors import UsageError

    if output is not None and as_json:
        raise UsageError("Use either -o/--output or --json, not both.")
    if output is not None and output.suffix.lower() not in (".npy", ".json"):
        raise UsageError(f"The output file must end in .npy or .json, not '{output.name}'.")
    settings = model_options.settings()
    from tagsmith.cli.tokenize_cmd import check_tag_arguments

    given = check_tag_arguments(tags)
    if file is not None:
        given += _tags_from_file(file)
    if not given:
        raise UsageError("Give tags to embed as arguments or with --file.")

    from tagsmith.model.embedding import open_embedder
    from tagsmith.text.tokenizer import normalize_tag

    texts = [normalize_tag(t) for t in given]
    embedder = open_embedder(settings)
    try:
        vectors = _embed_with_progress(embedder, texts, err_console)
        info = embedder.model_info()
        computed = f"{info['dtype']} on {info['device']}" if embedder.loaded else "from cache"
        print_model_notes(embedder)
    finally:
        embedder.close()

    from tagsmith.text.display import shown

    header = shown(
        f"model {info['fingerprint']}  {info['label']}  {info['description']}  "
        f"clip skip {info['clip_skip']}  "
        f"{info['representation']}  {computed}"
        + (f"  context {info['context']!r}" if info["context"] else "")
    )
    if as_json:
        err_console.print(header, highlight=False, markup=False)
        _write_vectors_json(given, texts, vectors)
        return
    if output is not None:
        from tagsmith.fileio import atomic_writer

        if output.suffix.lower() == ".json":
            with atomic_writer(output, "w", encoding="utf-8") as fh:
                _write_vectors_json(given, texts, vectors, fh)
        else:
            import numpy as np

            with atomic_writer(output, "wb") as fh:
                np.save(fh, vectors)
        console.print(header, highlight=False, markup=False)
        typer.echo(shown(f"wrote {vectors.shape[0]} x {vectors.shape[1]} float32 to {output}"))
        return
    # rich wraps the long header between words at the terminal's width
    console.print(header, highlight=False, markup=False)
    _print_preview(console, given, vectors)


def _tags_from_file(path: Path) -> list[str]:
    from tagsmith.cli.tokenize_cmd import tags_from_file

    return [tag for _, tag in tags_from_file(path)]


def _embed_with_progress(embedder, texts: list[str], err_console):  # noqa: ANN001, ANN202
    from tagsmith.cli._progress import Progress

    with Progress(err_console, labels={"embed": "embedding"}) as bar:
        return embedder.embed(texts, progress=lambda done, total: bar.count("embed", done, total))


def _write_vectors_json(tags: list[str], texts: list[str], vectors, stream=None) -> None:  # noqa: ANN001
    from tagsmith.cli._json import dumps, write_json

    def encode(row) -> str:  # noqa: ANN001
        tag, text, vec = row
        # %.9g round-trips float32 exactly and keeps the file a third the size of repr(float64).
        numbers = ",".join(f"{x:.9g}" if math.isfinite(x) else "null" for x in vec.tolist())
        return f'{{"tag": {dumps(tag)}, "text": {dumps(text)}, "vector": [{numbers}]}}'

    write_json(zip(tags, texts, vectors), stream, encode=encode)


def _print_preview(console, tags: list[str], vectors) -> None:  # noqa: ANN001
    import numpy as np
    from rich.table import Table

    table = Table(box=None, pad_edge=False, show_edge=False)
    table.add_column("tag", overflow="fold")
    table.add_column("norm", justify="right")
    table.add_column("first values")
    for tag, vec in list(zip(tags, vectors))[:_PREVIEW_ROWS]:
        head = " ".join(f"{x:+.4f}" for x in vec[:4])
        table.add_row(tag, f"{float(np.linalg.norm(vec)):.3f}", head + " ...")
    console.print(table)
    extra = len(tags) - _PREVIEW_ROWS
    console.print(
        (f"... and {extra} more; " if extra > 0 else "")
        + f"{len(tags)} x {vectors.shape[1]} vectors; use -o out.npy or --json to get them.",
        highlight=False, markup=False,
    )
