"""The candidate x neighbour similarity matrix as a picture (matplotlib, PNG/SVG/PDF)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from tagsmith.errors import InputError
from tagsmith.fileio import atomic_write_bytes

_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}


def plot_similarity(
    path: str | Path,
    rows: list[str],
    cols: list[str],
    matrix: np.ndarray,
    *,
    title: str,
    highlight_row: int | None = 0,
    col_roles: list[str] | None = None,
) -> Path:
    """Write a heat map with values in the cells; ``highlight_row`` (the pick) is boxed."""
    target = Path(path)
    fmt = _FORMATS.get(target.suffix.lower())
    if fmt is None:
        raise InputError(f"Cannot write a plot to {target.name}; use a .png, .svg or .pdf name.")
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n_rows, n_cols = matrix.shape
    width = min(4 + 1.0 * n_cols, 28)
    height = min(2.2 + 0.45 * n_rows, 24)
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    finite = matrix[np.isfinite(matrix)]
    vmin = float(finite.min()) if finite.size else 0.0
    vmax = float(finite.max()) if finite.size else 1.0
    if vmax - vmin < 1e-6:
        vmin, vmax = vmin - 0.05, vmax + 0.05
    im = ax.imshow(np.ma.masked_invalid(matrix), cmap="magma", vmin=vmin, vmax=vmax,
                   aspect="auto")
    mid = (vmin + vmax) / 2
    for i in range(n_rows):
        for j in range(n_cols):
            v = matrix[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="black" if v > mid else "white")
    labels = cols
    if col_roles:
        labels = [f"{c}\n({r})" if r != "leak" else c for c, r in zip(cols, col_roles)]
    ax.set_xticks(range(n_cols), labels=labels, rotation=35, ha="right", fontsize=9)
    ax.set_yticks(range(n_rows), labels=rows, fontsize=9)
    ax.set_xlabel("neighbour concepts (what a form may be confused with or must keep)")
    ax.set_ylabel("candidate forms (best first)")
    ax.set_title(title, fontsize=11)
    if highlight_row is not None and 0 <= highlight_row < n_rows:
        ax.add_patch(Rectangle((-0.5, highlight_row - 0.5), n_cols, 1, fill=False,
                               edgecolor="#00c853", linewidth=3))
        ticks = ax.get_yticklabels()
        ticks[highlight_row].set_fontweight("bold")
        ticks[highlight_row].set_color("#00a040")
    fig.colorbar(im, ax=ax, label="cosine similarity", fraction=0.035, pad=0.02)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt)
    plt.close(fig)
    atomic_write_bytes(target, buf.getvalue())
    return target
