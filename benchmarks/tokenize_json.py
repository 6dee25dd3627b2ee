"""`tagsmith tokenize --json` over the whole Danbooru list vs the library's batch path.

    .venv/bin/python benchmarks/tokenize_json.py [--csv ../shared/data/danbooru.csv]
        [--limit N] [--rich-sample N]

Baseline: a fresh process that imports tagsmith, reads the tag file and runs the library's
batch path (``tagsmith.text.prompt.analyze_tags``, what tokenize calls) and nothing else.
tagsmith: a fresh ``tagsmith tokenize --json --file tags.txt`` writing to a file: the same
work plus the CLI, ``to_dict`` and the JSON writer. Both wall times from one run each; the
target is a ratio within 2x. ``--rich-sample N`` also times the old path (rich's
``print_json``) on the first N tags, for comparison.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CSV = ROOT.parent / "shared" / "data" / "danbooru.csv"

BATCH = """
import sys
from tagsmith.fileio import read_tag_lines
from tagsmith.text.prompt import analyze_tags
tags = [t for _, t in read_tag_lines(sys.argv[1])]
print(len(analyze_tags(tags, underscores=True)))
"""

RICH = """
import io, json, sys
from rich.console import Console
from tagsmith.fileio import read_tag_lines
from tagsmith.text.prompt import analyze_tags
tags = [t for _, t in read_tag_lines(sys.argv[1])]
Console(file=io.StringIO()).print_json(
    json.dumps([a.to_dict() for a in analyze_tags(tags, underscores=True)], ensure_ascii=False))
"""


def wall(cmd: list[str], stdout=subprocess.DEVNULL) -> float:  # noqa: ANN001
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=stdout)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--rich-sample", type=int, default=0)
    args = ap.parse_args()
    if not args.csv.is_file():
        sys.exit(f"{args.csv} not found; give --csv PATH to a tagcomplete danbooru.csv")
    with args.csv.open(encoding="utf-8", newline="") as f:
        tags = [row[0] for row in csv.reader(f) if row]
    tags = tags[: args.limit] if args.limit else tags
    with tempfile.TemporaryDirectory(prefix="tagsmith-bench-") as tmp:
        tag_file = Path(tmp) / "tags.txt"
        tag_file.write_text("".join(t + "\n" for t in tags), encoding="utf-8")
        py = sys.executable
        baseline = wall([py, "-c", BATCH, str(tag_file)])
        out = Path(tmp) / "out.json"
        with out.open("w", encoding="utf-8") as fh:
            ours = wall([py, "-m", "tagsmith", "tokenize", "--json", "--file", str(tag_file)],
                        stdout=fh)
        rows = json.loads(out.read_text(encoding="utf-8"))
        assert len(rows) == len(tags) and rows[-1]["tag"] == tags[-1]
        size = out.stat().st_size
        print(f"tokenize --json, {len(tags):,} Danbooru tags ({size / 1e6:.0f} MB of JSON)")
        print(f"  baseline (library batch path, fresh process): {baseline:6.2f} s")
        print(f"  tagsmith tokenize --json --file:               {ours:6.2f} s")
        print(f"  ratio: {ours / baseline:.2f}x (target: within 2x)")
        if args.rich_sample:
            sample = Path(tmp) / "sample.txt"
            sample.write_text("".join(t + "\n" for t in tags[: args.rich_sample]),
                              encoding="utf-8")
            old = wall([py, "-c", RICH, str(sample)])
            print(f"  for comparison, rich print_json on {args.rich_sample:,} tags: {old:.2f} s")


if __name__ == "__main__":
    main()
