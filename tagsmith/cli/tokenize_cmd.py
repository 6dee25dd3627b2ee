"""`tagsmith tokenize`: how tags split into SD1.5 CLIP tokens."""

from __future__ import annotations

import typer

from tagsmith.cli._app import app


@app.command("tokenize")
def tokenize_command(
    tags: list[str] = typer.Argument(None, help="Tags to tokenize."),
) -> None:
    """Show how each tag splits into SD1.5 CLIP tokens."""
    from tagsmith.tokenizer import load_tokenizer

    tok = load_tokenizer()
    for t in tok.analyze_batch(tags or []):
        typer.echo(f"{t.tag}: {' | '.join(t.tokens)}")
