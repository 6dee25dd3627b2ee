"""`tagsmith trigger`: rank new trigger words (or part families) for a concept."""

from __future__ import annotations

from dataclasses import replace
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
from tagsmith.cli.suggest_cmd import (
    AvoidOption,
    CandidateOption,
    CsvOption,
    DatasetOption,
    JsonOption,
    NeighborOption,
    PlotOption,
    TopOption,
    VocabOption,
    WeightsOption,
    _num,
    heat_style,
)

PartOption = Annotated[
    list[str] | None,
    typer.Option(
        "--part",
        "-p",
        metavar="PART",
        help="A variant of the concept that gets its own trigger, e.g. "
        "a body part (repeatable): makes families such as cross-arm, cross-chest.",
        show_default=False,
    ),
]
HeldOutOption = Annotated[
    str | None,
    typer.Option(
        "--held-out",
        metavar="PART",
        help="A part never trained, to see how the family would "
        "generalise (default: the known word nearest the first part).",
        show_default=False,
    ),
]


@app.command("trigger")
@with_model_options
def trigger_command(
    concept: Annotated[str, typer.Argument(help='The concept, e.g. "cross tattoo".')],
    part: PartOption = None,
    held_out: HeldOutOption = None,
    avoid: AvoidOption = None,
    neighbor: NeighborOption = None,
    candidate: CandidateOption = None,
    vocab: VocabOption = None,
    top: TopOption = 8,
    weights: WeightsOption = None,
    dataset: DatasetOption = None,
    as_json: JsonOption = False,
    csv_path: CsvOption = None,
    plot: PlotOption = None,
    model_options: ModelOptions = ModelOptions(),
) -> None:
    """Rank new trigger words (or part families) for a concept.

    Good triggers reuse known tokens without colliding with strong or correlated tags; with
    --part, family members (cross-arm, cross-chest) must also stay distinct.
    """
    from tagsmith.analysis.trigger import TriggerOptions, rank_triggers
    from tagsmith.cli._console import console, err_console
    from tagsmith.cli.tokenize_cmd import check_option_values as given
    from tagsmith.cli.tokenize_cmd import check_tag_arguments
    from tagsmith.model.embedding import open_model

    check_tag_arguments([concept])
    avoid_tags = given("--avoid", avoid)
    if dataset is not None:
        from tagsmith.captions.cooccurrence import correlated_tags

        avoid_tags += correlated_tags(dataset, concept)
    base = TriggerOptions()
    options = TriggerOptions(
        parts=given("--part", part),
        held_out=None if held_out is None else given("--held-out", [held_out])[0],
        avoid=avoid_tags,
        neighbors=given("--neighbor", neighbor),
        candidates=given("--candidate", candidate),
        vocab_path=vocab,
        top=top,
        weights=_weights(weights, base.weights),
        cache_dir=model_options.cache_dir,
        use_cache=not model_options.no_cache,
    )
    settings = model_options.settings()
    from tagsmith.cli._progress import Progress

    with Progress(err_console) as status:
        status("looking for the text encoder")
        embedder, notice = open_model(settings, explicit=model_options.explicit)
        result = rank_triggers(
            concept, options, embedder=embedder, notices=model_notices(embedder, notice),
            progress=status, base=open_base_model(embedder),
        )
    if csv_path is not None:
        write_trigger_csv(csv_path, result)
    if plot is not None and result.has_similarity:
        from tagsmith.analysis.plot import plot_similarity

        rows, cols, m = trigger_matrix(result)
        plot_similarity(
            plot,
            rows,
            cols,
            m,
            title=f'tagsmith trigger "{result.text}"',
            highlight_row=0,
            col_roles=[n.role for n in result.neighbors],
        )
    if as_json:
        from tagsmith.cli._json import write_json

        write_json(result.to_dict())
    else:
        render_trigger(console, result)
    notes = list(result.notices)
    if embedder is not None:
        notes += [n for n in embedder.notes if n not in notes]
    for n in notes:
        err_console.print(f"Note: {n}", style="yellow", highlight=False, markup=False)


def _weights(spec: str | None, default: Any) -> Any:
    from tagsmith.analysis.ranking import ScoreWeights

    if not spec:
        return default
    given = ScoreWeights.parse(spec)
    changed = {k: v for k, v in vars(given).items() if v != getattr(ScoreWeights(), k)}
    return replace(default, **changed)


