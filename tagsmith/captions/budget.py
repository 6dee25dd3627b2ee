"""The token budget of shuffled captions: the exact odds that kohya's ``shuffle_caption`` with
``keep_tokens`` pushes a tag past the 75-token limit, and captions' token counts.

With ``shuffle_caption``, kohya splits a caption's first line at commas, keeps the first
``keep_tokens`` tags in place (or those before its ``keep_tokens_separator``, and a suffix after
a second one) and shuffles the rest, joining them with ``", "``. It tokenizes that text as
written (underscores stay underscores, transformers' slow ``CLIPTokenizer`` cleaning) and cuts
it after 75 tokens, or 150 / 225 with ``max_token_length``.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

from tagsmith.text.tokenizer import CHUNK_LENGTH, load_tokenizer

# -- tokens and truncation -----------------------------------------------------------------


def shuffled_cut_probabilities(
    fixed_lengths: Sequence[int], flex_lengths: Sequence[int], limit: int = CHUNK_LENGTH,
    *, steps: tuple[Sequence[int], Sequence[int]] | None = None,
) -> list[float]:
    """For each shuffled tag, the probability that kohya's shuffle puts any of its tokens past
    ``limit`` (see ``shuffled_cut_batch``)."""
    return shuffled_cut_batch(
        [(list(fixed_lengths), list(flex_lengths))], limit,
        steps=None if steps is None else [steps],
    )[0]


def shuffled_cut_batch(
    captions: Sequence[tuple[Sequence[int], Sequence[int]]], limit: int = CHUNK_LENGTH,
    *, steps: Sequence[tuple[Sequence[int], Sequence[int]]] | None = None,
) -> list[list[float]]:
    """Exact cut probabilities for many captions, each given as (token lengths of the fixed
    ``keep_tokens`` tags, token lengths of the shuffled tags).

    kohya trains on ``", ".join(fixed + shuffled(flex))``. ``steps`` gives, per caption and in
    the same layout, how far each tag moves the tags after it: its tokens with the comma
    after it (``tag_steps``): usually length + 1, but a tag ending in punctuation merges with
    the comma into one token (``(kancolle),`` ends in ``),``), so its step is its length.
    Without ``steps`` every step is length + 1. A shuffled tag of length n is cut when the
    steps of the tags shuffled ahead of it add up to more than ``limit - fixed - n``.

    Uniform shuffling is the same as giving every tag an independent uniform arrival time:
    given a tag's own time x, each other tag is ahead of it with probability x,
    independently. So P(cut) = integral over x in [0, 1] of P(sum of the Bernoulli(x)-chosen
    other tags > threshold). For fixed x, that sum's distribution is given by its generating
    function prod_i (1 - x + x z^w_i) at the roots of unity (discrete Fourier inversion, see
    ``_cut_odds_chunk``); the integrand is a polynomial of degree k in x (k = other tags), so
    Gauss-Legendre quadrature with more than k/2 nodes integrates it exactly. Captions are
    processed in vectorised chunks, one row per (caption, distinct tag length).
    """
    if steps is None:
        steps = [([n + 1 for n in fixed], [n + 1 for n in flex]) for fixed, flex in captions]
    by_kind: list[dict[tuple[int, int], float]] = [{} for _ in captions]  # (n, step) -> P(cut)
    rows: list[tuple[int, int, int, int]] = []  # (caption, removed step, threshold, length)
    for c, ((_fixed, flex), (fixed_steps, flex_steps)) in enumerate(zip(captions, steps)):
        fixed_tokens = sum(fixed_steps)  # each fixed tag is followed by a comma
        if not flex:
            continue
        # The longest the caption gets: the last tag has no comma after it.
        longest = fixed_tokens + sum(flex_steps) - min(s - n for n, s in zip(flex, flex_steps))
        if longest <= limit:
            continue  # the whole caption fits: nothing is ever cut
        for n, step in {(n, s) for n, s in zip(flex, flex_steps) if n > 0}:
            threshold = limit - fixed_tokens - n
            if threshold < 0:
                by_kind[c][(n, step)] = 1.0
            else:
                rows.append((c, step, threshold, n))
    steps = [list(flex_steps) for _, flex_steps in steps]
    top = [sum(s) for s in steps]
    rows.sort(key=lambda r: (top[r[0]], len(steps[r[0]])))
    start = 0
    while start < len(rows):
        # Chunks of captions of similar size keep the arrays near a million numbers.
        first = rows[start]
        size = top[first[0]] + 1
        n_nodes = len(steps[first[0]]) // 2 + 1
        end = start + 1
        while end < len(rows):
            c = rows[end][0]
            grown_size = max(size, top[c] + 1)
            grown_nodes = max(n_nodes, len(steps[c]) // 2 + 1)
            if (end - start + 1) * (grown_size // 2 + 1) * (grown_nodes + 1) > 1_000_000:
                break
            size, n_nodes = grown_size, grown_nodes
            end += 1
        chunk = rows[start:end]
        probs = _cut_odds_chunk([r[:3] for r in chunk], steps, size, n_nodes + n_nodes % 2)
        for (c, step, _, n), prob in zip(chunk, probs):
            by_kind[c][(n, step)] = prob
        start = end
    return [
        [odds.get((n, s), 0.0) for n, s in zip(flex, flex_steps)]
        for odds, (_, flex), flex_steps in zip(by_kind, captions, steps)
    ]


def _cut_odds_chunk(rows, steps, size: int, n_nodes: int) -> list[float]:  # noqa: ANN001
    """P(cut) for rows of (caption, removed step, threshold); ``size`` > every sum of steps
    (so that no sum wraps around the roots of unity).

    Per caption, the generating function G(z) = prod_i (1 - x + x z^w_i) at the roots of
    unity; per row, one factor divided out and P(sum <= t) read directly off the spectrum as
    Re sum_j G_j D_j(t) / size with D_j(t) = sum_{s<=t} e^{2 pi i j s / size}. The sum's
    distribution is real, so half the spectrum suffices (the other half is its conjugate).
    """
    import numpy as np

    x, quad = _gauss_legendre_01(n_nodes)  # an even count keeps x off 1/2, where a factor is 0
    half = size // 2 + 1
    angle = 2 * np.pi * np.arange(half) / size
    captions = sorted({r[0] for r in rows})
    where = {c: i for i, c in enumerate(captions)}
    widths = sorted({w for c in captions for w in steps[c]})
    col = {w: i for i, w in enumerate(widths)}
    multiplicity = np.zeros((len(captions), len(widths)))
    for c in captions:
        for w in steps[c]:
            multiplicity[where[c], col[w]] += 1
    # Factors 1 - x + x z^w with z = e^{-i angle}, as log-modulus and argument so that each
    # caption's product is one matrix product (numpy's complex log and power are slow).
    phase_w = np.asarray(widths, dtype=np.float64)[:, None, None] * angle[None, None, :]
    re_part = 1 - x[None] + x[None] * np.cos(phase_w)
    im_part = -x[None] * np.sin(phase_w)
    factor = re_part + 1j * im_part  # (widths, nodes, half)
    log_mod = 0.5 * np.log(re_part * re_part + im_part * im_part)
    arg = np.arctan2(im_part, re_part)
    total_mod = np.einsum("cw,wgj->cgj", multiplicity, log_mod)
    total_arg = np.einsum("cw,wgj->cgj", multiplicity, arg)
    spectrum = np.exp(total_mod) * (np.cos(total_arg) + 1j * np.sin(total_arg))
    # D_j(t) for every threshold in the chunk, with the half-spectrum weights 1, 2, ..., 2, 1.
    thresholds = sorted({t for _, _, t in rows})
    t_col = {t: i for i, t in enumerate(thresholds)}
    # Geometric sums: D_j(t) = (1 - e^{i angle_j (t+1)}) / (1 - e^{i angle_j}), and t+1 at j=0.
    n_terms = np.minimum(thresholds, size - 1)[:, None] + 1.0  # (thresholds, 1)
    ratio = np.exp(1j * angle[1:])[None, :]
    partial = np.empty((len(thresholds), half), dtype=np.complex128)
    partial[:, 0] = n_terms[:, 0]
    partial[:, 1:] = (1 - ratio ** n_terms) / (1 - ratio)
    doubling = np.full(half, 2.0)
    doubling[0] = 1.0
    if size % 2 == 0:
        doubling[-1] = 1.0
    cdf_weights = partial * doubling / size
    ci = np.array([where[c] for c, _, _ in rows])
    wi = np.array([col[w] for _, w, _ in rows])
    ti = np.array([t_col[t] for _, _, t in rows])
    cdf = np.empty((len(rows), len(quad)))
    for k in range(len(widths)):
        # Rows that leave out a tag of this width: divide that factor out, read the CDF off.
        sel = np.flatnonzero(wi == k)
        if len(sel):
            variant = spectrum[ci[sel]] * (1 / factor[k])
            cdf[sel] = np.einsum("rgj,rj->rg", variant, cdf_weights[ti[sel]]).real
    return list(np.clip((1.0 - cdf) @ quad, 0.0, 1.0))


@lru_cache(maxsize=64)
def _gauss_legendre_01(n: int):  # noqa: ANN202 - (nodes as a column, weights) on [0, 1]
    import numpy as np

    nodes, weights = np.polynomial.legendre.leggauss(n)
    return ((nodes + 1) / 2)[:, None], weights / 2


def tag_steps(tags: Sequence[str], *, cleaning: str = "transformers") -> dict[str, tuple[int, int]]:
    """For each tag as written: (its tokens alone, its tokens followed by kohya's comma).

    kohya joins tags with ``", "``; a word never spans the space, so a caption's tokens are the
    sum of its tags' steps, the last tag counted alone. The second number is the length + 1,
    or the length where the tag's closing punctuation and the comma are one token (``),``).
    Text is cleaned as kohya's tokenizer (transformers' slow ``CLIPTokenizer``) cleans it.
    """
    tok = load_tokenizer()
    unique = list(dict.fromkeys(tags))
    alone = tok.encode_batch(unique, cleaning=cleaning)
    with_comma = tok.encode_batch([t + "," for t in unique], cleaning=cleaning)
    return {t: (len(a), len(b)) for t, a, b in zip(unique, alone, with_comma)}


def first_cut_in_written_order(
    line: str, ends: Sequence[int], limit: int = CHUNK_LENGTH, *, cleaning: str = "transformers"
) -> int | None:
    """The first tag with a token past ``limit`` when ``line`` is tokenized as written (no
    shuffle), given each tag's end offset in ``line``; None when none is. The tokens up to a
    tag's end only grow with the tag, so a binary search finds it in a few encodings."""
    tok = load_tokenizer()

    def past(i: int) -> bool:
        return len(tok.encode(line[: ends[i]], cleaning=cleaning)) > limit

    if not ends or not past(len(ends) - 1):
        return None
    lo, hi = 0, len(ends) - 1  # past(hi) holds
    while lo < hi:
        mid = (lo + hi) // 2
        if past(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo
