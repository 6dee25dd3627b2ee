"""Tokenize the whole Danbooru tag list: tagsmith's batch path vs CLIP's reference BPE.

    .venv/bin/python benchmarks/tokenize.py [--csv ../shared/data/danbooru.csv] [--limit N]

Baseline: a per-tag loop of the pure-Python reference tokenizer (tests/reference_clip_bpe.py,
OpenAI CLIP's SimpleTokenizer algorithm) with its BPE cache cleared before every tag, so each
tag costs what it costs on its own. tagsmith: ``encode_batch`` and ``analyze_batch`` over the
whole list (Rust BPE, parallel). Both see the same texts (underscores to spaces) and the ids are
checked to be identical. Also timed: text cleaning alone (tagsmith's ASCII fast path vs the
reference's ftfy path), ``tagsmith --help`` and ``import tagsmith.cli`` + ``load_tokenizer()``
in fresh processes (median of 5).
"""

from __future__ import annotations

import os
import sys

# This file is named like the standard library's `tokenize` (dataclasses -> inspect ->
# linecache imports it): keep this folder off the import path.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import argparse  # noqa: E402
import csv  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from reference_clip_bpe import ReferenceClipBpe  # noqa: E402

from tagsmith.text.tokenizer import (  # noqa: E402
    _clean_text_reference,
    clean_text,
    load_tokenizer,
)

DEFAULT_CSV = ROOT.parent / "shared" / "data" / "danbooru.csv"


def read_tags(path: Path, limit: int | None) -> list[str]:
    with path.open(encoding="utf-8", newline="") as f:
        tags = [row[0] for row in csv.reader(f) if row]
    return tags[:limit] if limit else tags


def timed(fn, *args):  # noqa: ANN001, ANN201
    """(wall seconds, CPU seconds of all this process's threads, result)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args)
    return time.perf_counter() - w0, time.process_time() - c0, out


def best(runs: list[tuple[float, float, object]]) -> tuple[float, float]:
    wall, cpu, _ = min(runs, key=lambda r: r[0])
    return wall, cpu


def subprocess_median(cmd: list[str], runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--limit", type=int, default=None, help="only the first N tags")
    args = parser.parse_args()
    if not args.csv.is_file():
        sys.exit(f"{args.csv} not found; pass --csv PATH to a tagcomplete danbooru.csv")

    tags = read_tags(args.csv, args.limit)
    texts = [t.replace("_", " ") for t in tags]
    n = len(texts)
    print(f"{n:,} Danbooru tags from {args.csv.name}; {os.cpu_count()} CPUs;", end=" ")
    print(f"load average {os.getloadavg()[0]:.1f}")

    load_s, _, tok = timed(load_tokenizer)

    # tagsmith: first run (cold Rust BPE cache), then the best of three.
    enc = [timed(tok.encode_batch, texts) for _ in range(3)]
    ours = enc[0][2]
    ana = [timed(tok.analyze_batch, tags) for _ in range(3)]
    clean = timed(lambda: [clean_text(t) for t in texts])
    ref_clean = timed(lambda: [_clean_text_reference(t) for t in texts])

    ref = ReferenceClipBpe()

    def reference_loop() -> list[list[int]]:
        out = []
        for text in texts:
            ref.clear_cache()  # honest per-tag work: no BPE word reuse across tags
            out.append(ref.encode(text))
        return out

    ref_wall, ref_cpu, theirs = timed(reference_loop)
    same = sum(a == b for a, b in zip(ours, theirs))

    print(f"\n  {'':<44} {'wall':>8}    {'CPU':>8}    {'tags/s (wall)':>13}")

    def row(name: str, wall: float, cpu: float) -> None:
        print(f"  {name:<44} {wall:8.3f} s  {cpu:8.3f} s  {n / wall:>13,.0f}")

    print("tokenizing every tag")
    row("reference pure-Python BPE, per-tag loop", ref_wall, ref_cpu)
    row("tagsmith encode_batch (first run)", *enc[0][:2])
    row("tagsmith encode_batch (best of 3)", *best(enc))
    row("tagsmith analyze_batch (first run)", *ana[0][:2])
    row("tagsmith analyze_batch (best of 3)", *best(ana))
    for name, runs in (("encode_batch", enc), ("analyze_batch", ana)):
        wall, cpu = best(runs)
        print(f"  reference / tagsmith {name}: {ref_wall / runs[0][0]:.1f}x first run,", end=" ")
        print(f"{ref_wall / wall:.1f}x best (wall); {ref_cpu / cpu:.1f}x best (CPU)")
    print(f"  ids identical to the reference: {same:,} of {n:,}")

    print("cleaning text only (ftfy, HTML, whitespace, lowercase)")
    row("reference path (ftfy on every tag)", *ref_clean[:2])
    row("tagsmith clean_text (ASCII fast path)", *clean[:2])
    print(f"  reference / tagsmith: {ref_clean[0] / clean[0]:.0f}x;", end=" ")
    print(f"clean_text is {clean[0] / best(ana)[0]:.0%} of analyze_batch")

    print("\nstart-up (fresh processes, median of 5)")
    exe = shutil.which("tagsmith", path=str(Path(sys.executable).parent)) or "tagsmith"
    help_s = subprocess_median([exe, "--help"])
    print(f"  tagsmith --help                              {help_s:8.3f} s")
    code = (
        "import time; t = time.perf_counter(); import tagsmith.cli; "
        "from tagsmith.text.tokenizer import load_tokenizer; load_tokenizer(); "
        "print(time.perf_counter() - t)"
    )
    inproc = []
    for _ in range(5):
        res = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        inproc.append(float(res.stdout))
    print(f"  import tagsmith.cli + load_tokenizer()       {statistics.median(inproc):8.3f} s")
    print(f"  load_tokenizer() in this process             {load_s:8.3f} s")


if __name__ == "__main__":
    main()
