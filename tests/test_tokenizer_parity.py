"""tagsmith's tokenizer against an independent pure-Python CLIP BPE, id for id.

The reference (tests/reference_clip_bpe.py) follows OpenAI CLIP's ``SimpleTokenizer``; ids
pinned here were checked against the real openai/clip-vit-large-patch14 tokenizer.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from reference_clip_bpe import ReferenceClipBpe

from tagsmith.text.tokenizer import (
    BOS_ID,
    COMMA_ID,
    EOS_ID,
    VOCAB_SIZE,
    _clean_text_reference,
    clean_text,
    load_tokenizer,
)

_REF = ReferenceClipBpe()  # one BPE word cache for the whole module


@pytest.fixture(scope="module")
def ref() -> ReferenceClipBpe:
    return _REF


@pytest.fixture(scope="module")
def tok():  # noqa: ANN201
    return load_tokenizer()


# -- pinned ids (verified against openai/clip-vit-large-patch14) ------------------------------


def test_a_photo_of_a_cat(tok, ref) -> None:  # noqa: ANN001
    expected = [49406, 320, 1125, 539, 320, 2368, 49407]
    assert [BOS_ID, *tok.encode("a photo of a cat"), EOS_ID] == expected
    assert ref.encode_with_specials("a photo of a cat") == expected


@pytest.mark.parametrize(
    ("text", "pieces"),
    [
        ("mayonnaise bottle", ["may", "onnaise</w>", "bottle</w>"]),
        ("cross-arm", ["cross</w>", "-</w>", "arm</w>"]),
        ("crossarm", ["cross", "arm</w>"]),
        ("sks", ["sks</w>"]),
        ("ohwx", ["ohwx</w>"]),
        ("1girl", ["1</w>", "girl</w>"]),
        ("a, b", ["a</w>", ",</w>", "b</w>"]),
    ],
)
def test_pinned_pieces(tok, ref, text: str, pieces: list[str]) -> None:  # noqa: ANN001
    ids = tok.encode(text)
    assert [tok.id_to_token(i) for i in ids] == pieces
    assert ref.pieces(text) == pieces
    assert tok.analyze(text).tokens == tuple(pieces)


def test_special_and_well_known_ids(tok, ref) -> None:  # noqa: ANN001
    assert tok.encode("-") == [268]
    assert tok.encode("_") == [318]
    assert tok.encode(",") == [COMMA_ID]
    assert tok.token_to_id("<|startoftext|>") == BOS_ID == ref.encoder["<|startoftext|>"]
    assert tok.token_to_id("<|endoftext|>") == EOS_ID == ref.encoder["<|endoftext|>"]


def test_vocabulary_matches_reference_layout(tok, ref) -> None:  # noqa: ANN001
    assert len(tok.vocab) == VOCAB_SIZE == 49408
    assert ref.vocab_size == 49408
    assert tok.vocab == ref.encoder


def test_shipped_tokenizer_json_is_what_the_build_script_makes() -> None:
    script = Path(__file__).resolve().parent.parent / "data" / "build_tokenizer.py"
    spec = importlib.util.spec_from_file_location("build_tokenizer", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shipped = json.loads(module.OUT.read_text(encoding="utf-8"))
    assert json.loads(module.build().to_str()) == shipped


# -- every Danbooru tag and alias -------------------------------------------------------------


def _danbooru_texts(path: Path) -> tuple[list[str], list[str]]:
    tags: list[str] = []
    aliases: list[str] = []
    with path.open(encoding="utf-8", newline="") as f:
        for row in csv.reader(f):
            tags.append(row[0])
            aliases.extend(a for a in row[3].split(",") if a)
    return tags, aliases


@pytest.mark.shared_data
@pytest.mark.slow
def test_every_danbooru_tag_and_alias_matches_reference(tok, ref, danbooru_csv: Path) -> None:  # noqa: ANN001
    tags, aliases = _danbooru_texts(danbooru_csv)
    assert len(tags) > 140_000 and len(aliases) > 30_000
    texts = [t.replace("_", " ") for t in tags + aliases]
    ours = tok.encode_batch(texts)
    wrong = []
    for text, ids in zip(texts, ours):
        expected = ref.encode(text)  # ftfy on every text; BPE words cached across texts
        if ids != expected:
            wrong.append(f"{text!r}: tagsmith {ids} reference {expected}")
    assert not wrong, f"{len(wrong)} of {len(texts)} differ, e.g. " + "; ".join(wrong[:10])


# -- hard cases -------------------------------------------------------------------------------

# fmt: off
HARD_CASES: list[str] = [
    # accents, combining marks, case oddities
    "café", "naïve", "Pokémon", "crème brûlée", "cafe\u0301", "e\u0301\u0301\u0301",
    "A\u030a", "ǅemal", "İstanbul", "straße", "STRASSE ẞ", "ﬁne ﬃ", "ſ", "'ſ", "it'ſ",
    "\u0345", " \u0345 ", "α\u0345", "ᾳ", "Ω", "K", "Ⅻ",
    # Japanese, Chinese, Korean
    "初音ミク", "ｶﾀｶﾅ", "東方project", "けいおん!", "中文标签", "繁體中文", "한국어",
    "\u1100\u1161\u11a8", "ㄱㄴ", "hatsune_miku 初音ミク",
    # emoji: ZWJ sequences, skin tones, flags, keycaps, variation selectors
    "😀", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "❤️", "❤\ufe0e", "1️⃣", "🇯🇵",
    "😀😀😀", "cat😀dog", "🧑🏿\u200d🦱",
    # full-width letters and punctuation
    "ＡＢＣ", "１２３", "tag，tag", "！？", "（tag）", "＼(^o^)／", "Ｈｅｌｌｏ\u3000Ｗｏｒｌｄ",
    # HTML entities, double-escaped too
    "&amp;", "&lt;3", "&amp;amp;", "&amp;lt;3", "&#39;s", "&quot;q&quot;", "a&nbsp;b", "AT&T",
    "&", "&&&", "&#x1F600;", "&#0;", "&#28;", "&#128;", "&bogus;", "fish &amp; chips",
    "&lt;b&gt;bold&lt;/b&gt;", "<b>&amp;</b>", "&amp;#39;",
    # mojibake
    "cafÃ©", "Ã¢â‚¬â„¢", "â€œquotedâ€\x9d", "ÃƒÂ©", "Ð¿Ñ€Ð¸Ð²ÐµÑ‚", "ã‚¢ãƒ‹ãƒ¡",
    # zero-width, control characters, NUL, lone surrogates (from surrogateescape'd argv)
    "a\u200bb", "a\u200cb", "a\u200db", "\ufeffbom", "a\u2060b", "a\x00b", "\x00", "a\x07b",
    "\x1b[31mred\x1b[0m", "a\x1cb", "a\x1fb", "a\x7fb", "a\x85b", "a\x9fb", "a\udcffb",
    "\ud83d\ude00",
    # Unicode spaces
    "a\u00a0b", "a\u2003b", "a\u3000b", "a\u2028b", "a\u2029b", "a\u202fb", "a\u205fb",
    "a\u1680b", "a\u180eb", "\t a \n b \r\n c \x0b d \x0c", "  lots   of   spaces  ", " ", "",
    # curly quotes and other quotes
    "‘single’", "“double”", "it’s", "don’t", "«guillemets»", "„low“", "″prime″",
    # right-to-left and bidi controls
    "שלום", "مرحبا", "a\u202eb", "\u200fx", "\u061cx",
    # long punctuation runs, brackets, emoticons
    "!!!!!!!!!!", "......", "?!?!?!", "-" * 100, "_" * 50, "(((((tag)))))", ":)", ">_<",
    "^_^", "\\(o\\)", "\\m/", "<o>_<o>", "<|>_<|>", "||_||",
    # digits
    "1234567890", "2024 year", "１２３", "٣٤٥", "½ ² ①", "v1.5", "3.14159",
    # letters and digits newer than the Rust regex engine's Unicode tables
    "\u0558", "x\u0558y", "a\ua7ceb", "\u4e00\U0002b73a", "x\U0002b73ay", "a\U0001e030b",
    # literal special tokens
    "<|endoftext|>", "<|startoftext|>", "!<|endoftext|>", "a<|endoftext|>b", "<|ENDOFTEXT|>",
    "<|endoftext|><|endoftext|>", "'s<|endoftext|>", "&lt;|endoftext|&gt;", "<|endoftext",
    "< |endoftext|>", "x <|startoftext|> y", "(<|endoftext|>)",
    # contractions
    "it's", "IT'S", "'s", "'re'", "y'all'd've", "''", "'",
    # long input
    "a" * 500, " ".join(["long hair"] * 60), "supercalifragilisticexpialidocious",
]
# fmt: on


@pytest.mark.parametrize("text", HARD_CASES, ids=[ascii(t)[:40] for t in HARD_CASES])
def test_hard_case_matches_reference(tok, ref, text: str) -> None:  # noqa: ANN001
    expected = ref.encode(text)
    assert tok.encode(text) == expected
    assert clean_text(text) == ref.clean(text)


def test_hard_cases_in_one_batch(tok, ref) -> None:  # noqa: ANN001
    # A batch mixing ASCII and non-ASCII texts is routed in two groups; order must survive.
    texts = HARD_CASES + ["long hair", "1girl"] * 3
    assert tok.encode_batch(texts) == [ref.encode(t) for t in texts]
    for tt in tok.analyze_batch(texts, underscores=False):
        assert [w.text for w in tt.words] == ref.pretokens(tt.text)
        assert tuple(p for w in tt.words for p in w.pieces) == tt.tokens


def test_offsets_of_split_path_point_into_text(tok) -> None:  # noqa: ANN001
    # prompt.py reads offsets of encode_cleaned_batch; the Python-split path must keep them.
    texts = [clean_text(t) for t in ["café au lait, 日本語", "long hair, blue eyes"]]
    for text, enc in zip(texts, tok.encode_cleaned_batch(texts)):
        spans = [text[a:b] for a, b in enc.offsets]
        assert spans[0] in ("café", "long")
        assert "," in spans
        assert len(enc.ids) == len(enc.tokens) == len(enc.offsets) == len(enc.word_ids)


def test_literal_endoftext_is_eos_only_where_reference_sees_it(tok) -> None:  # noqa: ANN001
    # Documented choice: like the reference, literal special-token text becomes the special id
    # unless a punctuation run swallows its "<".
    assert tok.encode("<|endoftext|>") == [EOS_ID]
    assert tok.encode("a <|endoftext|> b") == [320, EOS_ID, 321]
    assert EOS_ID not in tok.encode("!<|endoftext|>")


def test_reference_ignorecase_quirks_kept(tok, ref) -> None:  # noqa: ANN001
    # The reference compiles its pattern with IGNORECASE: U+0345 matches neither letters nor
    # "other" and is dropped; "'ſ" is the contraction "'s" (one word).
    assert tok.encode("a \u0345 b") == ref.encode("a \u0345 b") == [320, 321]
    assert len(tok.analyze("'ſ").words) == 1


# -- arbitrary text ---------------------------------------------------------------------------

# fmt: off
FRAGMENTS = [
    "a", "Z", "1", " ", "  ", "_", "-", "'", "'s", "'re", ",", ".", "!", "(", ")", "\\", "&",
    "&amp;", "&lt;", "&#39;", ";", "<", ">", "|", "<|endoftext|>", "<|startoftext|>", "é",
    "e\u0301", "Ã©", "ſ", "\u0345", "日本", "😀", "\u200d", "🏽", "\u00a0", "\u3000", "，",
    "Ａ", "\x00", "\x1c", "\x85", "\u2028", "\n", "\t", "’", "“", "\u202e", "\u0558", "٣",
]
# fmt: on

fragment_text = st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join)
any_text = st.text(max_size=40)
ascii_text = st.text(st.characters(min_codepoint=0, max_codepoint=127), max_size=40)
# Lone surrogates arrive from surrogateescape'd command lines (undecodable bytes in argv).
with_surrogates = st.lists(
    st.one_of(st.integers(0xD800, 0xDFFF).map(chr), st.sampled_from(FRAGMENTS)), max_size=8
).map("".join)

PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.one_of(any_text, fragment_text, ascii_text, with_surrogates))
@example("!<|endoftext|>")
@example("x\u0345'ſ")
def test_arbitrary_text_matches_reference(text: str) -> None:
    assert load_tokenizer().encode(text) == _REF.encode(text)


@PROPERTY
@given(st.lists(st.one_of(any_text, fragment_text), max_size=6))
def test_arbitrary_batches_match_reference(texts: list[str]) -> None:
    assert load_tokenizer().encode_batch(texts) == [_REF.encode(t) for t in texts]


@PROPERTY
@given(st.one_of(any_text, fragment_text))
def test_arbitrary_text_splits_into_reference_words(text: str) -> None:
    tt = load_tokenizer().analyze(text, underscores=False)
    assert [w.text for w in tt.words] == _REF.pretokens(tt.text)
    assert tuple(p for w in tt.words for p in w.pieces) == tt.tokens
    assert tuple(i for w in tt.words for i in w.ids) == tt.ids


@PROPERTY
@given(st.one_of(ascii_text, st.text(st.characters(min_codepoint=32, max_codepoint=126))))
@example("AT&T")
@example("  a  b  ")
def test_clean_text_fast_path_equals_full_ftfy_path(text: str) -> None:
    # The fast path skips ftfy and html.unescape for printable ASCII without '&'.
    assert clean_text(text) == _clean_text_reference(text) == _REF.clean(text)


@PROPERTY
@given(st.one_of(any_text, fragment_text))
def test_clean_text_equals_reference_cleaning(text: str) -> None:
    assert clean_text(text) == _REF.clean(text)
