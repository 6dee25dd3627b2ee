"""`tagsmith explore` on the full Danbooru score file: time to first paint, scrolling, filtering.

Builds a score file of every tag in ../shared/data/danbooru.csv (140,782 rows) with the score
library: the token columns as ``tagsmith score`` writes them without a model, plus, for the
"model" variant, the columns a model run fills (5 neighbours per tag, leak similarity,
distinctiveness, leak risk) with seeded stand-in values, so the file has a real run's size and
shape. Files are cached in the temp dir.

Each run is its own process, timed from its first line (imports included), headless at 80x24:

- tagsmith: ``ExploreApp`` on the file. "first frame" is the first paint (the loading state),
  "first rows" the first paint with data rows in it, "all rows" when the whole file is in the
  table. Then per-key latency of Down, PageDown, End and Home on the full table (wall time
  until the app is idle again, frame drawn, and the process's CPU time in it), and the filter
  and sort steps on the 140k rows.
- key to frame: each key sent straight to the driver, timed to the first frame handed to the
  terminal after it (the moved cursor) and to the last one before the app is idle again
  (tagsmith: the detail pane), medians of 30.
- baseline: what the obvious implementation does: ``read_score_file`` then every row added to
  Textual's ``DataTable`` before the first paint, and the same keys.

Pilot waits for idleness in 20 ms sleeps, so wall times per key are steps of about 20 ms and
rise with the machine's load; the CPU column is the work itself.

    python benchmarks/explore.py [--vocab ../shared/data/danbooru.csv] [--format csv]
    python benchmarks/explore.py --variant tokens --no-baseline
"""

from __future__ import annotations

import os
import sys
import time

T0 = time.perf_counter()
# A script's folder comes first on sys.path, where benchmarks/tokenize.py would shadow the
# standard library's tokenize module.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VOCAB = ROOT.parent / "shared" / "data" / "danbooru.csv"
CACHE = Path(tempfile.gettempdir()) / "tagsmith-bench-explore"
SIZE = (80, 24)
KEYS = 30  # presses per timed key


def build_score_file(vocab: Path, variant: str, fmt: str) -> Path:
    """The score file for ``vocab``, built once and cached by the vocabulary's size and time."""
    st = vocab.stat()
    out = CACHE / f"{vocab.stem}-{st.st_size}-{int(st.st_mtime)}-{variant}.{fmt}"
    if out.exists():
        return out
    import dataclasses

    import numpy as np

    from tagsmith.analysis.score import ScoreNeighbor, dominance, score_vocabulary
    from tagsmith.analysis.score_io import write_scores
    from tagsmith.text.vocab import read_vocabulary

    CACHE.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    rows = score_vocabulary(read_vocabulary(vocab), None).rows
    print(f"  scored {len(rows):,} tags (token columns) in {time.perf_counter() - t:.1f} s",
          file=sys.stderr)
    if variant == "model":
        rng = np.random.default_rng(0)
        n = len(rows)
        picks = rng.integers(0, n, size=(n, 5))
        sims = np.sort(rng.uniform(0.3, 0.95, size=(n, 5)), axis=1)[:, ::-1]
        leak = rng.uniform(0.2, 0.95, size=n)
        out_rows = []
        for i, r in enumerate(rows):
            neighbors = tuple(ScoreNeighbor(rows[j].tag, round(float(s), 4))
                              for j, s in zip(picks[i], sims[i]))
            ls = round(float(leak[i]), 4) if r.shares_token_with else None
            dom = dominance(r.count, r.shares_token_count)
            out_rows.append(dataclasses.replace(
                r, neighbors=neighbors, leak_similarity=ls,
                distinctiveness=round(1 - float(sims[i].mean()), 4),
                leak_risk=round(ls * dom, 4) if ls is not None and dom is not None else None,
            ))
        rows = out_rows
    write_scores(rows, out)
    return out


# -- children -------------------------------------------------------------------------------


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


FRAMES: list[float] = []  # when the app handed each frame to the (headless) driver


async def _time_scrolling(pilot) -> dict[str, float]:  # noqa: ANN001
    """Milliseconds per key press (wall, and CPU of the process) for PageDown and Down, then
    End and Home pressed in turn (a jump to the last row and back to the first); then the same
    keys timed from the key event to the first frame drawn after it."""
    out: dict[str, float] = {}
    for keys in (["pagedown"], ["down"], ["end", "home"]):
        out.update(await _time_keys(pilot, keys))
    for keys in (["pagedown"], ["down"], ["end", "home"]):
        out.update(await _time_frames(pilot, keys))
    return out


