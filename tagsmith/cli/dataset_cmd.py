"""`tagsmith dataset` and `tagsmith retag`: entangled tags in a caption folder, and safe renames."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from tagsmith.cli._app import app
from tagsmith.cli._model_options import (
    ModelOptions,
    print_model_notes,
    with_model_options,
)
from tagsmith.errors import UsageError

DIFF_FILES_BEFORE_WRITE = 20  # a real run shows this many files' diffs; --dry-run shows all


def _print_json(data: object) -> None:
    from tagsmith.cli._json import write_json

    write_json(data)


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%" if x >= 0.1 or x == 0 else f"{100 * x:.1f}%"


def _open_embedder(settings):  # noqa: ANN001, ANN202 - EncoderSettings -> TagEmbedder
    from tagsmith.model.embedding import open_embedder

    return open_embedder(settings)


class _LazyEmbed:
    """Opens the text encoder on first use (only when there are clusters to check), and turns
    "no model here" into a notice instead of a failure."""

    def __init__(self, settings) -> None:  # noqa: ANN001 - EncoderSettings
        self.settings = settings
        self.notice: str | None = None
        self.embedder = None

    def __call__(self, texts: list[str]):  # noqa: ANN204 - numpy array or None
        from tagsmith.errors import ModelNotFoundError

        if self.notice is not None:
            return None
        if self.embedder is None:
            try:
                self.embedder = _open_embedder(self.settings)
            except ModelNotFoundError as exc:
                self.notice = f"{exc} The model column is skipped."
                return None
        return self.embedder.embed(texts)

    def baseline(self):  # noqa: ANN201 - Baseline or None
        """The model's baseline (the shipped common tags), once the model is open."""
        from tagsmith.model.calibration import model_baseline

        return model_baseline(self.embedder) if self.embedder is not None else None

    def close(self) -> None:
        if self.embedder is not None and hasattr(self.embedder, "close"):
            self.embedder.close()


@app.command("dataset")
@with_model_options
def dataset_command(
    directory: Path = typer.Argument(
        ..., help="Dataset folder: images with .txt/.caption captions, kohya N_name folders.",
        show_default=False, metavar="DIR",
    ),
    keep_tokens: int = typer.Option(
        0, "--keep-tokens", "-k", min=0, metavar="N",
        help="kohya's keep_tokens: the first N comma-separated tags stay in place when "
        "shuffle_caption shuffles the rest.",
    ),
    max_token_length: int = typer.Option(
        75, "--max-token-length", metavar="N",
        help="kohya's max_token_length: 75 (its default), 150 or 225 tokens per caption.",
    ),
    keep_tokens_separator: str = typer.Option(
        "", "--keep-tokens-separator", metavar="SEP",
        help="kohya's keep_tokens_separator (e.g. '|||'): tags before it stay fixed, tags after "
        "a second one form a fixed suffix; keep_tokens is ignored in captions that hold it.",
        show_default=False,
    ),
    min_support: int = typer.Option(
        None, "--min-support", min=1, show_default=False, metavar="N",
        help="Captions a pair must share to be ranked (default: 3, or 1% of captions if more).",
    ),
    min_score: float = typer.Option(
        0.3, "--min-score", min=-1.0, max=1.0, metavar="SCORE",
        help="Lowest pair score (NPMI, discounted for small counts) reported as entangled.",
    ),
    max_q: float = typer.Option(
        0.05, "--max-q", min=0.0, max=1.0, metavar="Q",
        help="False discovery rate for pairs (Benjamini-Hochberg); 1 keeps pairs that could be "
        "chance.",
    ),
    top: int = typer.Option(25, "--top", "-n", min=1, metavar="N", help="Rows per table."),
    no_model: bool = typer.Option(
        False, "--no-model", help="Skip the text encoder (no embedding column in clusters).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON."),
    model_options: ModelOptions = ModelOptions(),
) -> None:
    """Tag statistics, token budgets, and tags entangled in the captions and in the model."""
    from tagsmith.captions.files import load_dataset
    from tagsmith.captions.report import report_from_dataset
    from tagsmith.cli._console import err_console

    if max_token_length not in (75, 150, 225):
        raise UsageError("--max-token-length must be 75, 150 or 225 (kohya's choices).")
    embed = None
    if not no_model:
        # Checked now, so a bad option fails even when no cluster needs the model.
        embed = _LazyEmbed(model_options.settings())
    from tagsmith.cli._progress import Progress

    try:
        with Progress(err_console) as step:
            step(f"reading the captions in {directory}")
            ds = load_dataset(directory)
            step(f"counting tags and pairs in {len(ds.captions):,} captions")
            report = report_from_dataset(
                ds, keep_tokens=keep_tokens, min_support=min_support, min_score=min_score,
                max_q=max_q, embed=embed, max_token_length=max_token_length,
                keep_tokens_separator=keep_tokens_separator,
                baseline=embed.baseline if embed is not None else None,
            )
    finally:
        if embed is not None:
            embed.close()
    notice = embed.notice if embed is not None else None
    if notice:
        report.embedding_note = notice
    if embed is not None and embed.embedder is not None:
        print_model_notes(embed.embedder)
        err_console.print(f"model {embed.embedder.label()} {embed.embedder.source.spec}",
                          style="dim", highlight=False, markup=False)
    if as_json:
        _print_json(report.to_dict())
    else:
        _print_report(report, top=top)
    if notice:
        err_console.print(f"Note: {notice}", style="yellow", highlight=False, markup=False)


