"""The dataset report ``tagsmith dataset`` prints: tag statistics, token budgets, entangled
tags, and notes about the files.

Statistics about what training sees (tag share per epoch, cut rates) weigh each caption by its
repeats; caption counts stay unweighted.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tagsmith.captions.budget import first_cut_in_written_order, shuffled_cut_batch, tag_steps
from tagsmith.captions.cooccurrence import (
    DEFAULT_MAX_Q,
    DEFAULT_MIN_SCORE,
    PairStat,
    TagCluster,
    always_present,
    attach_embeddings,
    build_cooccurrence,
    cluster_tags,
    default_min_support,
    strong_pairs,
)
from tagsmith.captions.files import Dataset, load_dataset
from tagsmith.captions.parse import (
    _cleaned,
    kohya_separator_groups,
    strip_weight_syntax,
    tag_key,
)
from tagsmith.errors import DatasetError
from tagsmith.text.tokenizer import CHUNK_LENGTH, load_tokenizer

MAX_TOKEN_LENGTHS = (75, 150, 225)  # kohya's --max_token_length choices (None = 75)

# -- the report ----------------------------------------------------------------------------


@dataclass
class LongCaption:
    """A caption past the token limit (75, or kohya's max_token_length) as written."""

    rel: str
    n_tokens: int
    cut_tags: list[str]  # tags with tokens past the limit, the line tokenized as written
    expected_cut_shuffled: float  # expected number of tags cut per shuffled epoch

    def to_dict(self) -> dict:
        d = asdict(self)
        d["expected_cut_shuffled"] = round(self.expected_cut_shuffled, 3)
        return d


@dataclass
class TokenStats:
    keep_tokens: int
    limit: int
    mean: float
    median: float
    p90: float
    max: int
    over_limit: list[LongCaption]  # file order, longest first
    shuffled_cut_share: float  # share of shuffled tag appearances (weighted) cut per epoch
    captions_at_risk: int  # captions long enough that some shuffle cuts a tag
    fixed_cut: int  # captions whose keep_tokens prefix alone passes the limit
    keep_tokens_separator: str = ""  # kohya's keep_tokens_separator ("" when not used)

    def to_dict(self) -> dict:
        return {
            "keep_tokens": self.keep_tokens,
            "limit": self.limit,
            "mean": round(self.mean, 2),
            "median": self.median,
            "p90": self.p90,
            "max": self.max,
            "over_limit": [c.to_dict() for c in self.over_limit],
            "shuffled_cut_share": round(self.shuffled_cut_share, 4),
            "captions_at_risk": self.captions_at_risk,
            "fixed_cut": self.fixed_cut,
            "keep_tokens_separator": self.keep_tokens_separator,
        }



@dataclass
class TagStat:
    tag: str  # analysed form
    captions: int
    share: float  # of captions
    weighted_share: float  # of per-epoch exposures (repeats)
    n_tokens: int  # tokens of its most common written form, as kohya tokenizes it
    forms: list[str]  # written forms, most common first ("red_hair", "red hair")
    cut_rate_file_order: float  # weighted share of its appearances past the limit, file order
    cut_rate_shuffled: float  # the same under shuffle_caption with keep_tokens

    def to_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass
class RepeatFolder:
    folder: str
    repeats: int
    captions: int

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class DatasetReport:
    root: str
    n_captions: int
    n_images: int
    repeat_folders: list[RepeatFolder]
    weighted: bool  # repeats differ between captions, so weighting changes numbers
    encodings: dict[str, int]
    tags: list[TagStat]  # most frequent first
    always_present: list[str]
    tokens: TokenStats
    min_support: int
    min_score: float
    max_q: float
    pairs: list[PairStat]
    clusters: list[TagCluster]
    embedding_note: str | None = None  # why the model column is missing, when it is
    notes: list[str] = field(default_factory=list)  # things about the files worth knowing
    orphans: list[str] = field(default_factory=list)
    uncaptioned_images: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "root": self.root,
            "n_captions": self.n_captions,
            "n_images": self.n_images,
            "repeat_folders": [r.to_dict() for r in self.repeat_folders],
            "weighted_by_repeats": self.weighted,
            "encodings": self.encodings,
            "tags": [t.to_dict() for t in self.tags],
            "always_present": self.always_present,
            "tokens": self.tokens.to_dict(),
            "min_support": self.min_support,
            "min_score": self.min_score,
            "max_q": self.max_q,
            "pairs": [p.to_dict() for p in self.pairs],
            "clusters": [c.to_dict() for c in self.clusters],
            "embedding_note": self.embedding_note,
            "notes": self.notes,
            "orphans": self.orphans,
            "uncaptioned_images": self.uncaptioned_images,
        }


