"""`tagsmith suggest`: rank the forms of a tag against the concepts it could leak into."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from tagsmith.cli._app import app
from tagsmith.cli._model_options import (
    ModelOptions,
    base_cell,
    lora_label,
    model_notices,
    open_base_model,
    with_model_options,
)

NeighborOption = Annotated[
    list[str] | None,
    typer.Option(
        "--neighbor",
        "-n",
        metavar="TAG",
        help="A concept the tag may be confused with (repeatable).",
        show_default=False,
    ),
]
AvoidOption = Annotated[
    list[str] | None,
    typer.Option(
        "--avoid",
        "-a",
        metavar="TAG",
        help="A correlated tag the new form must not collide with, e.g. "
        "the character it co-occurs with (repeatable).",
        show_default=False,
    ),
]
KeepOption = Annotated[
    list[str] | None,
    typer.Option(
        "--keep",
        "-k",
        metavar="TAG",
        help="What the tag must still mean, e.g. mayonnaise "
        "(repeatable; default: the tag's distinctive words).",
        show_default=False,
    ),
]
CandidateOption = Annotated[
    list[str] | None,
    typer.Option(
        "--candidate",
        "-c",
        metavar="FORM",
        help="Another form to rank (repeatable).",
        show_default=False,
    ),
]
VocabOption = Annotated[
    Path | None,
    typer.Option(
        "--vocab",
        metavar="PATH",
        envvar="TAGSMITH_VOCAB",
        help="Tag list: tagcomplete's CSV (tags/danbooru.csv in its extension folder), a "
        "WD14 selected_tags.csv, or one tag per line. Default: $TAGSMITH_VOCAB.",
        show_default=False,
    ),
]
TopOption = Annotated[
    int, typer.Option("--top", metavar="N", help="Show this many candidates.", min=1)
]
SubstituteTopOption = Annotated[
    int,
    typer.Option(
        "--top", metavar="N", min=1,
        help="Show this many substituted forms; the tag's own spaced, hyphen, underscore and "
        "joined forms and every --candidate are always shown, ranked in place.",
    ),
]
WeightsOption = Annotated[
    str | None,
    typer.Option(
        "--weights",
        metavar="SPEC",
        help="Score weights, e.g. 'leakage=1.5,tokens=0' (names: fidelity, "
        "leakage, avoid, reuse, tokens).",
        show_default=False,
    ),
]
DatasetOption = Annotated[
    Path | None,
    typer.Option(
        "--dataset",
        metavar="DIR",
        help="A kohya caption folder: tags that co-occur with this tag there are added as --avoid.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")]
CsvOption = Annotated[
    Path | None,
    typer.Option(
        "--csv",
        metavar="PATH",
        help="Also write candidates x neighbours to this CSV file.",
        show_default=False,
    ),
]
PlotOption = Annotated[
    Path | None,
    typer.Option(
        "--plot",
        metavar="PATH",
        help="Also write the similarity matrix as a picture (.png/.svg/.pdf).",
        show_default=False,
    ),
]

ROLE_STYLE = {"keep": "green", "avoid": "red", "leak": "yellow"}


@app.command("suggest")
@with_model_options
def suggest_command(
    tag: Annotated[str, typer.Argument(help='The tag to design, e.g. "mayonnaise bottle".')],
    neighbor: NeighborOption = None,
    avoid: AvoidOption = None,
    keep: KeepOption = None,
    candidate: CandidateOption = None,
    vocab: VocabOption = None,
    top: SubstituteTopOption = 10,
    weights: WeightsOption = None,
    dataset: DatasetOption = None,
    as_json: JsonOption = False,
    csv_path: CsvOption = None,
    plot: PlotOption = None,
    model_options: ModelOptions = ModelOptions(),
) -> None:
    """Rank the forms of a tag: keep its meaning, don't leak into neighbours.

    Forms: spaced, hyphenated, underscore, joined, and substitutions by nearby known words.
    """
    from tagsmith.analysis.ranking import ScoreWeights
    from tagsmith.analysis.suggest import SuggestOptions, suggest
    from tagsmith.cli._console import console, err_console
    from tagsmith.cli.tokenize_cmd import check_option_values as given
    from tagsmith.cli.tokenize_cmd import check_tag_arguments
    from tagsmith.model.embedding import open_model

    check_tag_arguments([tag])
    avoid_tags = given("--avoid", avoid)
    if dataset is not None:
        avoid_tags += _dataset_avoid(dataset, tag)
    options = SuggestOptions(
        neighbors=given("--neighbor", neighbor),
        avoid=avoid_tags,
        keep=given("--keep", keep),
        candidates=given("--candidate", candidate),
        vocab_path=vocab,
        top=top,
        weights=ScoreWeights.parse(weights) if weights else ScoreWeights(),
        cache_dir=model_options.cache_dir,
        use_cache=not model_options.no_cache,
    )
    settings = model_options.settings()
    from tagsmith.cli._progress import Progress

    with Progress(err_console) as status:
        status("looking for the text encoder")
        embedder, notice = open_model(settings, explicit=model_options.explicit)
        result = suggest(
            tag, options, embedder=embedder, notices=model_notices(embedder, notice),
            progress=status, base=open_base_model(embedder),
        )
    if csv_path is not None:
        write_suggest_csv(csv_path, result)
    if plot is not None and result.has_similarity:
        from tagsmith.analysis.plot import plot_similarity

        rows, cols, m = result.similarity_matrix()
        roles = [n.role for n in result.neighbors]
        plot_similarity(
            plot,
            rows,
            cols,
            m,
            title=f'tagsmith suggest "{result.text}": centred cosine (0 = the model\'s mean '
                  'tag; colour by role)',
            highlight_row=0,
            col_roles=roles,
            row_scores=[rc.score for rc in result.candidates],
            centre=result.baseline.median if result.baseline is not None else 0.0,
        )
    if as_json:
        from tagsmith.cli._json import write_json

        write_json(result.to_dict())
    else:
        render_suggest(console, result)
    notes = list(result.notices)
    if embedder is not None:
        notes += [n for n in embedder.notes if n not in notes]
    for n in notes:
        err_console.print(f"Note: {n}", style="yellow", highlight=False, markup=False)
    if plot is not None and not result.has_similarity:
        err_console.print(
            "Note: no plot written: the similarity matrix needs a model.",
            style="yellow",
            highlight=False,
        )


def _dataset_avoid(dataset: Path, tag: str) -> list[str]:
    from tagsmith.captions.cooccurrence import correlated_tags

    return correlated_tags(dataset, tag)


def heat_style(value: float, lo: float, hi: float, *, good_high: bool) -> str:
    """A background colour for a similarity: red where it hurts, green where it helps."""
    t = 0.5 if hi - lo < 1e-9 else (value - lo) / (hi - lo)
    t = t if good_high else 1 - t
    # 0 -> red, 0.5 -> amber, 1 -> green
    r = int(200 * (1 - max(0.0, t - 0.5) * 2)) + 40
    g = int(200 * min(1.0, t * 2)) + 40
    return f"black on rgb({min(r, 255)},{min(g, 255)},60)"


def render_suggest(console: Any, result: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    from tagsmith.cli.tokenize_cmd import render_pieces

    header = Text()
    header.append("tagsmith suggest ", style="bold")
    header.append(result.text, style="bold cyan")
    if result.model:
        m = result.model
        header.append(
            f"\nmodel {m.get('label', '?')} {m.get('source', '?')} · fingerprint "
            f"{str(m.get('fingerprint', ''))[:12]}"
            f" · clip skip {m.get('clip_skip')} · {m.get('representation')} vectors"
            f"{lora_label(m)}",
            style="dim",
        )
    if result.vocabulary:
        header.append(f"\nvocabulary: {result.vocabulary}", style="dim")
    if result.baseline is not None:
        header.append(f"\n{result.baseline.describe()}", style="dim")
    console.print(header)

    table = Table(header_style="bold", pad_edge=False, expand=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("form", overflow="fold", min_width=12)
    table.add_column("tokens", overflow="fold")
    table.add_column("n", justify="right")
    if result.has_similarity:
        table.add_column("score", justify="right")
    if result.base is not None:
        table.add_column("base", justify="right", style="dim")
    table.add_column("reason", overflow="fold", ratio=1)
    for i, rc in enumerate(result.candidates, start=1):
        c = rc.candidate
        form = Text(c.form, style="bold green" if i == 1 and result.has_similarity else "")
        if c.known:
            form.append(" ✓", style="green")
        cells = [str(i), form, render_pieces(c.tokens), str(c.n_tokens)]
        if result.has_similarity:
            cells.append(f"{rc.score:+.3f}")
        if result.base is not None:
            cells.append(base_cell(result.base.get(c.form)))
        cells.append(Text(rc.reason, style="dim" if i > 1 else ""))
        table.add_row(*cells)
    console.print(table)

    if result.has_similarity:
        _render_matrix(console, result)
        best = result.recommended
        if best is not None:
            line = Text("Recommended: ", style="bold")
            line.append(best.form, style="bold green")
            line.append(f" — {best.reason}")
            console.print(line)
    else:
        console.print(Text("✓ = every word is one known whole-word token", style="dim"))
        if result.neighbors:
            line = Text("Neighbour concepts: ", style="bold")
            for i, n in enumerate(result.neighbors):
                if i:
                    line.append(", ")
                line.append(n.tag, style=ROLE_STYLE.get(n.role, ""))
                extra = [n.role] + ([f"{n.count:,} posts"] if n.count is not None else [])
                line.append(f" ({', '.join(extra)})", style="dim")
            console.print(line)


def _render_matrix(console: Any, result: Any) -> None:
    """Neighbours down, the best forms across, heat-coloured cosines."""
    from rich.table import Table
    from rich.text import Text

    width = console.width or 100
    # Numbers and post counts never shrink into an ellipsis ("-0.…"): the neighbour's name is
    # the column that gives way, and as many forms are shown as fit beside a 14-wide name.
    posts_width = max([len(f"{n.count:,}") for n in result.neighbors if n.count is not None],
                      default=0)
    posts_width = max(5, posts_width)
    role_width = 12  # "leak·nearest"
    fixed = 1 + (posts_width + 3) + (role_width + 3) + 3  # borders and padding included
    n_forms = max(1, min(len(result.candidates), (width - fixed - 14) // 8, 6))
    name_width = max(8, min(26, width - fixed - 8 * n_forms))
    forms = result.candidates[:n_forms]
    table = Table(
        title="similarity (centred cosine: 0 = unrelated in this model), top forms by rank "
              "(green helps, red hurts)",
        title_justify="left",
        header_style="bold",
        pad_edge=False,
    )
    table.add_column("neighbour", no_wrap=True, overflow="ellipsis", max_width=name_width)
    table.add_column("posts", justify="right", style="dim", no_wrap=True, min_width=posts_width)
    table.add_column("role", no_wrap=True, max_width=role_width, overflow="ellipsis")
    for i in range(1, len(forms) + 1):
        table.add_column(f"#{i}", justify="right", no_wrap=True, min_width=5)
    for n in result.neighbors:
        values = [rc.similarity.get(n.tag) for rc in forms]
        finite = [v for v in values if v is not None]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        label = Text(n.tag)
        posts = f"{n.count:,}" if n.count is not None else ""
        role = Text(
            n.role if n.source not in ("part", "nearest") else f"{n.role}·{n.source}",
            style=ROLE_STYLE.get(n.role, ""),
        )
        cells = [
            Text(f"{v:.2f}", style=heat_style(v, lo, hi, good_high=n.role == "keep"))
            if v is not None
            else Text("")
            for v in values
        ]
        table.add_row(label, posts, role, *cells)
    console.print(table)


def write_suggest_csv(path: Path, result: Any) -> None:
    from tagsmith.fileio import write_csv

    rows: list[list[object]] = []
    neigh = [n.tag for n in result.neighbors]
    header = (
        [
            "rank",
            "form",
            "kind",
            "tokens",
            "n_tokens",
            "known",
            "score",
            "fidelity",
            "leakage",
            "avoid",
            "reason",
            *[f"sim:{t}" for t in neigh],
        ]
    )
    for i, rc in enumerate(result.candidates, start=1):
        d = rc.to_dict()
        rows.append(
            [
                i,
                d["form"],
                d["kind"],
                " ".join(d["tokens"]),
                d["n_tokens"],
                d["known"],
                _num(d["score"]),
                _num(d["fidelity"]),
                _num(d["leakage"]),
                _num(d["avoid"]),
                d["reason"],
                *[_num(rc.similarity.get(t)) for t in neigh],
            ]
        )
    write_csv(path, header, rows)


def _num(v: float | None) -> str:
    return "" if v is None else f"{v:.6f}"
