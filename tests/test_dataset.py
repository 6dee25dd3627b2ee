"""Reading kohya caption folders and the statistics `tagsmith dataset` reports.

Numbers are checked against hand computations: hypergeometric tails summed with math.comb,
NPMI/phi from the 2x2 table written out, shuffle odds by enumerating every permutation, token
counts from the independent reference BPE in tests/reference_clip_bpe.py.
"""

from __future__ import annotations

import itertools
import math
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagsmith.captions import budget as budget_mod
from tagsmith.captions import cooccurrence as cooc_mod
from tagsmith.captions import parse as parse_mod
from tagsmith.captions.budget import shuffled_cut_probabilities
from tagsmith.captions.cooccurrence import (
    build_cooccurrence,
    correlated_tags,
    most_similar_tag,
    pair_stat,
    strong_pairs,
)
from tagsmith.captions.files import decode_caption_bytes, find_caption_files, load_dataset
from tagsmith.captions.parse import kohya_parts, parse_caption_text
from tagsmith.captions.report import analyze_dataset
from tagsmith.errors import DatasetError

BACKGROUND = [
    "outdoors", "sky", "cloud", "tree", "smile", "open mouth", "looking at viewer", "standing",
    "sitting", "from side", "window", "indoors", "day", "night", "grass", "flower",
]


def write_caption(folder: Path, stem: str, text: str | bytes, image_ext: str = ".png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}{image_ext}").write_bytes(b"\x89PNG")
    path = folder / f"{stem}.txt"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def planted_dataset(root: Path, n: int = 100, seed: int = 0) -> Path:
    """A trigger in every caption; red hair + school uniform always together in 90% of
    captions; a three-tag character cluster in 40%; alpha + beta together in exactly two
    captions and nowhere else; background tags independent at 25%."""
    rng = random.Random(seed)
    for i in range(n):
        tags = ["mychar"]
        if i < int(0.9 * n):
            tags += ["red hair", "school uniform"]
        if i in (3, 50):
            tags += ["alpha", "beta"]
        if i % 5 < 2:
            tags += ["eris greyrat", "blue dress", "hair ribbon"]
        tags += [t for t in BACKGROUND if rng.random() < 0.25]
        head, rest = tags[:1], tags[1:]
        rng.shuffle(rest)
        write_caption(root, f"img{i:03d}", ", ".join(head + rest))
    return root


# -- encodings ------------------------------------------------------------------------------

TEXT = "1girl, café, hijikata_toushirou_\\(gintama\\), (red hair:1.2)\r\nsecond line,"


@pytest.mark.parametrize(
    ("raw", "encoding", "bom", "label"),
    [
        (TEXT.encode("utf-8"), "utf-8", b"", "UTF-8"),
        (b"\xef\xbb\xbf" + TEXT.encode("utf-8"), "utf-8", b"\xef\xbb\xbf", "UTF-8 with BOM"),
        (TEXT.encode("utf-16"), "utf-16-le", b"\xff\xfe", "UTF-16 LE with BOM"),
        (b"\xfe\xff" + TEXT.encode("utf-16-be"), "utf-16-be", b"\xfe\xff", "UTF-16 BE with BOM"),
        (TEXT.encode("utf-16-le"), "utf-16-le", b"", "UTF-16 LE"),
        (TEXT.encode("utf-32"), "utf-32-le", b"\xff\xfe\x00\x00", "UTF-32 LE with BOM"),
        (TEXT.encode("cp1252"), "cp1252", b"", "CP1252"),
    ],
)
def test_decode_round_trips_every_encoding(raw, encoding, bom, label):
    d = decode_caption_bytes(raw)
    assert d.text == TEXT
    assert (d.encoding, d.bom, d.label) == (encoding, bom, label)
    assert d.encode(d.text) == raw