def trigger_matrix(result: Any) -> tuple[list[str], list[str], Any]:
    import numpy as np

    rows, values = [], []
    cols = [n.tag for n in result.neighbors]
    for fam in result.families:
        for m in fam.members + ([fam.held_out] if fam.held_out is not None else []):
            rows.append(m.form + (" (held out)" if m is fam.held_out else ""))
            values.append([m.similarity.get(c, np.nan) for c in cols])
    return rows, cols, np.array(values, dtype=np.float32).reshape(len(rows), len(cols))


def render_trigger(console: Any, result: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    from tagsmith.cli.tokenize_cmd import render_pieces

    header = Text()
    header.append("tagsmith trigger ", style="bold")
    header.append(result.text, style="bold cyan")
    if result.parts:
        header.append("  parts: " + ", ".join(result.parts), style="cyan")
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
    table = Table(header_style="bold", pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    # Each member and its tokens share one row of a grid, so that however narrow the terminal
    # and however the cells wrap, a token list stays beside the member it belongs to.
    table.add_column("trigger  ·  tokens", overflow="fold", ratio=3)
    if result.has_similarity:
        table.add_column("score", justify="right")
        if result.base is not None:
            table.add_column("base", justify="right", style="dim")
        table.add_column("apart", justify="right")
    table.add_column("reason", overflow="fold", ratio=2)
    for i, fam in enumerate(result.families, start=1):
        best = i == 1 and result.has_similarity
        members = Table.grid(padding=(0, 1))
        longest = max(len(m.form) for m in fam.members)
        members.add_column(overflow="fold", min_width=min(longest, 22))
        members.add_column(overflow="fold", ratio=1)
        for m in fam.members:
            members.add_row(Text(m.form, style="bold green" if best else ""),
                            render_pieces(m.candidate.tokens))
        if fam.held_out is not None:
            members.add_row(Text(f"{fam.held_out.form} (held out)", style="dim"),
                            render_pieces(fam.held_out.candidate.tokens))
        cells: list[Any] = [str(i), members]
        if result.has_similarity:
            cells.append(f"{fam.score:+.3f}")
            if result.base is not None:
                cells.append(base_cell(result.base.get(fam.to_dict()["form"])))
            cells.append("" if fam.separation is None else f"{fam.separation:.2f}")
        cells.append(Text(fam.reason, style="" if i == 1 else "dim"))
        table.add_row(*cells, end_section=True)
    console.print(table)
    if result.has_similarity and result.families:
        best = result.families[0]
        avoid = [n for n in result.neighbors if n.role == "avoid"]
        if avoid:
            _render_avoid(console, result, avoid)
        line = Text("Recommended: ", style="bold")
        line.append(", ".join(m.form for m in best.members), style="bold green")
        console.print(line)


def _render_avoid(console: Any, result: Any, avoid: list[Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title="similarity to --avoid tags (red: collides)",
        title_justify="left",
        header_style="bold",
        pad_edge=False,
    )
    table.add_column("trigger")
    for n in avoid:
        table.add_column(n.tag, justify="right")
    values = [
        [m.similarity.get(n.tag, 0.0) for n in avoid]
        for fam in result.families
        for m in fam.members
    ]
    flat = [v for row in values for v in row]
    lo, hi = (min(flat), max(flat)) if flat else (0.0, 1.0)
    k = 0
    for fam in result.families:
        for m in fam.members:
            table.add_row(
                m.form,
                *[
                    Text(f"{v:.2f}", style=heat_style(v, lo, hi, good_high=False))
                    for v in values[k]
                ],
            )
            k += 1
    console.print(table)


def write_trigger_csv(path: Path, result: Any) -> None:
    from tagsmith.fileio import write_csv

    rows: list[list[object]] = []
    cols = [n.tag for n in result.neighbors]
    header = (
        [
            "rank",
            "trigger",
            "member",
            "part",
            "tokens",
            "n_tokens",
            "family_score",
            "member_score",
            "separation",
            "reason",
            *[f"sim:{c}" for c in cols],
        ]
    )
    for i, fam in enumerate(result.families, start=1):
        for m in fam.members + ([fam.held_out] if fam.held_out is not None else []):
            rows.append(
                [
                    i,
                    fam.stem,
                    m.form,
                    m.candidate.part or "",
                    " ".join(m.candidate.tokens),
                    m.candidate.n_tokens,
                    _num(fam.score),
                    _num(m.score),
                    _num(fam.separation),
                    fam.reason,
                    *[_num(m.similarity.get(c)) for c in cols],
                ]
            )
    write_csv(path, header, rows)