def analyze_dataset(root: str | Path, **options: Any) -> DatasetReport:
    """Everything ``tagsmith dataset`` reports for the dataset at ``root``; ``options`` are
    ``report_from_dataset``'s."""
    return report_from_dataset(load_dataset(root), **options)


def report_from_dataset(
    ds: Dataset,
    *,
    keep_tokens: int = 0,
    min_support: int | None = None,
    min_score: float = DEFAULT_MIN_SCORE,
    max_q: float = DEFAULT_MAX_Q,
    embed: Callable[[list[str]], object] | None = None,
    max_pairs: int = 500,
    max_token_length: int = CHUNK_LENGTH,
    keep_tokens_separator: str = "",
    baseline: Callable[[], object] | None = None,
) -> DatasetReport:
    """The dataset report. ``embed`` maps texts to vectors (one row each); without it, clusters
    carry no embedding column. ``baseline()`` gives the model's baseline
    (tagsmith.model.calibration) that similarities are read against."""
    if keep_tokens < 0:
        raise DatasetError("keep_tokens must be 0 or more.")
    caps = ds.captions
    weights = [c.file.weight for c in caps]
    written = [_written_tags(c, keep_tokens_separator) for c in caps]
    co = build_cooccurrence([[key for _, key in tags] for tags in written], weights)
    n = len(caps)
    support = default_min_support(n) if min_support is None else max(1, min_support)
    pairs = strong_pairs(co, min_support=support, min_score=min_score, max_q=max_q)
    clusters = cluster_tags(co, pairs, min_score=min_score)
    if max_token_length not in MAX_TOKEN_LENGTHS:
        raise DatasetError(
            f"max_token_length must be one of {', '.join(map(str, MAX_TOKEN_LENGTHS))} "
            "(kohya's --max_token_length; 75 is its default)."
        )
    tokens, cut_file, cut_shuffled, token_lengths = _token_stats(
        ds, keep_tokens, max_token_length, keep_tokens_separator
    )

    forms: dict[str, Counter] = defaultdict(Counter)
    for tags in written:
        for text, key in tags:
            forms[key][text] += 1
    # A form written with weight syntax, "(masterpiece:1.2)", is counted without it.
    missing = {f.most_common(1)[0][0] for f in forms.values()} - token_lengths.keys()
    token_lengths.update({t: n for t, (n, _) in tag_steps(sorted(missing)).items()})
    total_w = co.total_weight
    tag_stats: list[TagStat] = []
    order = sorted(range(len(co.tags)), key=lambda i: (-int(co.counts[i]), co.tags[i]))
    for i in order:
        key = co.tags[i]
        common = [f for f, _ in forms[key].most_common()]
        wc = float(co.weighted_counts[i])
        tag_stats.append(
            TagStat(
                tag=key, captions=int(co.counts[i]), share=float(co.counts[i]) / n,
                weighted_share=wc / total_w, n_tokens=token_lengths.get(common[0], 0),
                forms=common, cut_rate_file_order=cut_file.get(key, 0.0) / wc if wc else 0.0,
                cut_rate_shuffled=cut_shuffled.get(key, 0.0) / wc if wc else 0.0,
            )
        )
    embedding_note = None
    if embed is not None and clusters:
        attach_embeddings(clusters, [t.tag for t in tag_stats], embed, baseline)
    reps = sorted(
        Counter((c.file.repeat_folder, c.file.repeats) for c in caps).items(),
        key=lambda kv: kv[0][0],
    )
    repeat_folders = [RepeatFolder(folder=f or ".", repeats=r, captions=k) for (f, r), k in reps]
    weighted = len({c.file.weight for c in caps}) > 1
    return DatasetReport(
        root=str(ds.root),
        n_captions=n,
        n_images=sum(len(c.file.images) for c in caps),
        repeat_folders=repeat_folders,
        weighted=weighted,
        encodings=dict(Counter(c.decoded.label for c in caps).most_common()),
        tags=tag_stats,
        always_present=always_present(co) if n > 1 else [],
        tokens=tokens,
        min_support=support,
        min_score=min_score,
        max_q=max_q,
        pairs=pairs[:max_pairs],
        clusters=clusters,
        embedding_note=embedding_note,
        notes=_file_notes(ds),
        orphans=list(ds.files.orphans),
        uncaptioned_images=list(ds.files.uncaptioned_images),
    )