def test_cp1252_smart_quotes_and_latin1_fallback():
    raw = "“quoted” tag, naïve".encode("cp1252")
    d = decode_caption_bytes(raw)
    assert d.encoding == "cp1252" and d.text == "“quoted” tag, naïve"
    undefined_in_cp1252 = b"tag\x81, other"
    d = decode_caption_bytes(undefined_in_cp1252)
    assert d.encoding == "latin-1"
    assert d.encode(d.text) == undefined_in_cp1252


def test_empty_file_decodes_to_empty_text():
    d = decode_caption_bytes(b"")
    assert (d.text, d.encoding) == ("", "utf-8")
    assert [t.key for t in parse_caption_text("")] == [""]


# -- parsing --------------------------------------------------------------------------------


def test_parse_weights_escapes_emoticons_and_groups():
    text = (
        "a, (red hair:1.2), ((blue eyes)), [blurry], hijikata_toushirou_\\(gintama\\), :), "
        ">_<, (o)(o),\r\n(white shirt, Black_Skirt:1.3), ,trail,"
    )
    tags = parse_caption_text(text)
    got = [(t.text, t.key, t.line, t.weighted) for t in tags]
    assert got == [
        ("a", "a", 0, False),
        ("red hair", "red hair", 0, True),
        ("blue eyes", "blue eyes", 0, True),
        ("blurry", "blurry", 0, True),
        ("hijikata_toushirou_\\(gintama\\)", "hijikata toushirou (gintama)", 0, False),
        (":)", ":)", 0, False),
        (">_<", ">_<", 0, False),
        ("(o)(o)", "(o)(o)", 0, False),
        ("", "", 0, False),  # between the last comma and the CRLF
        ("white shirt", "white shirt", 1, True),
        ("Black_Skirt", "black skirt", 1, True),
        ("", "", 1, False),
        ("trail", "trail", 1, False),
        ("", "", 1, False),  # trailing comma
    ]
    for t in tags:
        assert text[t.start:t.end] == t.text


@given(
    st.lists(
        st.tuples(
            st.text(alphabet="abcxyz_ -()\\:.12", min_size=0, max_size=12),
            st.sampled_from([",", ", ", " , ", "\n", "\r\n", ",\r\n"]),
        ),
        min_size=1, max_size=8,
    )
)
@settings(max_examples=200, deadline=None)
def test_parse_spans_always_point_at_the_tag_text(pieces):
    text = "".join(t + sep for t, sep in pieces)
    tags = parse_caption_text(text)
    # One entry per separator-delimited segment, in order, spans inside their segments.
    assert len(tags) == len(parse_mod._SEPARATOR.findall(text)) + 1
    prev_end = 0
    for t in tags:
        assert text[t.start:t.end] == t.text
        assert t.seg_start <= t.start <= t.end <= t.seg_end
        assert t.seg_start >= prev_end
        prev_end = t.seg_end


def test_kohya_parts_follow_first_line_split_and_strip():
    assert kohya_parts(" a ,b,, c ,\r\nsecond, line") == ["a", "b", "", "c", ""]
    assert kohya_parts("") == [""]


# -- finding files --------------------------------------------------------------------------


