"""`tagsmith lora`: a LoRA file's training metadata and likely triggers, and what it moved."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from tagsmith.cli._app import app
from tagsmith.cli._model_options import (
    CacheDirOption,
    DeviceOption,
    DtypeOption,
    NoCacheOption,
    settings_from_options,
)
from tagsmith.cli.suggest_cmd import JsonOption, VocabOption


@app.command("lora")
def lora_command(
    files: Annotated[list[str], typer.Argument(
        metavar="FILE[:WEIGHT]...", help="LoRA/LyCORIS .safetensors files (WEIGHT: the "
        "text-encoder multiplier for --model, default 1).")],
    model: Annotated[str | None, typer.Option(
        "--model", "-m", metavar="BASE", show_default=False,
        help="The base model the LoRA was trained on: measure what the LoRA moved in it. "
        "Without it only the file's header is read.")] = None,
    vocab: VocabOption = None,
    vocab_top: Annotated[int, typer.Option(
        "--vocab-top", metavar="N", min=0,
        help="Measure the vocabulary's N most frequent tags besides the caption tags.")] = 20_000,
    top: Annotated[int, typer.Option("--top", metavar="N", min=1,
                                     help="Rows per table.")] = 15,
    clip_skip: Annotated[int | None, typer.Option(
        "--clip-skip", min=1, max=12, metavar="N", show_default=False,
        help="A1111 clip skip for --model (default: the LoRA's ss_clip_skip, else 1).")] = None,
    as_json: JsonOption = False,
    plot: Annotated[Path | None, typer.Option(
        "--plot", metavar="PATH", show_default=False,
        help="With --model: write the triggers' similarities (several LoRAs) or the most "
        "moved tags (one) as a picture (.png/.svg/.pdf).")] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "auto",
    cache_dir: CacheDirOption = None,
    no_cache: NoCacheOption = False,
) -> None:
    """What a LoRA says about its training, its likely triggers, and what it moved."""
    from tagsmith.analysis.lora_report import collisions, lora_info, measure_moved
    from tagsmith.cli._console import console, err_console
    from tagsmith.model.lora import parse_lora_spec

    specs = [parse_lora_spec(f) for f in files]
    counts, top_texts = _vocabulary(vocab, vocab_top)
    reports = [lora_info(s.path, vocab_counts=counts) for s in specs]
    if model is not None:
        skip = clip_skip or _trained_clip_skip(reports[0]) or 1
        settings = settings_from_options(
            model=model, clip_skip=skip, device=device, dtype=dtype, cache_dir=cache_dir,
            no_cache=no_cache,
        )
        from tagsmith.cli._progress import Progress

        with Progress(err_console) as status:
            for spec, report in zip(specs, reports):
                report.moved = measure_moved(report, settings, spec, top_texts, top=top,
                                             progress=status)
        if vocab is None:
            for r in reports:
                r.notes.append("No --vocab: only the LoRA's own caption tags were measured.")
    pairs = collisions(reports) if len(reports) > 1 else []
    if plot is not None:
        _plot(plot, reports, err_console)
    if as_json:
        from tagsmith.cli._json import write_json

        write_json({"loras": [r.to_dict() for r in reports],
                    "collisions": [c.to_dict() for c in pairs]})
        return
    for r in reports:
        render_lora(console, r, top=top)
    if pairs:
        render_collisions(console, pairs)


def _trained_clip_skip(report: Any) -> int | None:
    value = report.training.get("clip_skip")
    return value if isinstance(value, int) and 1 <= value <= 12 else None


def _vocabulary(path: Path | None, n: int) -> tuple[dict[str, int | None] | None, list[str]]:
    if path is None:
        return None, []
    from tagsmith.text.vocab import read_vocabulary

    voc = read_vocabulary(path)
    counts = {e.text: e.count for e in voc.entries}
    ranked = sorted(voc.entries, key=lambda e: -(e.count or 0))
    return counts, [e.text for e in ranked[:n]]


def _plot(path: Path, reports: list[Any], err_console: Any) -> None:
    import numpy as np

    from tagsmith.analysis.lora_report import trigger_matrix
    from tagsmith.analysis.plot import plot_similarity

    measured = [r for r in reports if r.moved]
    if not measured:
        err_console.print("Note: no plot written: it needs --model.", style="yellow",
                          highlight=False)
        return
    if len(measured) > 1:
        labels, m = trigger_matrix(measured)
        if labels:
            plot_similarity(path, labels, labels, m, title="tagsmith lora: trigger similarity",
                            highlight_row=None)
            return
    r = measured[0]
    cols = [t.tag for t in r.moved.top]
    m = np.array([[t.moved for t in r.moved.top]], dtype=np.float32)
    plot_similarity(path, [r.name], cols, m, title=f"tagsmith lora {r.name}: most moved tags",
                    highlight_row=None)


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def render_lora(console: Any, r: Any, *, top: int = 15) -> None:
    from rich.table import Table
    from rich.text import Text

    from tagsmith.model.lora import FAMILY_NAMES

    head = Text()
    head.append("tagsmith lora ", style="bold")
    head.append(r.name, style="bold cyan")
    fam = FAMILY_NAMES.get(r.family, r.family)
    head.append(f"\n{fam} LoRA ({r.family_why}) · {r.summary} · {r.unet_keys} UNet keys · "
                f"{r.unknown_keys} unknown keys", style="dim")
    n, t = r.network, r.training
    head.append(
        f"\nnetwork {_fmt(n['module'])} dim {_fmt(n['dim'])} alpha {_fmt(n['alpha'])}"
        + (f" args {json.dumps(n['args'])}" if n.get("args") else "")
        + f" · text encoder {'trained' if r.te_trained else 'not trained'}"
        + f" · clip skip {_fmt(t['clip_skip'])} · keep_tokens {_fmt(t['keep_tokens'])}"
        + f" · shuffle_caption {_fmt(t['shuffle_caption'])}"
        + f" · base {_fmt(t['base_model_version'] or t['architecture'])}",
        style="dim",
    )
    if t.get("trigger_phrase"):
        head.append(f"\ntrigger phrase (modelspec): {t['trigger_phrase']}", style="dim")
    if r.folders:
        parts = [f"{name} ({_fmt(v.get('repeats'))} repeats, {_fmt(v.get('images'))} images)"
                 for name, v in r.folders.items()]
        head.append("\nfolders: " + "; ".join(parts), style="dim")
    console.print(head)
    if r.tags:
        table = Table(title="Training tags by caption frequency", header_style="bold",
                      title_justify="left")
        for col, just in (("#", "right"), ("tag", "left"), ("captions", "right"),
                          ("share", "right"), ("tokens", "left"), ("n", "right"),
                          ("vocab posts", "right")):
            table.add_column(col, justify=just)  # type: ignore[arg-type]
        for i, tag in enumerate(r.tags[:top], start=1):
            vocab = "-" if tag.in_vocab is None else (
                f"{tag.vocab_count:,}" if tag.vocab_count is not None else "not in vocab")
            table.add_row(str(i), tag.tag, str(tag.count),
                          "-" if tag.share is None else f"{tag.share:.0%}",
                          " | ".join(tag.tokens), str(len(tag.tokens)), vocab)
        console.print(table)
        if len(r.tags) > top:
            console.print(f"({len(r.tags) - top} more tags; --top N or --json for all)",
                          style="dim")
    if r.triggers:
        console.print(Text("Likely triggers", style="bold"))
        for trig in r.triggers:
            console.print(Text.assemble(("  " + trig.tag, "bold green"), (f"  {trig.why}", "")))
    if r.moved:
        _render_moved(console, r.moved)
    for note in r.notes:
        console.print(Text(f"Note: {note}", style="yellow"))


def _render_moved(console: Any, mv: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    console.print(Text(
        f"What the LoRA moved in {mv.model.get('source')} at clip skip "
        f"{mv.model.get('clip_skip')} ({mv.measured:,} tags measured; 1 - cosine to the tag's "
        f"base vector after removing the common component; median {mv.median_moved:.3f})",
        style="bold"))
    table = Table(header_style="bold")
    table.add_column("#", justify="right", style="dim")
    table.add_column("tag")
    table.add_column("moved", justify="right")
    table.add_column("", style="dim")
    for i, m in enumerate(mv.top, start=1):
        table.add_row(str(i), m.tag, f"{m.moved:.3f}", "training tag" if m.caption else
                      "leakage: not a training tag")
    console.print(table)
    for tm in mv.triggers:
        near = ", ".join(f"{t} {s:.2f} (base {b:.2f})" for t, s, b in tm.neighbours)
        console.print(Text.assemble(
            ("trigger ", ""), (tm.tag, "bold green"),
            (f" moved {tm.moved:.3f}; nearest untouched tags now: {near}", "")))


def render_collisions(console: Any, pairs: list[Any]) -> None:
    from rich.table import Table

    table = Table(title="Collisions", header_style="bold", title_justify="left")
    for col in ("LoRA A", "LoRA B", "shared trigger tokens", "shared training tags",
                "moved overlap", "trigger similarity"):
        table.add_column(col)
    for c in pairs:
        table.add_row(
            c.a, c.b, ", ".join(c.shared_tokens) or "-",
            ", ".join(c.shared_training_tags[:6]) or "-",
            "-" if c.moved_overlap is None else f"{c.moved_overlap:.0%}",
            "-" if c.trigger_similarity is None else f"{c.trigger_similarity:.2f}",
        )
    console.print(table)
