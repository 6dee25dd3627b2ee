"""Unit tests for tag normalisation and the analysis objects of tagsmith.text.tokenizer.

Id-for-id parity with CLIP's reference tokenizer lives in test_tokenizer_parity.py.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tagsmith.text.tokenizer import (
    CHUNK_LENGTH,
    EOS_ID,
    TAGCOMPLETE_UNDERSCORE_EXCLUSIONS,
    ClipTokenizer,
    TagTokens,
    Word,
    load_tokenizer,
    normalize_tag,
    piece_text,
)


@pytest.fixture(scope="module")
def tok() -> ClipTokenizer:
    return load_tokenizer()


# -- normalize_tag ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("mayonnaise_bottle", "mayonnaise bottle"),
        ("long_hair", "long hair"),
        ("hijikata_toushirou_\\(gintama\\)", "hijikata toushirou (gintama)"),
        ("hijikata_toushirou_(gintama)", "hijikata toushirou (gintama)"),
        ("\\[tag\\]", "[tag]"),
        ("  padded__tag_ ", "padded tag"),
        ("a\t b\n c", "a b c"),
        ("1girl", "1girl"),
        ("", ""),
        ("   ", ""),
        # tagcomplete replaces every underscore of a tag not on its exclusion list
        ("t_t", "t t"),
        ("-_-", "- -"),
        ("m_k", "m k"),
        ("^^^", "^^^"),
        # ... and leaves the listed emoticons alone, also when written escaped or upper case
        ("^_^", "^_^"),
        (">_<", ">_<"),
        ("o_o", "o_o"),
        ("O_O", "O_O"),
        ("0_0", "0_0"),
        ("<o>_<o>", "<o>_<o>"),
        ("<|>_<|>", "<|>_<|>"),
        ("\\(o\\)_\\(o\\)", "(o)_(o)"),
        (" ^_^ ", "^_^"),
    ],
)
def test_normalize_tag(tag: str, expected: str) -> None:
    assert normalize_tag(tag) == expected


def test_normalize_tag_can_keep_underscores() -> None:
    assert normalize_tag("mayonnaise_bottle", underscores=False) == "mayonnaise_bottle"
    assert normalize_tag("a_\\(b\\)", underscores=False) == "a_(b)"


def test_exclusions_are_tagcomplete_defaults() -> None:
    # tagcomplete's tac_undersocreReplacementExclusionList default, verbatim.
    default = (
        "0_0,(o)_(o),+_+,+_-,._.,<o>_<o>,<|>_<|>,=_=,>_<,3_3,6_9,>_o,@_@,^_^,o_o,u_u,x_x,|_|,||_||"
    )
    assert TAGCOMPLETE_UNDERSCORE_EXCLUSIONS == frozenset(default.split(","))
    for tag in TAGCOMPLETE_UNDERSCORE_EXCLUSIONS:
        assert normalize_tag(tag) == tag


@pytest.mark.shared_data
def test_normalize_tag_on_danbooru_matches_tagcomplete_insertion(danbooru_csv: Path) -> None:
    # tagcomplete inserts tag.replaceAll("_", " ") unless the tag is on its exclusion list.
    with danbooru_csv.open(encoding="utf-8", newline="") as f:
        tags = [row[0] for row in csv.reader(f)]
    kept = [t for t in tags if normalize_tag(t) == t and "_" in t]
    assert sorted(kept) == sorted(TAGCOMPLETE_UNDERSCORE_EXCLUSIONS & set(tags))
    assert len(kept) == 17  # (o)_(o) and ||_|| are not in the 2024 export
    for t in tags:
        if "\\" not in t and t not in TAGCOMPLETE_UNDERSCORE_EXCLUSIONS:
            assert normalize_tag(t) == " ".join(t.replace("_", " ").split())


def test_kept_underscore_changes_tokens(tok: ClipTokenizer) -> None:
    # Why the exclusion list matters: ^_^ is one known token, "^ ^" is two.
    assert tok.analyze("^_^").tokens == ("^_^</w>",)
    assert tok.analyze("^_^", underscores=False).tokens == ("^_^</w>",)
    assert len(tok.encode("^ ^")) == 2


# -- Word, TagTokens --------------------------------------------------------------------------


def test_mayonnaise_bottle_words(tok: ClipTokenizer) -> None:
    tt = tok.analyze("mayonnaise_bottle")
    assert tt.tag == "mayonnaise_bottle"
    assert tt.text == "mayonnaise bottle"
    assert tt.tokens == ("may", "onnaise</w>", "bottle</w>")
    assert tt.ids == (1686, 48934, 5392)
    assert tt.n_tokens == 3
    assert [w.text for w in tt.words] == ["mayonnaise", "bottle"]
    assert tt.words[0] == Word("mayonnaise", ("may", "onnaise</w>"), (1686, 48934))
    assert not tt.words[0].known
    assert tt.words[1].known
    assert tt.known_words == ["bottle"]
    assert tt.unknown_words == ["mayonnaise"]
    assert not tt.all_known


def test_hyphen_keeps_known_words_compound_does_not(tok: ClipTokenizer) -> None:
    hyphen = tok.analyze("cross-arm")
    assert [w.text for w in hyphen.words] == ["cross", "-", "arm"]
    assert hyphen.known_words == ["cross", "-", "arm"] and hyphen.all_known
    assert [w.is_punctuation for w in hyphen.words] == [False, True, False]
    compound = tok.analyze("crossarm")
    # "cross" here is a word-internal piece, not the known word "cross</w>".
    assert compound.tokens == ("cross", "arm</w>")
    assert compound.known_words == [] and compound.unknown_words == ["crossarm"]


def test_single_token_without_word_end_is_not_known() -> None:
    assert not Word("cross", ("cross",), (5266,)).known
    assert Word("arm", ("arm</w>",), (4793,)).known
    assert not Word("ab", ("a", "b</w>"), (64, 320)).known


def test_digits_and_punctuation_are_separate_words(tok: ClipTokenizer) -> None:
    tt = tok.analyze("1girl")
    assert [w.text for w in tt.words] == ["1", "girl"]
    tt = tok.analyze("2024")
    assert [w.text for w in tt.words] == ["2", "0", "2", "4"]
    tt = tok.analyze("tag:1.2")
    assert [w.text for w in tt.words] == ["tag", ":", "1", ".", "2"]


def test_multibyte_words_and_pieces(tok: ClipTokenizer) -> None:
    tt = tok.analyze("日本語 😀 café")
    assert [w.text for w in tt.words] == ["日本語", "😀", "café"]
    assert tt.tokens == ("æĹ¥", "æľ¬", "èª", "ŀ</w>", "ðŁĺĢ</w>", "cafÃ©</w>")
    # Pieces that are whole characters read as such; a piece holding part of a character's
    # bytes cannot, and shows U+FFFD.
    assert [piece_text(p) for p in tt.tokens] == ["日", "本", "\ufffd", "\ufffd", "😀", "café"]
    assert tt.known_words == ["😀", "café"]
    assert tt.unknown_words == ["日本語"]


def test_piece_text() -> None:
    assert piece_text("bottle</w>") == "bottle"
    assert piece_text("may") == "may"
    assert piece_text("-</w>") == "-"
    assert piece_text("<|endoftext|>") == "<|endoftext|>"
    assert piece_text("<|startoftext|>") == "<|startoftext|>"
    assert piece_text("Ġ") == " "  # the byte symbol of a space
    assert piece_text("ðŁĺĢ</w>") == "😀"


def test_literal_special_token_is_its_own_word(tok: ClipTokenizer) -> None:
    tt = tok.analyze("a <|endoftext|> b")
    assert tt.ids == (320, EOS_ID, 321)
    assert [w.text for w in tt.words] == ["a", "<|endoftext|>", "b"]
    assert not tt.words[1].known


def test_to_dict_shape(tok: ClipTokenizer) -> None:
    d = tok.analyze("mayonnaise_bottle").to_dict()
    assert d == {
        "tag": "mayonnaise_bottle",
        "text": "mayonnaise bottle",
        "tokens": ["may", "onnaise</w>", "bottle</w>"],
        "ids": [1686, 48934, 5392],
        "n_tokens": 3,
        "known_words": ["bottle"],
        "unknown_words": ["mayonnaise"],
    }
    assert json.loads(json.dumps(d, ensure_ascii=False)) == d
    d = tok.analyze("Café_日本").to_dict()
    assert d["text"] == "café 日本"
    assert all(isinstance(t, str) for t in d["tokens"])
    assert all(isinstance(i, int) for i in d["ids"])


def test_empty_tag(tok: ClipTokenizer) -> None:
    tt = tok.analyze("   ")
    assert tt == TagTokens(tag="   ", text="", ids=(), tokens=(), words=())
    assert tt.n_tokens == 0 and tt.known_words == [] and tt.unknown_words == []
    assert tok.encode("") == []


def test_truncated_at(tok: ClipTokenizer) -> None:
    assert tok.analyze("long hair").truncated_at is None
    long = tok.analyze(" ".join(["long hair"] * 40))
    assert long.n_tokens == 80
    assert long.truncated_at == CHUNK_LENGTH


def test_analyze_batch_keeps_order_and_matches_encode(tok: ClipTokenizer) -> None:
    tags = ["mayonnaise_bottle", "日本語", "long_hair", "^_^", "café_au_lait", "1girl"]
    results = tok.analyze_batch(tags)
    assert [r.tag for r in results] == tags
    for tag, r in zip(tags, results):
        assert list(r.ids) == tok.encode(normalize_tag(tag))
        assert r.tokens == tuple(tok.id_to_token(i) for i in r.ids)
        assert tuple(i for w in r.words for i in w.ids) == r.ids


def test_vocabulary_lookups(tok: ClipTokenizer) -> None:
    assert tok.whole_word_id("bottle") == 5392
    assert tok.whole_word_id("Bottle") == 5392
    assert tok.whole_word_id("mayonnaise") is None
    assert tok.id_to_token(5392) == "bottle</w>"
    assert tok.token_to_id("onnaise</w>") == 48934
    assert load_tokenizer() is load_tokenizer()


def test_concurrent_use_from_threads() -> None:
    fresh = ClipTokenizer()  # its Python-split tokenizer is built lazily, under a lock
    texts = ["café", "日本語 tag", "long hair", "😀", "naïve_art"] * 20
    expected = load_tokenizer().analyze_batch(texts)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda t: fresh.analyze(t), texts))
    assert results == expected


def test_ascii_tags_never_import_ftfy_regex_or_torch() -> None:
    code = (
        "import sys\n"
        "from tagsmith.text.tokenizer import load_tokenizer\n"
        "tok = load_tokenizer()\n"
        "assert tok.analyze_batch(['long_hair', 'mayonnaise bottle'])[1].n_tokens == 3\n"
        "print(sorted(m for m in ('ftfy', 'regex', 'torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