def _written_tags(caption, separator: str) -> list[tuple[str, str]]:  # noqa: ANN001 - Caption
    """(text, key) of a caption's first-line tags; a kohya ``keep_tokens_separator`` inside a
    tag's text separates tags too (``a ||| b`` is ``a`` and ``b``), its first two in the line
    only, as kohya splits (``a|||b|||c|||d``: ``a``, ``b`` and ``c|||d``)."""
    if not separator or separator not in caption.first_line:
        return [(t.text, t.key) for t in caption.first_line_tags]
    out = []
    splits_left = 2
    for t in caption.first_line_tags:
        if separator not in t.text or not splits_left:
            out.append((t.text, t.key))
            continue
        pieces = t.text.split(separator, splits_left)
        splits_left -= len(pieces) - 1
        for piece in pieces:
            text = strip_weight_syntax(piece)
            if text and tag_key(text):
                out.append((text, tag_key(text)))
    return out


def _written_units(line: str, separator: str) -> list[tuple[int, int]]:
    """(start, end) of each tag of ``line`` as written: split at commas and, when given, at
    kohya's first two ``keep_tokens_separator``s; ``end`` leaves trailing spaces out."""
    cuts: list[tuple[int, int]] = []  # delimiter spans
    if separator:
        at = -len(separator)
        for _ in range(2):
            at = line.find(separator, at + len(separator))
            if at < 0:
                break
            cuts.append((at, at + len(separator)))
    units, start = [], 0
    for i, ch in enumerate(line):
        if ch == "," and not any(a <= i < b for a, b in cuts):
            cuts.append((i, i + 1))
    for a, b in sorted(cuts):
        units.append((start, start + len(line[start:a].rstrip())))
        start = b
    units.append((start, start + len(line[start:].rstrip())))
    return units