def _print_report(report, *, top: int) -> None:  # noqa: ANN001 - DatasetReport
    from rich.table import Table
    from rich.text import Text

    from tagsmith.cli._console import console
    from tagsmith.model.calibration import percentile_label, top_share

    n = report.n_captions
    head = Text()
    head.append(f"{report.root}", style="bold")
    head.append(f": {n} caption{'s' if n != 1 else ''} for {report.n_images} images")
    if any(r.folder != "." or r.repeats != 1 for r in report.repeat_folders):
        folders = ", ".join(
            f"{r.folder} ×{r.repeats} ({r.captions})" for r in report.repeat_folders
        )
        head.append(f"; repeats: {folders}")
    console.print(head)
    if report.weighted:
        console.print(
            Text(
                "Repeats differ, so per-epoch shares, pair strengths and shuffled cut rates are "
                "weighted by repeats; counts and minimum supports are in captions.",
                style="dim",
            )
        )
    for note in report.notes:
        console.print(Text(f"• {note}.", style="yellow"))

    # Tags.
    table = Table(title="Tags", title_justify="left", header_style="bold", pad_edge=False)
    table.add_column("tag", overflow="fold")
    table.add_column("captions", justify="right")
    table.add_column("share", justify="right")
    if report.weighted:
        table.add_column("per epoch", justify="right")
    table.add_column("tokens", justify="right")
    shown = report.tags[:top]
    # An empty column still costs its header's width: at 80 columns that squeezes the tags.
    show_cut = any(t.cut_rate_file_order or t.cut_rate_shuffled for t in shown)
    if show_cut:
        table.add_column("cut (as written / shuffled)", justify="right")
    table.add_column("written as", overflow="fold", style="dim")
    for t in shown:
        row = [t.tag, str(t.captions), _pct(t.share)]
        if report.weighted:
            row.append(_pct(t.weighted_share))
        row.append(str(t.n_tokens))
        if show_cut:
            row.append(f"{_pct(t.cut_rate_file_order)} / {_pct(t.cut_rate_shuffled)}"
                       if t.cut_rate_file_order or t.cut_rate_shuffled else "")
        row.append(" | ".join(t.forms) if t.forms != [t.tag] else "")
        table.add_row(*[Text(c) for c in row])
    console.print(table)
    if len(report.tags) > top:
        console.print(Text(f"… {len(report.tags) - top} more tags (--top, --json)", style="dim"))
    if report.always_present:
        console.print(
            Text.assemble(
                ("In every caption: ", "bold"), ", ".join(report.always_present),
                (" — entangled with everything the LoRA learns (usually the trigger).", "dim"),
            )
        )

    # Tokens.
    tk = report.tokens
    console.print()
    console.print(
        Text.assemble(
            ("Tokens per caption", "bold"),
            f" (first line, as kohya tokenizes it): mean {tk.mean:.1f}, median {tk.median:g}, "
            f"90th percentile {tk.p90:g}, max {tk.max}. ",
            (
                f"{len(tk.over_limit)} caption{'s' if len(tk.over_limit) != 1 else ''} "
                f"over {tk.limit} tokens",
                "red" if tk.over_limit else "green",
            ),
            f"; kohya drops every token past {tk.limit}"
            + (" (BOS + 75 + EOS)." if tk.limit == 75 else f" (max_token_length {tk.limit})."),
        )
    )
    if tk.over_limit:
        lt = Table(header_style="bold", pad_edge=False)
        lt.add_column("caption", overflow="fold")
        lt.add_column("tokens", justify="right")
        lt.add_column("cut as written", overflow="fold")
        lt.add_column("cut per shuffle", justify="right")
        for c in tk.over_limit[:top]:
            lt.add_row(
                Text(c.rel), str(c.n_tokens), Text(", ".join(c.cut_tags)),
                f"{c.expected_cut_shuffled:.1f} tags",
            )
        console.print(lt)
    shuffle_line = Text.assemble(
        ("With shuffle_caption", "bold"),
        f" and keep_tokens={tk.keep_tokens}"
        + (f", keep_tokens_separator={tk.keep_tokens_separator!r}"
           if tk.keep_tokens_separator else "") + ": ",
    )
    if tk.captions_at_risk:
        shuffle_line.append(
            f"{_pct(tk.shuffled_cut_share)} of shuffled tag appearances land past token "
            f"{tk.limit} (in {tk.captions_at_risk} caption"
            f"{'s' if tk.captions_at_risk != 1 else ''}; exact expectation over shuffles).",
            style="red" if tk.shuffled_cut_share >= 0.01 else "",
        )
    else:
        shuffle_line.append(f"no shuffle can push a tag past token {tk.limit}.", style="green")
    if tk.fixed_cut:
        shuffle_line.append(
            f" The keep_tokens prefix alone is over {tk.limit} tokens in {tk.fixed_cut} "
            "caption(s).", style="red",
        )
    console.print(shuffle_line)

    # Pairs.
    console.print()
    if not report.pairs:
        console.print(
            Text(
                f"No pair of tags co-occurs far above chance (support ≥ {report.min_support} "
                f"captions, score ≥ {report.min_score}, q ≤ {report.max_q}).",
                style="green",
            )
        )
        return
    pt = Table(
        title=f"Entangled pairs (support ≥ {report.min_support} captions, score ≥ "
        f"{report.min_score}, q ≤ {report.max_q})",
        title_justify="left", header_style="bold", pad_edge=False,
    )
    for col, just in (
        ("pair", "left"), ("together", "right"), ("a / b", "right"),
        ("P(b|a) P(a|b)", "right"), ("NPMI", "right"), ("score", "right"), ("q", "right"),
    ):
        pt.add_column(col, justify=just, overflow="fold")
    for p in report.pairs[:top]:
        pt.add_row(
            Text(f"{p.a} + {p.b}"), str(p.together), f"{p.count_a} / {p.count_b}",
            f"{_pct(p.p_b_given_a)} {_pct(p.p_a_given_b)}", f"{p.npmi:.2f}", f"{p.score:.2f}",
            f"{p.q_value:.1g}",
        )
    console.print(pt)
    if len(report.pairs) > top:
        console.print(Text(f"… {len(report.pairs) - top} more pairs (--top, --json)", style="dim"))

    # Clusters.
    if report.clusters:
        ct = Table(title="Clusters", title_justify="left", header_style="bold", pad_edge=False)
        ct.add_column("#", justify="right", style="dim")
        ct.add_column("tags", overflow="fold")
        ct.add_column("all together", justify="right")
        ct.add_column("score", justify="right")
        ct.add_column("in the model", overflow="fold")
        for k, c in enumerate(report.clusters[:top], start=1):
            model = Text("—", style="dim")
            if c.embedding is not None:
                e = c.embedding
                if e.collision:
                    model = Text("collide: ", style="bold red")
                    model.append(
                        "; ".join(
                            f"{a} ~ {b} ({cos:.2f}, {top_share(pct or 0.0)})"
                            for a, b, cos, pct in e.pairs if (a, b) in e.close_pairs
                        ),
                        style="red",
                    )
                else:
                    best = e.pairs[0]
                    pct = "" if best[3] is None else f", {percentile_label(best[3])}"
                    model = Text(f"apart (closest {best[0]} ~ {best[1]}: {best[2]:.2f}{pct})",
                                 style="green")
            ct.add_row(
                str(k), Text(", ".join(c.tags)), f"{c.together} of {c.any_of}",
                f"{c.mean_score:.2f}", model,
            )
        console.print(ct)
        console.print(
            Text(
                "A cluster's tags are learned together; when they also sit close in the text "
                "encoder, one will bleed into the other. Split such images into their own "
                "subset, tag the absent parts, or rename one tag (tagsmith suggest, tagsmith "
                "retag).",
                style="dim",
            )
        )