def test_find_files_repeats_orphans_hidden_and_shadowed(tmp_path):
    root = tmp_path / "ds"
    write_caption(root, "top", "a")
    write_caption(root / "10_mychar", "one", "b")
    write_caption(root / "10_mychar" / "nested", "two", "c", image_ext=".JPG")
    write_caption(root / "3_other" / "2_inner", "three", "d", image_ext=".webp")
    write_caption(root / ".tagsmith-backup" / "x", "hidden", "e")
    (root / "10_mychar" / "README.txt").write_text("notes, not a caption")
    (root / "10_mychar" / "lonely.png").write_bytes(b"")
    (root / "10_mychar" / "one.caption").write_text("b from caption file")
    (root / "10_mychar" / "one.jpg").write_bytes(b"")  # two images share one.txt
    found = find_caption_files(root)
    by_rel = {c.rel: c for c in found.captions}
    assert sorted(by_rel) == [
        "10_mychar/nested/two.txt", "10_mychar/one.txt", "3_other/2_inner/three.txt", "top.txt",
    ]
    assert by_rel["top.txt"].repeats == 1 and by_rel["top.txt"].repeat_folder == ""
    assert by_rel["10_mychar/one.txt"].repeats == 10
    assert by_rel["10_mychar/one.txt"].images == ("10_mychar/one.jpg", "10_mychar/one.png")
    assert by_rel["10_mychar/one.txt"].weight == 20
    assert by_rel["10_mychar/nested/two.txt"].repeats == 10  # nearest repeat folder above
    assert by_rel["3_other/2_inner/three.txt"].repeats == 2  # the nearest one wins
    assert found.orphans == ["10_mychar/README.txt"]
    assert found.uncaptioned_images == ["10_mychar/lonely.png"]
    assert [c.rel for c in found.shadowed] == ["10_mychar/one.caption"]
    assert found.repeat_folders == {"10_mychar": 10, "3_other": 3, "3_other/2_inner": 2}


def test_root_named_as_repeat_folder_gives_its_repeats(tmp_path):
    root = tmp_path / "5_subject"
    write_caption(root, "a", "x")
    assert find_caption_files(root).captions[0].repeats == 5


def test_missing_and_empty_folders_are_one_sentence(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DatasetError, match="is not a folder"):
        load_dataset(tmp_path / "file.txt")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("a, b")
    with pytest.raises(DatasetError, match=r"no caption files beside images.*notes\.txt"):
        load_dataset(empty)


# -- pair statistics against hand computations ----------------------------------------------


def _hypergeom_tail(n: int, ka: int, kb: int, c: int) -> float:
    return sum(math.comb(ka, x) * math.comb(n - ka, kb - x) for x in range(c, min(ka, kb) + 1)) / (
        math.comb(n, kb)
    )


def test_pair_numbers_match_hand_computation():
    # 20 captions: a in 8, b in 6, together in 5.
    sets = [["a", "b"]] * 5 + [["a"]] * 3 + [["b"]] * 1 + [["z"]] * 11
    co = build_cooccurrence(sets, [1] * 20)
    pairs = strong_pairs(co, min_support=3, min_score=-1, max_q=1)
    p = next(p for p in pairs if (p.a, p.b) == ("a", "b"))
    p_ab, p_a, p_b = 5 / 20, 8 / 20, 6 / 20
    assert p.together == 5 and (p.count_a, p.count_b) == (8, 6)
    assert p.lift == pytest.approx(p_ab / (p_a * p_b))
    assert p.npmi == pytest.approx(math.log(p_ab / (p_a * p_b)) / -math.log(p_ab))
    assert p.phi == pytest.approx(
        (p_ab - p_a * p_b) / math.sqrt(p_a * (1 - p_a) * p_b * (1 - p_b))
    )
    assert p.p_b_given_a == pytest.approx(5 / 8) and p.p_a_given_b == pytest.approx(5 / 6)
    assert p.score == pytest.approx(p.npmi * (5 / 6) * (6 / 7))
    assert p.p_value == pytest.approx(_hypergeom_tail(20, 8, 6, 5))


def test_repeats_weight_strength_but_not_support(tmp_path):
    root = tmp_path / "ds"
    # 10x folder: 2 captions with a+b; 1x folder: 2 with a only, 4 with c.
    for i in range(2):
        write_caption(root / "10_x", f"ab{i}", "a, b")
        write_caption(root / "1_y", f"a{i}", "a")
    for i in range(4):
        write_caption(root / "1_y", f"c{i}", "c")
    report = analyze_dataset(root, min_support=2, min_score=-1, max_q=1)
    assert report.weighted
    total = 2 * 10 + 2 + 4
    tag = {t.tag: t for t in report.tags}
    assert tag["a"].captions == 4 and tag["a"].share == pytest.approx(4 / 8)
    assert tag["a"].weighted_share == pytest.approx(22 / total)
    p = next(p for p in report.pairs if (p.a, p.b) == ("a", "b"))
    assert p.together == 2  # support counted in captions
    assert p.p_b_given_a == pytest.approx(20 / 22)  # strength weighted by repeats
    assert p.lift == pytest.approx((20 / total) / ((22 / total) * (20 / total)))


