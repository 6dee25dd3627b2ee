"""Candidate forms, substitutions, rare tokens, and the cached vocabulary index."""

from __future__ import annotations

import numpy as np
import pytest

from tagsmith.text.tokenizer import load_tokenizer
from tagsmith.text.variants import (
    HYPHEN,
    JOINED,
    SPACED,
    SUB_HEAD,
    UNDERSCORE,
    USER,
    generate_forms,
    nearest_known_words,
    rare_tokens,
    tag_words,
    trigger_forms,
)
from tagsmith.text.vocab_index import VocabIndex, load_vocab_index


@pytest.mark.parametrize(
    ("tag", "words"),
    [("mayonnaise_bottle", ["mayonnaise", "bottle"]), ("Cross-Arm", ["cross", "arm"]),
     ("(red hair:1.2)", ["red", "hair"]), ("1girl", ["1girl"])],
)
def test_tag_words(tag, words):
    assert tag_words(tag) == words


def test_spellings_and_their_tokens():
    tok = load_tokenizer()
    forms = {c.form: c for c in generate_forms("mayonnaise_bottle", tok,
                                               user_forms=["mayonnaise-container"])}
    assert [c.kind for c in forms.values()] == [SPACED, HYPHEN, UNDERSCORE, JOINED, USER]
    assert forms["mayonnaise_bottle"].tokens == ("may", "onnaise</w>", "_</w>", "bottle</w>")
    assert forms["mayonnaisebottle"].tokens == ("may", "on", "nai", "se", "bottle</w>")
    assert forms["mayonnaise-container"].n_tokens == 4
    assert not forms["mayonnaise bottle"].known  # mayonnaise is split
    assert generate_forms("cross-arm", tok)[0].known


def test_forms_with_identical_ids_are_listed_once():
    tok = load_tokenizer()
    forms = generate_forms("bottle", tok, user_forms=["Bottle", "  bottle "])
    assert [c.form for c in forms] == ["bottle"]


def test_substitutes_are_nearest_known_words_in_token_table():
    tok = load_tokenizer()
    rng = np.random.default_rng(0)
    table = rng.standard_normal((49408, 32)).astype(np.float32)
    bottle = table[tok.whole_word_id("bottle")]
    table[tok.whole_word_id("jar")] = bottle + 0.1 * rng.standard_normal(32)
    table[tok.whole_word_id("bottles")] = bottle  # an inflection: must be skipped
    table[tok.whole_word_id("container")] = bottle + 0.3 * rng.standard_normal(32)
    near = nearest_known_words("bottle", table, tok, k=2)
    assert [w for w, _ in near] == ["jar", "container"]
    forms = generate_forms("mayonnaise bottle", tok, table=table, substitutes_per_word=2,
                           substitute_words=[1])
    subs = [c for c in forms if c.kind == SUB_HEAD]
    assert [c.form for c in subs] == ["mayonnaise jar", "mayonnaise-jar",
                                      "mayonnaise container", "mayonnaise-container"]
    assert subs[0].replaced == "bottle" and subs[0].replacement == "jar"


def test_rare_tokens_are_late_merges():
    tok = load_tokenizer()
    rare = rare_tokens(tok, n=5)
    ids = [tok.whole_word_id(w) for w in rare]
    assert all(i is not None and i > 45000 for i in ids)
    assert ids == sorted(ids, reverse=True)
    assert rare_tokens(tok, n=5, exclude_words=rare[:2])[:3] == rare[2:5]


def test_trigger_families():
    tok = load_tokenizer()
    forms = trigger_forms("cross tattoo", tok, parts=["arm", "chest"], rare=["ohwx"])
    by_stem: dict[str, list[str]] = {}
    for c in forms:
        by_stem.setdefault(c.stem, []).append(c.form)
    assert by_stem["cross"] == ["cross-arm", "cross-chest"]
    assert by_stem["ohwx"] == ["ohwx-arm", "ohwx-chest"]
    assert by_stem["crosstattoo"][0] == "crosstattoo-arm"
    # Without parts the concept's own spelling is the existing tag, not a trigger.
    plain = [c.form for c in trigger_forms("cross tattoo", tok, rare=["ohwx"])]
    assert "cross tattoo" not in plain and "cross-tattoo" in plain and "ohwx" in plain


def test_vocab_index_whole_word_rows_and_cache(tmp_path):
    f = tmp_path / "tags.csv"
    f.write_text("utau,3,13080,\ntau,0,50,\nbottle,0,71684,\nwine_bottle,0,6727,\n"
                 "bottlecap,0,300,\n", encoding="utf-8")
    index = load_vocab_index(f, cache_dir=tmp_path / "cache")
    tok = load_tokenizer()
    tau = tok.whole_word_id("tau")
    # utau is u|tau</w>: the token appears, but not as a word of its own.
    assert [index.texts[r] for r in index.rows_with_token(tau)] == ["utau", "tau"]
    assert [index.texts[r] for r in index.rows_with_token(tau, whole_word=True)] == ["tau"]
    bottle = tok.whole_word_id("bottle")
    assert [index.texts[r] for r in index.rows_with_token(bottle, whole_word=True)] == [
        "bottle", "wine bottle"]
    cached = list((tmp_path / "cache" / "vocab").glob("*.npz"))
    assert len(cached) == 1
    again = VocabIndex.from_file(cached[0])
    assert again.texts == index.texts and again.counts.tolist() == index.counts.tolist()
    # A damaged cache file is rebuilt, not trusted.
    cached[0].write_bytes(b"garbage")
    assert load_vocab_index(f, cache_dir=tmp_path / "cache").texts == index.texts