# -- retag ----------------------------------------------------------------------------------


@app.command("retag")
def retag_command(
    directory: Path = typer.Argument(
        ..., help="Dataset folder whose caption files to rewrite.", show_default=False,
        metavar="DIR",
    ),
    maps: list[str] = typer.Option(
        None, "--map", "-m", show_default=False, metavar="OLD=NEW",
        help='OLD=NEW, repeatable: --map "mayonnaise bottle=mayonnaise-container". Tags match '
        "with or without underscores and escapes; NEW is written as typed.",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show the diff and write nothing."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Rewrite without asking."),
    undo: bool = typer.Option(
        False, "--undo", help="Restore the files of the last retag run in DIR exactly.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan (and result) as JSON."),
) -> None:
    """Rename tags in every caption file, with a diff first, a backup, and --undo."""
    from rich.text import Text

    from tagsmith.captions.retag import apply_retag, parse_maps, plan_retag, undo_last_retag
    from tagsmith.cli._console import console, err_console

    if undo:
        if maps:
            raise UsageError("--undo restores the last run and takes no --map.")
        if dry_run:
            raise UsageError("--undo cannot be combined with --dry-run.")
        result = undo_last_retag(directory)
        if as_json:
            _print_json({
                "backup": str(result.backup), "restored": result.restored,
                "already_original": result.already_old, "maps": result.maps,
            })
            return
        maps_text = ", ".join(f"{m['old']}={m['new']}" for m in result.maps)
        console.print(
            Text(
                f"Restored {len(result.restored)} file{'s' if len(result.restored) != 1 else ''} "
                f"from {result.backup} (map: {maps_text})."
            )
        )
        if result.already_old:
            console.print(
                Text(
                    f"{len(result.already_old)} file(s) were already original (that run was "
                    "interrupted before reaching them).", style="dim",
                )
            )
        return

    mappings = parse_maps(maps or [])
    plan = plan_retag(directory, mappings)
    if as_json and (dry_run or not plan.changes):
        _print_json(plan.to_dict())
        return
    if not as_json:
        _print_plan(plan, all_files=dry_run)
    if not plan.changes or dry_run:
        return
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"Nothing written: pass --yes to rewrite {len(plan.changes)} files without a "
                "prompt (or --dry-run to see the whole diff)."
            )
        if not typer.confirm(f"Rewrite {len(plan.changes)} files?", default=False):
            err_console.print("Nothing written.", highlight=False)
            raise typer.Exit(1)
    done = [0]

    def on_file(k: int, total: int, rel: str) -> None:
        done[0] = k

    try:
        result = apply_retag(plan, on_file=on_file)
    except KeyboardInterrupt:
        err_console.print(
            f"Interrupted after {done[0]} of {len(plan.changes)} files; each file is either "
            f"unchanged or fully rewritten. `tagsmith retag --undo {directory}` restores them.",
            style="yellow", highlight=False, markup=False,
        )
        raise typer.Exit(130) from None
    if as_json:
        out = plan.to_dict()
        out["backup"] = None if result.backup is None else str(result.backup)
        out["written"] = result.written
        out["changed_since_plan"] = result.changed_since_plan
        _print_json(out)
        return
    console.print(
        Text(
            f"Rewrote {len(result.written)} file{'s' if len(result.written) != 1 else ''}. "
            f"Backup: {result.backup}. Undo with: tagsmith retag --undo {directory}"
        )
    )
    if result.changed_since_plan:
        err_console.print(
            f"Warning: {len(result.changed_since_plan)} file(s) changed while the diff was "
            f"shown and were left alone (e.g. {result.changed_since_plan[0]}).",
            style="yellow", highlight=False, markup=False,
        )