def test_planted_correlations_are_found_and_rare_pairs_rank_below(tmp_path):
    root = planted_dataset(tmp_path / "ds")
    report = analyze_dataset(root)
    names = [(p.a, p.b) for p in report.pairs]
    assert names[0] == ("red hair", "school uniform")  # seen in 90% of captions
    assert set(names[1:4]) == {
        ("blue dress", "eris greyrat"), ("blue dress", "hair ribbon"),
        ("eris greyrat", "hair ribbon"),
    }
    assert ("alpha", "beta") not in names  # two captions: below the minimum support
    assert len(names) == 4  # independent background tags produce no pair
    clusters = [sorted(c.tags) for c in report.clusters]
    assert sorted(clusters) == [
        ["blue dress", "eris greyrat", "hair ribbon"], ["red hair", "school uniform"],
    ]
    assert report.always_present == ["mychar"]
    # Even with the support lowered so that the rare pair is eligible, it ranks below.
    loose = analyze_dataset(root, min_support=2)
    ranked = [(p.a, p.b) for p in loose.pairs]
    assert ("alpha", "beta") in ranked
    assert ranked.index(("red hair", "school uniform")) < ranked.index(("alpha", "beta"))
    rare = next(p for p in loose.pairs if (p.a, p.b) == ("alpha", "beta"))
    assert rare.npmi == pytest.approx(1.0)  # as exclusive as it gets; the discount ranks it
    assert rare.score == pytest.approx(1.0 * (2 / 3) * (2 / 3))


@pytest.mark.parametrize("n", [20, 60, 200])
def test_independent_tags_give_no_pairs(n):
    rng = random.Random(n)
    rates = [rng.choice([0.1, 0.2, 0.3, 0.5, 0.7]) for _ in range(40)]
    sets = [[f"t{k}" for k, r in enumerate(rates) if rng.random() < r] for _ in range(n)]
    co = build_cooccurrence(sets, [rng.choice([1, 10]) for _ in range(n)])
    assert strong_pairs(co, min_support=cooc_mod.default_min_support(n)) == []


@given(st.integers(1, 60).flatmap(lambda n: st.tuples(
    st.just(n), st.integers(0, n), st.integers(0, n), st.integers(0, n))))
@settings(max_examples=300, deadline=None)
def test_hypergeometric_tail_matches_exact_sums(args):
    n, ka, kb, k = args
    lo, hi = max(0, ka + kb - n), min(ka, kb)
    k = min(max(k, lo), hi + 1)
    exact = sum(math.comb(ka, x) * math.comb(n - ka, kb - x) for x in range(k, hi + 1)) / (
        math.comb(n, kb)
    )
    got = float(cooc_mod.hypergeom_tail([k], n, [ka], [kb])[0])
    assert got == pytest.approx(exact, rel=1e-9, abs=1e-15)


def test_benjamini_hochberg_matches_definition():
    p = np.array([0.01, 0.04, 0.03, 0.2])
    q = cooc_mod.benjamini_hochberg(p)
    # sorted p: .01 .03 .04 .2 -> p*m/rank: .04 .06 .0533 .2 -> running min from the top
    assert q == pytest.approx([0.04, 0.0533333, 0.0533333, 0.2])


def test_pair_stat_both_in_every_caption_is_neutral():
    s = pair_stat("a", "b", 10, 10, 10, 10.0, 10.0, 10.0, 10.0)
    assert (s.npmi, s.lift, s.phi, s.score) == (0.0, 1.0, 0.0, 0.0)


