"""The token budget of shuffled captions: the exact odds that kohya's ``shuffle_caption`` with
``keep_tokens`` pushes a tag past the 75-token limit, and captions' token counts.

With ``shuffle_caption``, kohya splits a caption's first line at commas, keeps the first
``keep_tokens`` tags in place and shuffles the rest, joining them with ``", "``. It tokenizes
that text as written (underscores stay underscores) and cuts it after 75 tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache

from tagsmith.text.tokenizer import CHUNK_LENGTH, load_tokenizer

# -- tokens and truncation -----------------------------------------------------------------


def shuffled_cut_probabilities(
    fixed_lengths: Sequence[int], flex_lengths: Sequence[int], limit: int = CHUNK_LENGTH,
) -> list[float]:
    """For each shuffled tag, the probability that kohya's shuffle puts any of its tokens past
    ``limit`` (see ``shuffled_cut_batch``)."""
    return shuffled_cut_batch([(list(fixed_lengths), list(flex_lengths))], limit)[0]


def shuffled_cut_batch(
    captions: Sequence[tuple[Sequence[int], Sequence[int]]], limit: int = CHUNK_LENGTH,
) -> list[list[float]]:
    """Exact cut probabilities for many captions, each given as (token lengths of the fixed
    ``keep_tokens`` tags, token lengths of the shuffled tags).

    kohya trains on ``", ".join(fixed + shuffled(flex))``: every tag but the last is followed
    by one comma token (a tag ending in punctuation can merge with that comma into one token;
    ignored here). A shuffled tag of length n is cut when the tags shuffled ahead of it add up
    to more than ``limit - fixed - n`` tokens (each with its comma).

    Uniform shuffling is the same as giving every tag an independent uniform arrival time:
    given a tag's own time x, each other tag is ahead of it with probability x,
    independently. So P(cut) = integral over x in [0, 1] of P(sum of the Bernoulli(x)-chosen
    other tags > threshold). For fixed x, that sum's distribution is given by its generating
    function prod_i (1 - x + x z^w_i) at the roots of unity (discrete Fourier inversion, see
    ``_cut_odds_chunk``); the integrand is a polynomial of degree k in x (k = other tags), so
    Gauss-Legendre quadrature with more than k/2 nodes integrates it exactly. Captions are
    processed in vectorised chunks, one row per (caption, distinct tag length).
    """
    by_length: list[dict[int, float]] = [{} for _ in captions]  # tag length -> P(cut)
    rows: list[tuple[int, int, int]] = []  # (caption, removed step, threshold)
    for c, (fixed, flex) in enumerate(captions):
        fixed_tokens = sum(n + 1 for n in fixed)  # each fixed tag is followed by a comma
        if not flex or fixed_tokens + sum(n + 1 for n in flex) - 1 <= limit:
            continue  # the whole caption fits: nothing is ever cut
        for n in {n for n in flex if n > 0}:
            threshold = limit - fixed_tokens - n
            if threshold < 0:
                by_length[c][n] = 1.0
            else:
                rows.append((c, n + 1, threshold))
    steps = [[n + 1 for n in flex] for _, flex in captions]
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
        probs = _cut_odds_chunk(rows[start:end], steps, size, n_nodes + n_nodes % 2)
        for (c, step, _), prob in zip(rows[start:end], probs):
            by_length[c][step - 1] = prob
        start = end
    return [[odds.get(n, 0.0) for n in flex] for odds, (_, flex) in zip(by_length, captions)]


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


# A comma touching punctuation (underscore included: CLIP counts it as punctuation) can merge
# with it into one token, so the tag-by-tag sum would be off.
_COMMA_MERGES = re.compile(r"(?:[^\w\s]|_),|,(?:[^\w\s]|_)")


def caption_token_counts(
    lines: Sequence[str], parts: Sequence[Sequence[str]], lengths: dict[str, int]
) -> list[int]:
    """Tokens of each caption line: its tags' tokens plus one per comma, or, where a comma
    touches punctuation, the whole line encoded (exact either way, and the common case needs
    no second pass of the tokenizer over every caption)."""
    out = [sum(lengths[p] for p in ps) + len(ps) - 1 for ps in parts]
    exact = [i for i, line in enumerate(lines) if _COMMA_MERGES.search(line)]
    if exact:
        tok = load_tokenizer()
        for i, ids in zip(exact, tok.encode_batch([lines[i] for i in exact])):
            out[i] = len(ids)
    return out