def _token_stats(
    ds: Dataset, keep_tokens: int, limit: int = CHUNK_LENGTH, separator: str = ""
) -> tuple[TokenStats, dict[str, float], dict[str, float], dict[str, int]]:
    """Token counts as kohya sees captions, and weighted cut exposure per tag key.

    As written (no shuffle), each first line is tokenized as it stands. Shuffled, kohya
    rejoins the tags with ``", "``: the fixed tags (``keep_tokens``, or those before
    ``separator``) first, then the shuffled ones, then a fixed suffix (after a second
    ``separator``).
    """
    import numpy as np

    tok = load_tokenizer()
    caps = ds.captions
    groups = []
    for c in caps:
        g = kohya_separator_groups(c.first_line, separator) if separator else None
        if g is None:
            g = (c.parts[:keep_tokens], c.parts[keep_tokens:], [])
        groups.append(g)
    sizes = tag_steps([p for g in groups for grp in g for p in grp] + [p for c in caps
                                                                       for p in c.parts])
    lengths = {p: n for p, (n, _) in sizes.items()}
    totals = [len(ids) for ids in tok.encode_batch([c.first_line for c in caps],
                                                   cleaning="transformers")]
    part_keys = {p: tag_key(strip_weight_syntax(p)) if p else "" for p in sizes}
    cut_file: dict[str, float] = {}
    cut_shuffled: dict[str, float] = {}
    over: list[LongCaption] = []
    shuffled_cut_weight = 0.0
    shuffled_weight = 0.0
    at_risk = 0
    fixed_cut = 0
    odds = shuffled_cut_batch(
        [([sizes[p][0] for p in fixed], [sizes[p][0] for p in flex]) for fixed, flex, _ in groups],
        limit,
        steps=[([sizes[p][1] for p in fixed], [sizes[p][1] for p in flex])
               for fixed, flex, _ in groups],
    )
    for cap, (fixed, flex, suffix), total, probs in zip(caps, groups, totals, odds):
        w = cap.file.weight
        # As written: where each tag's tokens fall in the first line as it stands.
        cut_here: list[str] = []
        if total > limit:
            units = _written_units(cap.first_line, separator)
            first = first_cut_in_written_order(cap.first_line, [end for _, end in units], limit)
            if first is not None:
                for start, end in units[first:]:
                    p = cap.first_line[start:end].strip()
                    key = part_keys[p] if p in part_keys else (
                        tag_key(strip_weight_syntax(p)) if p else "")
                    if p:
                        cut_here.append(p)
                        if key:
                            cut_file[key] = cut_file.get(key, 0.0) + w
        # Shuffled: fixed tags and the suffix sit where they are; the rest move.
        suffix_start = sum(sizes[p][1] for p in fixed) + sum(sizes[p][1] for p in flex)
        for tags_in_place, pos in ((fixed, 0), (suffix, suffix_start)):
            for p in tags_in_place:
                n_tok, step = sizes[p]
                if n_tok and pos + n_tok > limit and part_keys[p]:
                    cut_shuffled[part_keys[p]] = cut_shuffled.get(part_keys[p], 0.0) + w
                pos += step
        if fixed and sum(sizes[p][1] for p in fixed) - 1 > limit:
            fixed_cut += 1
        for p, prob in zip(flex, probs):
            key = part_keys[p]
            if key and prob:
                cut_shuffled[key] = cut_shuffled.get(key, 0.0) + w * prob
            if sizes[p][0]:
                shuffled_weight += w
                shuffled_cut_weight += w * prob
        if any(probs):
            at_risk += 1
        if total > limit:
            over.append(
                LongCaption(
                    rel=cap.file.rel, n_tokens=total, cut_tags=cut_here,
                    expected_cut_shuffled=float(sum(probs)),
                )
            )
    over.sort(key=lambda c: (-c.n_tokens, c.rel))
    arr = np.asarray(totals) if totals else np.zeros(1)
    stats = TokenStats(
        keep_tokens=keep_tokens,
        limit=limit,
        mean=float(arr.mean()),
        median=float(np.median(arr)),
        p90=float(np.percentile(arr, 90)),
        max=int(arr.max()),
        over_limit=over,
        shuffled_cut_share=shuffled_cut_weight / shuffled_weight if shuffled_weight else 0.0,
        captions_at_risk=at_risk,
        fixed_cut=fixed_cut,
        keep_tokens_separator=separator,
    )
    return stats, cut_file, cut_shuffled, lengths