def test_average_linkage_does_not_chain_through_a_shared_tag():
    # Two tight groups; "1girl" rides with group A in half its captions and group B in half.
    sets = []
    for i in range(60):
        if i < 20:
            sets.append(["a1", "a2"] + (["1girl"] if i % 2 else []))
        elif i < 40:
            sets.append(["b1", "b2"] + (["1girl"] if i % 2 else []))
        else:
            sets.append(["noise"])
    co = build_cooccurrence(sets, [1] * 60)
    pairs = strong_pairs(co, min_support=3, min_score=0.0, max_q=1)
    clusters = [sorted(c.tags) for c in cooc_mod.cluster_tags(co, pairs, min_score=0.3)]
    assert ["a1", "a2"] in clusters and ["b1", "b2"] in clusters
    assert not any(set(c) >= {"a1", "b1"} for c in clusters)


# -- embeddings -----------------------------------------------------------------------------


def test_cluster_collision_uses_the_dataset_baseline(tmp_path):
    root = planted_dataset(tmp_path / "ds")
    rng = np.random.default_rng(0)
    vectors: dict[str, np.ndarray] = {}

    def embed(texts: list[str]) -> np.ndarray:
        out = []
        for t in texts:
            if t not in vectors:
                vectors[t] = rng.standard_normal(32)
            out.append(vectors[t])
        return np.stack(out)

    base = rng.standard_normal(32)
    vectors["red hair"] = base
    vectors["school uniform"] = base + 0.05 * rng.standard_normal(32)  # nearly the same
    report = analyze_dataset(root, embed=embed)
    by_tags = {tuple(sorted(c.tags)): c for c in report.clusters}
    hot = by_tags[("red hair", "school uniform")].embedding
    cold = by_tags[("blue dress", "eris greyrat", "hair ribbon")].embedding
    assert hot.collision and hot.close_pairs == [("red hair", "school uniform")]
    # Without a model baseline, the dataset's frequent tags are the reference: the planted
    # pair is closer than every other pair of them (it is one of them itself).
    n = len(report.tags)
    assert hot.pairs[0][3] == pytest.approx(100.0 * (n * (n - 1) / 2 - 1) / (n * (n - 1) / 2))
    mean = np.mean([vectors[t.tag] for t in report.tags], axis=0)
    a, b = vectors["red hair"] - mean, vectors["school uniform"] - mean
    cos = float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b))
    assert hot.pairs[0][2] == pytest.approx(cos, abs=1e-5)
    assert not cold.collision
    assert report.to_dict()["clusters"][0]["embedding"] is not None


def test_embed_returning_none_leaves_the_column_empty(tmp_path):
    report = analyze_dataset(planted_dataset(tmp_path / "ds"), embed=lambda texts: None)
    assert all(c.embedding is None for c in report.clusters)


# -- tokens and shuffling ------------------------------------------------------------------


def _brute_force_cut(fixed: list[int], flex: list[int], limit: int) -> list[float]:
    start = sum(n + 1 for n in fixed)
    hits = [0] * len(flex)
    perms = list(itertools.permutations(range(len(flex))))
    for perm in perms:
        pos = start
        for j in perm:
            if flex[j] and pos + flex[j] > limit:
                hits[j] += 1
            pos += flex[j] + 1
    return [h / len(perms) for h in hits]


@given(
    st.lists(st.integers(0, 9), min_size=0, max_size=2),
    st.lists(st.integers(0, 12), min_size=1, max_size=6),
    st.integers(5, 40),
)
@settings(max_examples=150, deadline=None)
def test_shuffle_cut_odds_equal_permutation_enumeration(fixed, flex, limit):
    got = shuffled_cut_probabilities(fixed, flex, limit)
    assert got == pytest.approx(_brute_force_cut(fixed, flex, limit), abs=1e-12)