async def _time_frames(pilot, keys: list[str], n: int = KEYS) -> dict[str, float]:  # noqa: ANN001
    """Key to frame: the key event goes straight to the driver's queue, as a terminal's does,
    and the time runs until the next frame is handed to the driver (what a user sees); the app
    then settles (Pilot's idle wait, not timed) before the next key. Pilot's own ``press``
    cannot measure this: its idle wait sleeps in 20 ms steps, at least two per key."""
    import asyncio

    from textual import events

    app = pilot.app
    first: dict[str, list[float]] = {k: [] for k in keys}
    last: dict[str, list[float]] = {k: [] for k in keys}
    for _ in range(n):
        for key in keys:
            await pilot.pause()
            seen = len(FRAMES)
            event = events.Key(key, None)
            event.set_sender(app)
            t = time.perf_counter()
            app._driver.send_message(event)
            while len(FRAMES) == seen and time.perf_counter() - t < 5:
                await asyncio.sleep(0.0005)
            first[key].append(FRAMES[seen] - t if len(FRAMES) > seen else float("nan"))
            await pilot.pause()  # the rest of the key's frames (tagsmith: the detail pane)
            last[key].append(FRAMES[-1] - t if len(FRAMES) > seen else float("nan"))
    out = {}
    for key in keys:
        out[f"{key} to frame ms"] = sorted(first[key])[n // 2] * 1000  # medians
        out[f"{key} last frame ms"] = sorted(last[key])[n // 2] * 1000
    return out


async def _time_keys(pilot, keys: list[str], n: int = KEYS) -> dict[str, float]:  # noqa: ANN001
    """Each key of ``keys`` pressed in turn ``n`` times; a press is timed until the app is
    idle again (Pilot's wait), which includes drawing the frame."""
    wall = dict.fromkeys(keys, 0.0)
    cpu = dict.fromkeys(keys, 0.0)
    for _ in range(n):
        for key in keys:
            t, c = time.perf_counter(), time.process_time()
            await pilot.press(key)
            wall[key] += time.perf_counter() - t
            cpu[key] += time.process_time() - c
    await pilot.pause()
    out = {}
    for key in keys:
        out[f"{key} ms"] = wall[key] / n * 1000
        out[f"{key} cpu ms"] = cpu[key] / n * 1000
    return out


def _hook_first_frame(marks: dict[str, float]) -> None:
    """Record when the app first hands a frame to the (headless) terminal driver."""
    from textual.app import App

    display = App._display

    def timed_display(self, screen, renderable):  # noqa: ANN001, ANN202
        got = display(self, screen, renderable)
        if renderable is not None:
            now = time.perf_counter()
            marks.setdefault("first frame", now - T0)
            FRAMES.append(now)
        return got

    App._display = timed_display  # type: ignore[method-assign]


def child_tagsmith(path: Path) -> dict:
    import asyncio

    from tagsmith.tui import app as tui_app
    from tagsmith.tui import widgets

    marks: dict[str, float] = {"import": time.perf_counter() - T0}
    _hook_first_frame(marks)
    render_line = widgets.RankingView.render_line

    def timed_render_line(self, y: int):  # noqa: ANN001, ANN202
        now = time.perf_counter() - T0
        if y >= 1 and self.view is not None and len(self.view):
            marks.setdefault("first rows", now)
            if self.view.table is getattr(self.screen, "table", None) and \
                    getattr(self.screen, "_progress", "x") == "":
                marks.setdefault("all rows", now)
        return render_line(self, y)

    widgets.RankingView.render_line = timed_render_line  # type: ignore[method-assign]

    async def go() -> dict:
        app = tui_app.ExploreApp(tui_app.ScoreSource(path))
        async with app.run_test(size=SIZE) as pilot:
            await app.workers.wait_for_complete()
            await pilot.pause()
            view = app.screen.view
            out = {"rows": len(view)}
            out.update(await _time_scrolling(pilot))
            steps = ["b", "bo", "bot", "bott", "bottl", "bottle", "bottle n_tokens>1"]
            t = time.perf_counter()
            for q in steps:
                view.set_query(q)
            out["filter step ms"] = (time.perf_counter() - t) / len(steps) * 1000
            view.set_query("")
            for key, name in (("count", "sort count ms"), ("tag", "sort tag ms")):
                t = time.perf_counter()
                view.sort_by(key)
                out[name] = (time.perf_counter() - t) * 1000
            return out

    result = asyncio.run(go())
    return {**{f"{k} s": v for k, v in marks.items()}, **result, "peak MB": _peak_rss_mb()}


def child_baseline(path: Path) -> dict:
    import asyncio

    from textual.app import App, ComposeResult
    from textual.widgets import DataTable

    from tagsmith.analysis.score_io import read_score_file

    marks: dict[str, float] = {"import": time.perf_counter() - T0}
    _hook_first_frame(marks)
    render_line = DataTable.render_line

    def timed_render_line(self, y: int):  # noqa: ANN001, ANN202
        if self.row_count:
            marks.setdefault("first rows", time.perf_counter() - T0)
            marks.setdefault("all rows", time.perf_counter() - T0)
        return render_line(self, y)

    DataTable.render_line = timed_render_line  # type: ignore[method-assign]

    class Naive(App):
        def compose(self) -> ComposeResult:
            yield DataTable(cursor_type="row")

        def on_mount(self) -> None:
            rows = read_score_file(path)
            table = self.query_one(DataTable)
            for name in ("tag", "count", "n_tok", "risk", "leak", "dist", "shares"):
                table.add_column(name, key=name)
            table.add_rows(
                (r.text, r.count, r.n_tokens, r.leak_risk, r.leak_similarity,
                 r.distinctiveness, r.shares_token_with or "")
                for r in rows
            )
            table.focus()

    async def go() -> dict:
        app = Naive()
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            out = {"rows": app.query_one(DataTable).row_count}
            out.update(await _time_scrolling(pilot))
            t = time.perf_counter()
            app.query_one(DataTable).sort("count", key=lambda v: -1 if v is None else v)
            await pilot.pause()
            out["sort count ms"] = (time.perf_counter() - t) * 1000
            return out

    result = asyncio.run(go())
    return {**{f"{k} s": v for k, v in marks.items()}, **result, "peak MB": _peak_rss_mb()}


def run_child(kind: str, path: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(path)],
                         capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=Path, default=DEFAULT_VOCAB)
    ap.add_argument("--format", choices=["csv", "jsonl", "parquet"], default="csv")
    ap.add_argument("--variant", choices=["model", "tokens"], default="model")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        kind, path = args.child
        result = (child_tagsmith if kind == "tagsmith" else child_baseline)(Path(path))
        print(json.dumps(result))
        return
    if not args.vocab.is_file():
        raise SystemExit(f"{args.vocab} not found; give --vocab PATH (a tagcomplete CSV).")
    path = build_score_file(args.vocab, args.variant, args.format)
    print(f"score file: {path.name} ({path.stat().st_size / 1e6:.1f} MB), terminal "
          f"{SIZE[0]}x{SIZE[1]} headless, load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")
    ours = run_child("tagsmith", path)
    print("tagsmith: " + json.dumps({k: round(v, 4) for k, v in ours.items()}), flush=True)
    theirs = run_child("baseline", path) if not args.no_baseline else {}
    keys = ["import s", "first frame s", "first rows s", "all rows s", "rows"]
    for key in ("down", "pagedown", "end", "home"):
        keys += [f"{key} ms", f"{key} cpu ms", f"{key} to frame ms", f"{key} last frame ms"]
    keys += ["filter step ms", "sort count ms", "sort tag ms", "peak MB"]
    print(f"load average after the runs: {os.getloadavg()[0]:.1f}")
    print(f"{'':24}{'tagsmith':>12}{'DataTable':>12}{'ratio':>8}")
    for k in keys:
        a, b = ours.get(k), theirs.get(k)
        if a is None and b is None:
            continue
        fa = f"{a:,.3f}" if isinstance(a, float) else f"{a:,}" if a is not None else "-"
        fb = f"{b:,.3f}" if isinstance(b, float) else f"{b:,}" if b is not None else "-"
        ratio = f"{b / a:.1f}x" if isinstance(a, float) and isinstance(b, float) and a > 0 \
            else ""
        print(f"{k:24}{fa:>12}{fb:>12}{ratio:>8}")


if __name__ == "__main__":
    main()
