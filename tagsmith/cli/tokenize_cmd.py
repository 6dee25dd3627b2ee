"""`tagsmith tokenize`: how tags split into SD1.5 CLIP tokens."""

from __future__ import annotations

from pathlib import Path

import typer

from tagsmith.cli._app import app
from tagsmith.errors import InputError, UsageError

# Alternating piece colours: neighbouring pieces must be told apart at a glance.
PIECE_STYLES = ("bold cyan", "bold magenta", "bold green", "bold yellow")


def check_tag_arguments(tags: list[str] | None) -> list[str]:
    """Tag arguments as given; an empty one is a bad argument (exit 2) in every command."""
    for i, tag in enumerate(tags or [], start=1):
        if not tag.strip():
            raise UsageError(f"Tag {i} is empty; give a tag with at least one visible character.")
    return list(tags or [])


def check_option_values(option: str, values: list[str] | None) -> list[str]:
    """Values of a repeatable tag option; ``--candidate ""`` is refused, never ignored."""
    for value in values or []:
        if not value.strip():
            raise UsageError(f"{option} is empty; give it a tag with at least one visible "
                             "character, or leave the option out.")
    return list(values or [])


def gather_tags(tags: list[str] | None, file: Path | None) -> list[tuple[str, str]]:
    """(label, tag) pairs from arguments and --file, in order; labels name where a tag came from."""
    out: list[tuple[str, str]] = []
    for i, tag in enumerate(check_tag_arguments(tags), start=1):
        out.append((f"argument {i}", tag))
    if file is not None:
        out.extend(tags_from_file(file))
    if not out:
        if file is not None:
            raise InputError(f"{file} holds no tags (every line is blank).")
        raise UsageError("Give at least one tag, or --file PATH (- for standard input).")
    return out


def tags_from_file(path: Path) -> list[tuple[str, str]]:
    """(label, tag) of a ``--file``: one tag per line (``-``: standard input), or the tags of
    a tagcomplete or WD14 CSV, read as ``--vocab`` reads it (its bad rows named on stderr)."""
    from tagsmith.fileio import read_tag_lines

    if str(path) != "-":
        from tagsmith.errors import InputError
        from tagsmith.text.vocab import problem_lines, read_vocabulary

        try:
            vocab = read_vocabulary(path, underscores=True)
        except InputError:  # no tag list by --vocab's rules (prompts, say, or no file at
            vocab = None  # all): its lines, or what the line reader says is wrong
        if vocab is not None and vocab.format != "plain":
            from tagsmith.cli._console import err_console

            for line in problem_lines(vocab.problems):
                err_console.print(f"{path}: {line}", style="yellow", highlight=False,
                                  markup=False)
            return [(f"tag {i} of {path}", e.tag) for i, e in enumerate(vocab.entries, 1)]
    name = "standard input" if str(path) == "-" else str(path)
    # every line is a row of output, duplicates included, in file order
    return [(f"line {n} of {name}", line.strip()) for n, line in read_tag_lines(path)]


def render_pieces(tokens, *, start_style: int = 0):  # noqa: ANN001, ANN201 - rich Text
    """Colour-coded pieces; a dim `</w>` marks a piece that ends a word."""
    from rich.text import Text

    from tagsmith.text.tokenizer import WORD_END, piece_text

    text = Text()
    for i, piece in enumerate(tokens):
        if i:
            text.append(" ")
        text.append(piece_text(piece), style=PIECE_STYLES[(start_style + i) % len(PIECE_STYLES)])
        if piece.endswith(WORD_END):
            text.append(WORD_END, style="dim")
    return text


def render_words(analysis):  # noqa: ANN001, ANN201 - rich Text
    from rich.text import Text

    from tagsmith.text.tokenizer import piece_text

    text = Text()
    shown = [w for w in analysis.words if not w.is_punctuation]
    for i, word in enumerate(shown):
        if i:
            text.append("\n")
        if word.known:
            text.append(f"{word.text} ", style="green")
            text.append("known", style="dim green")
        else:
            split = "+".join(piece_text(p) for p in word.pieces)
            text.append(f"{word.text} ", style="yellow")
            text.append(f"split {split}", style="dim yellow")
    return text