def test_batched_chunks_agree_with_one_caption_at_a_time():
    rng = random.Random(3)
    jobs = [
        ([rng.randint(1, 6) for _ in range(rng.randint(0, 2))],
         [rng.randint(0, 9) for _ in range(rng.randint(1, 40))])
        for _ in range(60)
    ]
    batch = budget_mod.shuffled_cut_batch(jobs, 40)
    for (fixed, flex), got in zip(jobs, batch):
        assert got == pytest.approx(shuffled_cut_probabilities(fixed, flex, 40), abs=1e-9)
    small = [(f, x) for f, x in jobs if len(x) <= 7]
    for (fixed, flex), got in zip(small, budget_mod.shuffled_cut_batch(small, 40)):
        assert got == pytest.approx(_brute_force_cut(fixed, flex, 40), abs=1e-9)


def test_a_long_caption_with_hundreds_of_tags_stays_exact():
    flex = [1, 2] * 150
    probs = shuffled_cut_probabilities([], flex, 75)
    # Closed form for two lengths is messy; check symmetry and the overall expectation
    # instead: the expected number of tags that start before token 75 is bounded by it.
    assert all(0 <= p <= 1 for p in probs)
    assert probs[0] == pytest.approx(probs[2]) and probs[1] == pytest.approx(probs[3])
    expected_kept = sum(1 - p for p in probs)
    assert 75 / 3 - 2 < expected_kept < 75 / 2.5 + 2  # steps are 2 or 3 tokens per tag


def test_token_counts_and_cut_tags_against_reference_bpe(tmp_path):
    from reference_clip_bpe import ReferenceClipBpe

    ref = ReferenceClipBpe()
    tags = [f"tag{chr(97 + i)} extra_word_{chr(97 + i)}" for i in range(14)]
    line = ", ".join(tags)
    root = tmp_path / "ds"
    write_caption(root, "long", line + "\nignored second line, with, many, tags")
    write_caption(root, "short", "1girl, solo")
    report = analyze_dataset(root, keep_tokens=1)
    tk = report.tokens
    n_long = len(ref.encode(line))
    assert n_long > 75
    assert tk.max == n_long and len(tk.over_limit) == 1
    # Which tags lose tokens, from the reference's own positions tag by tag.
    pos, expected_cut = 0, []
    for t in tags:
        n = len(ref.encode(t))
        if pos + n > 75:
            expected_cut.append(t)
        pos += n + 1
    assert tk.over_limit[0].cut_tags == expected_cut
    lengths = [len(ref.encode(t)) for t in tags]
    probs = _brute_force_cut_sampled(lengths[:1], lengths[1:], 75)
    assert tk.over_limit[0].expected_cut_shuffled == pytest.approx(sum(probs), rel=1e-9)
    assert report.notes and "more than one line" in report.notes[0]


def _brute_force_cut_sampled(fixed: list[int], flex: list[int], limit: int) -> list[float]:
    # 13 shuffled tags is too many permutations to enumerate; the lengths here take only a
    # few values, so enumerate distinct orderings of the multiset instead (exact).
    from collections import Counter

    start = sum(n + 1 for n in fixed)
    out = []
    for j in range(len(flex)):
        others = Counter(flex[:j] + flex[j + 1:])
        total = 0
        hit = 0
        # Position p of tag j and the multiset of the p tags before it.
        k = len(flex) - 1
        for p in range(k + 1):
            for combo in _multiset_subsets(others, p):
                ways = math.prod(math.comb(others[v], c) for v, c in combo.items())
                s = sum((v + 1) * c for v, c in combo.items())
                total += ways / math.comb(k, p)
                if start + s + flex[j] > limit:
                    hit += ways / math.comb(k, p)
        out.append(hit / (k + 1))
        assert total == pytest.approx(k + 1)
    return out


def _multiset_subsets(counts, size):  # noqa: ANN001, ANN202
    values = sorted(counts)

    def rec(i, left):  # noqa: ANN001, ANN202
        if i == len(values):
            if left == 0:
                yield {}
            return
        for c in range(min(counts[values[i]], left) + 1):
            for rest in rec(i + 1, left - c):
                yield {values[i]: c, **rest} if c else rest

    yield from rec(0, size)