DIFF_CONTEXT = 2  # unchanged tags shown on each side of a change; the rest is "…"


def _highlighted_pair(old: str, new: str):  # noqa: ANN202 - two rich Texts
    """The two lines with the comma-separated pieces that differ in bold, and around each
    change ``DIFF_CONTEXT`` unchanged tags, dimmed; longer unchanged runs are cut to "…"
    (``--json`` has the whole lines)."""
    import difflib
    import re

    from rich.text import Text

    # Whole tags with their separators, so a rename lights up as one piece.
    pieces = re.compile(r"[^,]+,?|,")
    old_parts, new_parts = pieces.findall(old), pieces.findall(new)
    a, b = Text(style="red"), Text(style="green")
    matcher = difflib.SequenceMatcher(None, old_parts, new_parts, autojunk=False)
    ops = matcher.get_opcodes()
    for n, (op, i1, i2, j1, j2) in enumerate(ops):
        if op != "equal":
            a.append("".join(old_parts[i1:i2]), style="bold red")
            b.append("".join(new_parts[j1:j2]), style="bold green")
            continue
        same = old_parts[i1:i2]
        first, last = n == 0, n == len(ops) - 1
        keep_head = 0 if first else DIFF_CONTEXT
        keep_tail = 0 if last else DIFF_CONTEXT
        if len(same) <= keep_head + keep_tail + 1:
            shown = "".join(same)
        else:
            head, tail = "".join(same[:keep_head]), "".join(same[len(same) - keep_tail:])
            shown = (f"{head} …" if head else "…") + (f",{tail}" if tail else "")
        a.append(shown, style="dim red")
        b.append(shown, style="dim green")
    return a, b


