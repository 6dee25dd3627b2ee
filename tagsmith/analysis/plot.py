"""The candidate x neighbour similarity matrix as a picture (matplotlib, PNG/SVG/PDF)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tagsmith.errors import InputError
from tagsmith.fileio import atomic_write_bytes

_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
_ROLE_COLOURS = {"keep": "#1b7f3b", "leak": "#b3261e", "avoid": "#8e24aa"}


def role_signed(matrix: np.ndarray, roles: Sequence[str], centre: float = 0.0) -> np.ndarray:
    """How good each cell is for its form: its distance from ``centre`` (the model's typical
    random pair), positive where that helps (a ``keep`` column above it) and negative where it
    hurts (a ``leak`` or ``avoid`` column above it). NaN stays NaN."""
    sign = np.array([1.0 if r == "keep" else -1.0 for r in roles], dtype=np.float64)
    return (np.asarray(matrix, dtype=np.float64) - centre) * sign[None, :]


def plot_similarity(
    path: str | Path,
    rows: list[str],
    cols: list[str],
    matrix: np.ndarray,
    *,
    title: str,
    highlight_row: int | None = 0,
    col_roles: list[str] | None = None,
    row_scores: Sequence[float | None] | None = None,
    centre: float = 0.0,
) -> Path:
    """Write a diverging heat map of (centred) similarities with values in the cells.

    Colour is by role, around ``centre`` (the model's typical random pair): on a ``keep``
    column high is good (green), on a ``leak`` or ``avoid`` column high is bad (red). Column
    labels name the role, each form's score is in the right margin, and ``highlight_row`` (the
    recommended form) is boxed and starred.
    """
    target = Path(path)
    fmt = _FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise InputError(f"Cannot write a plot to {target.name}; use a .png, .svg or .pdf name.")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    n_rows, n_cols = matrix.shape
    roles = list(col_roles) if col_roles else ["leak"] * n_cols
    good = role_signed(matrix, roles, centre)
    finite = good[np.isfinite(good)]
    lim = max(float(np.abs(finite).max()) if finite.size else 0.0, 0.05)
    width = min(5 + 1.0 * n_cols, 30)
    height = min(2.6 + 0.45 * n_rows, 24)
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    im = ax.imshow(np.ma.masked_invalid(good), cmap="RdYlGn",
                   norm=TwoSlopeNorm(vmin=-lim, vcenter=0.0, vmax=lim), aspect="auto")
    for i in range(n_rows):
        for j in range(n_cols):
            v = matrix[i, j]
            if np.isfinite(v):
                strong = abs(good[i, j]) > 0.6 * lim
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if strong else "black")
    ax.set_xticks(range(n_cols), labels=[f"{c}\n[{r}]" for c, r in zip(cols, roles)],
                  rotation=35, ha="right", fontsize=9)
    for tick, r in zip(ax.get_xticklabels(), roles):
        tick.set_color(_ROLE_COLOURS.get(r, "black"))
    labels = [("\u2605 " + r) if i == highlight_row else r for i, r in enumerate(rows)]
    ax.set_yticks(range(n_rows), labels=labels, fontsize=9)
    ax.set_xlabel("neighbour concepts [role]: keep = must still mean, leak = must not become, "
                  "avoid = must not collide with")
    ax.set_ylabel("candidate forms (best first)")
    ax.set_title(title, fontsize=11)
    if row_scores is not None:
        ax.text(n_cols - 0.5 + 0.15, -0.75, "score", ha="left", va="center", fontsize=8,
                fontweight="bold")
        for i, s in enumerate(row_scores):
            if s is not None:
                ax.text(n_cols - 0.5 + 0.15, i, f"{s:+.3f}", ha="left", va="center", fontsize=8,
                        fontweight="bold" if i == highlight_row else "normal")
    if highlight_row is not None and 0 <= highlight_row < n_rows:
        ax.add_patch(Rectangle((-0.5, highlight_row - 0.5), n_cols, 1, fill=False,
                               edgecolor="#00c853", linewidth=3, clip_on=False))
        ticks = ax.get_yticklabels()
        ticks[highlight_row].set_fontweight("bold")
        ticks[highlight_row].set_color("#00a040")
    bar = fig.colorbar(im, ax=ax, fraction=0.035, pad=0.09 if row_scores is not None else 0.02)
    bar.set_label("similarity vs the model's random tag pairs\n"
                  "green helps the form, red hurts (leak/avoid flipped)", fontsize=8)
    bar.set_ticks([-lim, 0.0, lim], labels=["hurts", "typical\nrandom pair", "helps"])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    plt.close(fig)
    atomic_write_bytes(target, buf.getvalue())
    return target