def test_keep_tokens_prefix_past_the_limit_is_always_cut(tmp_path):
    root = tmp_path / "ds"
    long_tag = " ".join(["word"] * 80)
    write_caption(root, "a", f"{long_tag}, b, c")
    report = analyze_dataset(root, keep_tokens=1)
    assert report.tokens.fixed_cut == 1
    tag = {t.tag: t for t in report.tags}
    assert tag["b"].cut_rate_shuffled == pytest.approx(1.0)


# -- notes about files ---------------------------------------------------------------------


def test_notes_name_odd_files(tmp_path):
    root = tmp_path / "ds"
    write_caption(root / "2_x", "utf16", "a, b".encode("utf-16"))
    write_caption(root / "2_x", "cp", "café, b".encode("cp1252"))
    write_caption(root / "2_x", "empty", b"")
    write_caption(root / "2_x", "trailing", "a, b,")
    write_caption(root / "2_x", "dupe", "a, A, b")
    write_caption(root / "2_x", "under", "red_hair, b")
    write_caption(root / "2_x", "space", "red hair, b")
    write_caption(root, "outside", "a")
    (root / "2_x" / "nocap.png").write_bytes(b"")
    report = analyze_dataset(root)
    text = "\n".join(report.notes)
    assert "2 caption files are not UTF-8 (CP1252: 1, UTF-16 LE with BOM: 1)" in text
    assert "1 caption is empty (e.g. 2_x/empty.txt)" in text
    assert "trailing or doubled comma (e.g. 2_x/trailing.txt)" in text
    assert "repeats a tag (e.g. 2_x/dupe.txt)" in text
    assert "red hair / red_hair" in text
    assert "1 image has no caption file (e.g. 2_x/nocap.png)" in text
    assert "1 caption lies outside any N_name repeat folder (e.g. outside.txt)" in text
    assert report.encodings["UTF-8"] == 6


# -- correlated_tags ------------------------------------------------------------------------


def test_correlated_tags_present_trigger_similar_and_unknown(tmp_path):
    root = planted_dataset(tmp_path / "ds")
    assert correlated_tags(root, "red_hair") == ["school uniform"]
    assert correlated_tags(root, "(Eris Greyrat:1.2)") == ["blue dress", "hair ribbon"]
    # In every caption: the tags in at least half of them, most frequent first.
    assert correlated_tags(root, "mychar") == ["red hair", "school uniform"]
    # Not in the dataset: partners of the most similar tag by text.
    assert correlated_tags(root, "eris-greyrat") == ["blue dress", "hair ribbon"]
    assert correlated_tags(root, "zzz unknown") == []
    assert correlated_tags(root, "red_hair", limit=0) == []


def test_most_similar_tag_prefers_shared_words():
    cands = ["mayonnaise bottle", "wine bottle", "red hair"]
    assert most_similar_tag("mayonnaise-container", cands) == "mayonnaise bottle"
    assert most_similar_tag("bottle", cands) in ("mayonnaise bottle", "wine bottle")
    assert most_similar_tag("qqq", cands) is None


# -- size -----------------------------------------------------------------------------------


def test_thousands_of_long_captions(tmp_path):
    rng = random.Random(7)
    vocab = [f"tag {i} word" for i in range(300)]
    root = tmp_path / "big"
    for i in range(600):
        tags = ["trigger"] + rng.sample(vocab, 30)
        write_caption(root / "3_big", f"{i:05d}", ", ".join(tags))
    report = analyze_dataset(root, keep_tokens=1)
    assert report.n_captions == 600
    assert report.tokens.captions_at_risk == 600  # 30 tags x 3+ tokens is always past 75
    assert 0.3 < report.tokens.shuffled_cut_share < 0.7
    assert report.pairs == []