def _print_plan(plan, *, all_files: bool) -> None:  # noqa: ANN001 - RetagPlan
    from rich.text import Text

    from tagsmith.cli._console import console

    for path, why in plan.skipped:
        console.print(Text(f"Skipped {path}: {why}.", style="yellow"))
    if not plan.changes:
        olds = ", ".join(repr(m.old) for m in plan.mappings)
        if plan.already:
            news = ", ".join(repr(m.new) for m in plan.mappings)
            console.print(Text(
                f"{plan.already} of {plan.scanned} captions have {olds} written as {news} "
                "already; nothing to change."
            ))
        else:
            console.print(
                Text(f"No caption of {plan.scanned} mentions {olds}; nothing to change.")
            )
        return
    shown = plan.changes if all_files else plan.changes[:DIFF_FILES_BEFORE_WRITE]
    for ch in shown:
        console.print(Text(f"{ch.rel} ({ch.decoded.label})", style="bold"))
        diffs = ch.line_diffs()
        for line_no, old, new in diffs:
            prefix = f"  {line_no}: " if len(diffs) > 1 or line_no > 1 else "  "
            old_text, new_text = _highlighted_pair(old, new)
            console.print(Text(f"{prefix}- ", style="red") + old_text)
            console.print(Text(f"{prefix}+ ", style="green") + new_text)
        for e in ch.edits:
            if e.note and e.new is not None:
                console.print(Text(f"    {e.old}: {e.note}", style="yellow"))
    if len(shown) < len(plan.changes):
        console.print(
            Text(f"… and {len(plan.changes) - len(shown)} more files (--dry-run shows all).",
                 style="dim")
        )
    renamed = plan.renamed
    parts = [f"{count} × {spec}" for spec, count in renamed.items()]
    if plan.removed:
        parts.append(f"{plan.removed} duplicate{'s' if plan.removed != 1 else ''} removed")
    console.print(
        Text(
            f"{len(plan.changes)} of {plan.scanned} caption files change: " + "; ".join(parts)
            + ".",
            style="bold",
        )
    )