def _file_notes(ds: Dataset) -> list[str]:
    notes: list[str] = []
    caps = ds.captions
    not_utf8 = Counter(c.decoded.label for c in caps if c.decoded.encoding != "utf-8")
    if not_utf8:
        k = sum(not_utf8.values())
        detail = ", ".join(
            f"{name}: {v}" for name, v in sorted(not_utf8.items(), key=lambda kv: (-kv[1], kv[0]))
        )
        notes.append(
            f"{k} caption file{'s are' if k != 1 else ' is'} not UTF-8 ({detail}); kohya reads "
            "captions as UTF-8 and stops with an error on them (`tagsmith retag` keeps each "
            "file's encoding)"
        )
    multi = [c.file.rel for c in caps if c.n_lines > 1]
    if multi:
        notes.append(
            f"{len(multi)} caption file{'s have' if len(multi) != 1 else ' has'} more than one "
            f"line (e.g. {multi[0]}); kohya reads only the first line, and so do these "
            "statistics"
        )
    empty = [c.file.rel for c in caps if not c.first_line_tags]
    if empty:
        notes.append(
            f"{len(empty)} caption{'s are' if len(empty) != 1 else ' is'} empty (e.g. "
            f"{empty[0]}); kohya trains those images with an empty caption"
        )
    stray = [
        c.file.rel for c in caps
        if c.first_line_tags and any(not p for p in c.parts)
    ]
    if stray:
        notes.append(
            f"{len(stray)} caption{'s have' if len(stray) != 1 else ' has'} empty tags from a "
            f"trailing or doubled comma (e.g. {stray[0]}); kohya keeps them as empty entries "
            "and shuffle_caption scatters the stray commas"
        )
    dupes = [
        c.file.rel for c in caps
        if len({t.key for t in c.first_line_tags}) < len(c.first_line_tags)
    ]
    if dupes:
        notes.append(
            f"{len(dupes)} caption{'s repeat' if len(dupes) != 1 else ' repeats'} a tag (e.g. "
            f"{dupes[0]}); statistics count it once per caption"
        )
    forms: dict[str, set[str]] = {}
    for c in caps:
        for t in c.first_line_tags:
            # Case and spacing do not reach the tokenizer; underscores and escapes do.
            forms.setdefault(t.key, set()).add(_cleaned(t.text))
    mixed = sorted(k for k, v in forms.items() if len(v) > 1)
    if mixed:
        example = " / ".join(sorted(forms[mixed[0]])[:3])
        notes.append(
            f"{len(mixed)} tag{'s are' if len(mixed) != 1 else ' is'} written in more than one "
            f"form (e.g. {example}); kohya tokenizes each form as written, so they train as "
            "different text"
        )
    if ds.files.shadowed:
        k = len(ds.files.shadowed)
        notes.append(
            f"{k} .caption file{'s were' if k != 1 else ' was'} "
            f"ignored because a .txt caption sits beside the same image (e.g. "
            f"{ds.files.shadowed[0].rel}); `tagsmith retag` rewrites both"
        )
    if ds.files.orphans:
        k = len(ds.files.orphans)
        example = ds.files.orphans[0]
        notes.append(
            f"1 .txt/.caption file has no image beside it ({example}); it is not a caption and "
            "was left out"
            if k == 1 else
            f"{k} .txt/.caption files have no image beside them (e.g. {example}); they are not "
            "captions and were left out"
        )
    if ds.files.uncaptioned_images:
        k = len(ds.files.uncaptioned_images)
        notes.append(
            f"{k} image{'s have' if k != 1 else ' has'} no caption file (e.g. "
            f"{ds.files.uncaptioned_images[0]}); kohya trains {'them' if k != 1 else 'it'} with "
            "the repeat folder's class name as caption"
        )
    in_repeat = any(c.file.repeat_folder for c in caps)
    outside = [c.file.rel for c in caps if not c.file.repeat_folder]
    if in_repeat and outside:
        notes.append(
            f"{len(outside)} caption{'s lie' if len(outside) != 1 else ' lies'} outside any "
            f"N_name repeat folder (e.g. {outside[0]}); kohya's folder mode skips "
            f"{'them, here they count' if len(outside) != 1 else 'it, here it counts'} once"
        )
    return notes
