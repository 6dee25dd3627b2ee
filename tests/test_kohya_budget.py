"""kohya's caption lengths against an independent run of what kohya does: captions joined as it
joins them, tokenized whole by transformers' slow CLIPTokenizer (tests/a1111_reference.py), every
shuffle enumerated."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from a1111_reference import SlowClipTokenizer

from tagsmith.captions.budget import shuffled_cut_probabilities, tag_steps
from tagsmith.captions.parse import kohya_separator_groups
from tagsmith.captions.report import analyze_dataset
from tagsmith.cli import run
from tagsmith.errors import DatasetError

REF = SlowClipTokenizer()


def write_caption(folder: Path, stem: str, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.png").write_bytes(b"\x89PNG")
    (folder / f"{stem}.txt").write_text(text, encoding="utf-8")


def enumerated_cut_odds(fixed, flex, suffix, limit):  # noqa: ANN001, ANN201
    """Every order of ``flex``: a tag is cut when the caption up to its end is over ``limit``."""
    counts = [0] * len(flex)
    perms = list(itertools.permutations(range(len(flex))))
    for perm in perms:
        order = fixed + [flex[i] for i in perm] + suffix
        for k, i in enumerate(perm):
            prefix = ", ".join(order[: len(fixed) + k + 1])
            if len(REF.ids(prefix)) > limit:
                counts[i] += 1
    return [c / len(perms) for c in counts]


FIXED = ["mychar"]
FLEX = ["(kancolle)", "(masterpiece:1.2)", "long hair", "1girl", "hatsune miku (cosplay)",
        "thighhighs", "smile"]


def test_closing_punctuation_merges_with_the_comma():
    sizes = tag_steps(FIXED + FLEX)
    assert sizes["(kancolle)"][0] == sizes["(kancolle)"][1]  # "),"  is one token
    assert sizes["long hair"][1] == sizes["long hair"][0] + 1
    limit = 20
    expected = enumerated_cut_odds(FIXED, FLEX, [], limit)
    got = shuffled_cut_probabilities(
        [sizes[t][0] for t in FIXED], [sizes[t][0] for t in FLEX], limit,
        steps=([sizes[t][1] for t in FIXED], [sizes[t][1] for t in FLEX]),
    )
    assert got == pytest.approx(expected, abs=1e-9)
    # The old model (every tag followed by its own comma token) is measurably off here.
    naive = shuffled_cut_probabilities([sizes[t][0] for t in FIXED],
                                       [sizes[t][0] for t in FLEX], limit)
    assert max(abs(a - b) for a, b in zip(naive, expected)) > 0.02


def _long_caption() -> tuple[str, list[str]]:
    series = ["(kancolle)", "(gintama)", "(touhou)", "(azur lane)", "(genshin impact)",
              "(blue archive)", "(honkai: star rail)", "(fate/grand order)", "(pokemon)",
              "(idolmaster)", "(vocaloid)", "(hololive)"]
    tags = [f"{name} {s}" for name, s in zip(
        ["ship", "samurai", "shrine maiden", "cruiser", "traveler", "student", "conductor",
         "servant", "trainer", "idol", "singer", "streamer"], series)]
    tags += ["battle", "explosion", "smoke", "night", "city", "rain"]
    return ", ".join(tags), tags


def test_cut_tags_follow_the_caption_as_written(tmp_path):  # noqa: ANN001
    line, tags = _long_caption()
    write_caption(tmp_path, "a", line)
    report = analyze_dataset(tmp_path, min_support=1)
    expected = [t for k, t in enumerate(tags)
                if len(REF.ids(", ".join(tags[: k + 1]))) > 75]
    (long,) = report.tokens.over_limit
    assert long.n_tokens == len(REF.ids(line))
    assert long.cut_tags == expected
    assert "battle" not in expected and expected  # inside the limit as written (token 70) ...
    sizes = tag_steps(tags)
    naive_end = sum(sizes[t][0] + 1 for t in tags[: tags.index("battle")]) + 1
    assert naive_end > 75  # ... though one comma token per tag would put it past 75


def test_max_token_length_150_and_225(tmp_path):  # noqa: ANN001
    tags = [f"tag{k} word{k}" for k in range(40)]  # 4 tokens + comma each: 199 tokens
    line = ", ".join(tags)
    write_caption(tmp_path, "a", line)
    total = len(REF.ids(line))
    for limit in (75, 150, 225):
        report = analyze_dataset(tmp_path, min_support=1, max_token_length=limit)
        assert report.tokens.limit == limit
        expected = [t for k, t in enumerate(tags)
                    if len(REF.ids(", ".join(tags[: k + 1]))) > limit]
        cut = report.tokens.over_limit[0].cut_tags if report.tokens.over_limit else []
        assert cut == expected
        assert bool(report.tokens.over_limit) == (total > limit)
    with pytest.raises(DatasetError, match="max_token_length"):
        analyze_dataset(tmp_path, max_token_length=100)


def test_keep_tokens_separator_groups():
    assert kohya_separator_groups("a, b ||| c,, d ||| e ||| f", "|||") == (
        ["a", "b"], ["c", "d"], ["e ||| f"])
    assert kohya_separator_groups("a, b", "|||") is None


def test_keep_tokens_separator_in_the_shuffle(tmp_path):  # noqa: ANN001
    fixed, flex, suffix = ["mychar", "1girl"], FLEX[:6], ["(signature)"]
    line = f"{', '.join(fixed)} ||| {', '.join(flex)} ||| {', '.join(suffix)}"
    write_caption(tmp_path, "a", line)
    limit = 75
    report = analyze_dataset(tmp_path, min_support=1, keep_tokens=5,
                             keep_tokens_separator="|||")
    assert report.tokens.keep_tokens_separator == "|||"
    # Short caption: nothing cut; keep_tokens=5 is ignored for a caption with the separator.
    assert report.tokens.captions_at_risk == 0
    # The same caption under a small limit, through the model and by enumeration.
    limit = 22
    sizes = tag_steps(fixed + flex + suffix)
    expected = enumerated_cut_odds(fixed, flex, suffix, limit)
    got = shuffled_cut_probabilities(
        [sizes[t][0] for t in fixed], [sizes[t][0] for t in flex], limit,
        steps=([sizes[t][1] for t in fixed], [sizes[t][1] for t in flex]),
    )
    assert got == pytest.approx(expected, abs=1e-9)


def test_suffix_after_a_long_shuffle_is_always_cut(tmp_path):  # noqa: ANN001
    flex = [f"tag{k} word{k}" for k in range(20)]  # 100 tokens
    write_caption(tmp_path, "a", "mychar ||| " + ", ".join(flex) + " ||| my signature")
    report = analyze_dataset(tmp_path, min_support=1, keep_tokens_separator="|||")
    rates = {t.tag: t.cut_rate_shuffled for t in report.tags}
    assert rates["my signature"] == 1.0 and rates["mychar"] == 0.0
    assert 0 < rates["tag3 word3"] < 1


def test_cli_dataset_options(tmp_path, capsys):  # noqa: ANN001
    line, _ = _long_caption()
    write_caption(tmp_path, "a", line)
    assert run(["dataset", str(tmp_path), "--no-model", "--json", "--max-token-length", "150",
                "--keep-tokens-separator", "|||"]) == 0
    tokens = json.loads(capsys.readouterr().out)["tokens"]
    assert tokens["limit"] == 150 and tokens["keep_tokens_separator"] == "|||"
    assert run(["dataset", str(tmp_path), "--no-model", "--max-token-length", "100"]) == 2


def test_tag_tokens_of_a_weighted_form(tmp_path):  # noqa: ANN001
    write_caption(tmp_path, "a", "(masterpiece:1.2), 1girl, long_hair")
    report = analyze_dataset(tmp_path, min_support=1)
    n = {t.tag: t.n_tokens for t in report.tags}
    assert n == {"masterpiece": len(REF.ids("masterpiece")), "1girl": 2,
                 "long hair": len(REF.ids("long_hair"))}


def test_separator_without_commas_around_it_splits_tags_as_kohya_does(tmp_path):  # noqa: ANN001
    """``a ||| b`` are two tags (kohya splits at the separator, commas or not), cut where the
    line as written passes 75 tokens; only the first two separators split (kohya's)."""
    flex = [f"tag number {i}" for i in range(30)]
    line = "mychar, 1girl ||| " + ", ".join(flex) + " ||| masterpiece, best quality"
    write_caption(tmp_path, "a", line)
    write_caption(tmp_path, "b", "mychar|||smile|||end|||extra")
    report = analyze_dataset(tmp_path, min_support=1, keep_tokens_separator="|||")
    # The reference: each tag's end in the line, tokenized as written (separators included).
    units = ["mychar", "1girl", *flex, "masterpiece", "best quality"]
    ends, at = [], 0
    for u in units:
        at = line.index(u, at) + len(u)
        ends.append(at)
    first = next(i for i, end in enumerate(ends) if len(REF.ids(line[:end])) > 75)
    (long_caption,) = report.tokens.over_limit
    assert long_caption.cut_tags == units[first:]
    rates = {t.tag: t.cut_rate_file_order for t in report.tags}
    assert rates["tag number 29"] == rates["masterpiece"] == 1.0
    assert rates[units[first - 1]] == 0.0
    assert {"smile", "end|||extra"} <= set(rates) and "extra" not in rates