@app.command("tokenize")
def tokenize_command(
    tags: list[str] = typer.Argument(
        None, help='Tags to tokenize, e.g. "mayonnaise bottle" cross-arm.', show_default=False
    ),
    file: Path = typer.Option(
        None,
        "--file",
        "-f",
        metavar="PATH",
        help="Read one tag per line from this file (- for standard input).",
        show_default=False,
    ),
    prompt: bool = typer.Option(
        False,
        "--prompt",
        "-p",
        help="Treat the input as one whole A1111 prompt: show its 75-token chunks and which tag "
        "crosses a chunk boundary.",
    ),
    keep_underscores: bool = typer.Option(
        None,
        "--keep-underscores/--underscores-as-spaces",
        help="Tokenize underscores as written, or turn Danbooru's `_` into spaces as "
        "tagcomplete inserts tags. Default: spaces for tags, as written for --prompt (A1111 "
        "sends `_` to CLIP as it is).",
        show_default=False,
    ),
    comments: bool = typer.Option(
        True,
        "--comments/--no-comments",
        help="--prompt: drop `#` comments to the end of the line, as A1111 >= 1.8 does by "
        "default.",
    ),
    steps: int = typer.Option(
        20, "--steps", min=1, metavar="N",
        help="--prompt: sampling steps, for prompt editing such as \\[from:to:0.5].",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON array, one object per tag."),
) -> None:
    """Show how each tag splits into SD1.5 CLIP tokens, and which words the model knows whole."""
    from tagsmith.cli._console import console, err_console

    pairs = gather_tags(tags, file)
    if prompt:
        texts = [t for _, t in pairs]
        if comments:
            # Each argument and line ends its own comments before they are joined.
            from tagsmith.text.prompt_editing import strip_comments

            texts = [c for c in (strip_comments(t) for t in texts) if c.strip()]
        _tokenize_prompt(
            ", ".join(texts), underscores=keep_underscores is False,
            comments=comments, steps=steps, as_json=as_json,
        )
        return
    underscores = not keep_underscores

    from tagsmith.text.prompt import analyze_tags, tag_warnings

    analyses = analyze_tags([t for _, t in pairs], underscores=underscores)
    from tagsmith.text.tokenizer import shorten

    warnings = []
    for (label, _), a in zip(pairs, analyses):
        # Shortened: a 300-token tag repeated in full would bury the sentence.
        if not a.ids:
            warnings.append(f"{label} ('{shorten(a.tag)}') is empty once prompt syntax is removed")
        warnings.extend(f"{label} ('{shorten(a.tag)}') {w}" for w in tag_warnings(a))

    if as_json:
        from tagsmith.cli._json import write_json

        write_json(a.to_dict() for a in analyses)
    else:
        from rich.table import Table
        from rich.text import Text

        table = Table(show_lines=True, header_style="bold", pad_edge=False)
        table.add_column("tag", overflow="fold", max_width=28)
        table.add_column("tokens (ids below)", overflow="fold")
        table.add_column("n", justify="right")
        table.add_column("words", overflow="fold")
        for a in analyses:
            shown = Text(a.tag)
            if a.text != a.tag:
                shown.append(f"\n→ {a.text}", style="dim")
            pieces = render_pieces(a.tokens)
            pieces.append("\n" + " ".join(map(str, a.ids)), style="dim")
            table.add_row(
                shown,
                pieces,
                Text(str(a.n_tokens), style="red" if a.n_tokens > 75 else ""),
                render_words(a),
            )
        console.print(table)
    for w in warnings:
        err_console.print(f"Warning: {w}.", style="yellow", highlight=False, markup=False)


def _tokenize_prompt(
    prompt: str, *, underscores: bool, comments: bool, steps: int, as_json: bool
) -> None:
    from rich.markup import escape
    from rich.table import Table

    from tagsmith.cli._console import console
    from tagsmith.text.prompt import layout_prompt

    layout = layout_prompt(prompt, underscores=underscores, comments=comments, steps=steps)
    if as_json:
        rows = []
        for t in layout.tags:
            rows.append(
                {
                    "tag": t.text,
                    "text": t.text,
                    "tokens": t.tokens,
                    "ids": t.ids,
                    "n_tokens": t.n_tokens,
                    "weight": round(t.weight, 4),
                    "multipliers": [round(m, 4) for m in t.multipliers],
                    "part": t.part,
                    "part_weight": layout.parts[t.part].weight,
                    "chunk": t.chunk,
                    "chunk_end": t.chunk_end,
                    "positions": [p for _, p in t.positions],
                    "crosses_boundary": t.crosses_boundary,
                    "scheduled": t.scheduled,
                }
            )
        from tagsmith.cli._json import write_json

        write_json(rows)
        _warn_prompt(layout)
        return
    total = layout.n_tokens
    console.print(
        f"[bold]{total}[/bold] tokens in [bold]{len(layout.chunks)}[/bold] chunk"
        f"{'s' if len(layout.chunks) != 1 else ''} of 75 (each encoded as BOS + 75 + EOS)"
    )
    parts = layout.parts
    if len(parts) > 1 or parts[0].weight != 1.0:
        for k, part in enumerate(parts):
            console.print(
                f"AND part {k + 1}: weight [bold]{part.weight:g}[/bold], "
                f"\"{escape(part.first_step.strip())}\"",
                highlight=False,
            )
    for ci, chunk in enumerate(layout.chunks):
        table = Table(
            title=f"chunk {ci + 1}: {chunk.length}/75 tokens"
            + (f" (AND part {chunk.part + 1})" if len(parts) > 1 else ""),
            title_justify="left",
            header_style="bold",
            pad_edge=False,
        )
        table.add_column("#", justify="right", style="dim")
        table.add_column("tag", overflow="fold")
        table.add_column("positions", justify="right")
        table.add_column("tokens", overflow="fold")
        table.add_column("weight", justify="right")
        for ti in chunk.tag_indices:
            t = layout.tags[ti]
            own = [(c, p) for c, p in t.positions if c == ci]
            toks = [tok for tok, (c, _) in zip(t.tokens, t.positions) if c == ci]
            note = ""
            if t.crosses_boundary:
                note = (
                    f"\n[red]crosses into chunk {t.chunk_end + 1}[/red]"
                    if t.chunk == ci
                    else (f"\n[red]continued from chunk {t.chunk + 1}[/red]")
                )
            table.add_row(
                str(ti + 1),
                escape(t.text) + note,
                f"{own[0][1] + 1}-{own[-1][1] + 1}" if len(own) > 1 else str(own[0][1] + 1),
                render_pieces(toks),
                _weight_text(t),
            )
        console.print(table)
    _warn_prompt(layout)
    scheduled = [t.text for t in layout.tags if t.scheduled]
    if scheduled:
        console.print(
            "[dim]Prompt-editing branches not in the first step (not laid out): "
            + escape(", ".join(scheduled))
            + "[/dim]"
        )


def _weight_text(tag) -> str:  # noqa: ANN001 - PromptTag
    """The tag's multiplier, or the range of its tokens' multipliers where they differ."""
    low, high = min(tag.multipliers, default=1.0), max(tag.multipliers, default=1.0)
    if abs(high - low) > 1e-9:
        return f"{low:.2f}-{high:.2f}"
    return f"{tag.weight:.2f}" if abs(tag.weight - 1.0) > 1e-9 else ""


def _warn_prompt(layout) -> None:  # noqa: ANN001
    from tagsmith.cli._console import err_console

    for k, part in enumerate(layout.parts):
        if part.literal and "[" in part.text:
            err_console.print(
                f"Warning: A1111's prompt-editing grammar rejects part {k + 1} (a bare `|`, a "
                "`:` inside [a|b], or [a|b:0.5]), so none of its [...] edits apply: it is "
                "encoded literally, brackets read as emphasis.",
                style="yellow", highlight=False, markup=False,
            )

    for t in (t for t in layout.tags if t.crosses_boundary):
        err_console.print(
            f"Warning: '{t.text}' is split between chunk {t.chunk + 1} and chunk "
            f"{t.chunk_end + 1}; SD encodes the two halves separately. Move it or add BREAK "
            "before it.",
            style="yellow",
            highlight=False,
            markup=False,
        )
