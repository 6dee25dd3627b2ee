"""A1111 prompt rules: attention parsing, prompt editing, 75-token chunking, tag syntax."""

from __future__ import annotations

import pytest

from tagsmith.text.prompt import (
    analysed_tag_text,
    layout_prompt,
    parse_attention,
    split_prompt_tags,
    strip_tag_syntax,
)
from tagsmith.text.prompt_editing import prompt_schedule
from tagsmith.text.tokenizer import COMMA_ID, EOS_ID


def _pairs(prompt: str) -> list[list]:
    return [["BREAK", -1] if s.is_break else [s.text, pytest.approx(s.weight)] for s in
            parse_attention(prompt)]


# Expected values are the examples documented in A1111's prompt_parser.parse_prompt_attention.
@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("normal text", [["normal text", 1.0]]),
        ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
        ("(unbalanced", [["unbalanced", 1.1]]),
        ("\\(literal\\]", [["(literal]", 1.0]]),
        ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ["a ", 1.0],
                ["house", 1.5730000000000004],
                [" ", 1.1],
                ["on", 1.0],
                [" a ", 1.1],
                ["hill", 0.55],
                [", sun, ", 1.1],
                ["sky", 1.4641000000000006],
                [".", 1.1],
            ],
        ),
    ],
)
def test_parse_attention_matches_a1111_examples(prompt, expected):
    assert _pairs(prompt) == expected


def test_break_is_its_own_segment():
    assert _pairs("a BREAK b") == [["a", 1.0], ["BREAK", -1], ["b", 1.0]]


@pytest.mark.parametrize(
    ("prompt", "first", "texts"),
    [
        ("[cat:dog:0.5], sky", "cat, sky", {"cat, sky", "dog, sky"}),
        ("[dog:10], sky", ", sky", {", sky", "dog, sky"}),
        ("[cat::0.3]", "cat", {"cat", ""}),
        ("[red|blue|green] hair", "red hair", {"red hair", "blue hair", "green hair"}),
        ("[not scheduling]", "[not scheduling]", {"[not scheduling]"}),
        ("\\[cat:dog:0.5\\]", "\\[cat:dog:0.5\\]", {"\\[cat:dog:0.5\\]"}),
    ],
)
def test_prompt_editing_first_step(prompt, first, texts):
    schedule = prompt_schedule(prompt, 20)
    assert schedule.first == first
    assert {t for _, t in schedule.entries} == texts


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("(mayonnaise bottle:1.2)", "mayonnaise bottle"),
        ("((red hair))", "red hair"),
        ("[blurry]", "blurry"),
        ("(tag:.5)", "tag"),
        ("<lora:foo_v2:0.8>", ""),
        ("<lora:foo:0.8> cross tattoo", "cross tattoo"),
        ("hijikata_toushirou_(gintama)", "hijikata_toushirou_(gintama)"),
        ("(a) (b)", "(a) (b)"),
        ("\\(a\\)", "\\(a\\)"),
    ],
)
def test_strip_tag_syntax(tag, expected):
    assert strip_tag_syntax(tag) == expected


def test_analysed_tag_text_keeps_literal_parentheses():
    assert analysed_tag_text("hijikata_toushirou_\\(gintama\\)") == "hijikata toushirou (gintama)"
    assert analysed_tag_text("(Mayonnaise_Bottle:1.3)") == "mayonnaise bottle"


def test_chunk_closes_at_75_and_comma_starts_next_chunk():
    # 40 one-token tags: cat , cat , ... = 79 tokens. When the 76th token (a comma) arrives
    # the first chunk is full (75) and closes; the comma opens chunk 2 (A1111 tokenize_line).
    layout = layout_prompt(", ".join(["cat"] * 40))
    assert [c.length for c in layout.chunks] == [75, 4]
    assert layout.chunks[1].ids[:4] == [COMMA_ID, 2368, COMMA_ID, 2368]
    assert layout.chunks[1].ids[4:] == [EOS_ID] * 71  # padded with EOS
    assert not any(t.crosses_boundary for t in layout.tags)
    assert layout.tags[37].positions == [(0, 74)]
    assert layout.tags[38].positions == [(1, 1)]


def test_comma_backtrack_moves_tag_to_next_chunk():
    # 36 "x" tags = 71 tokens; then ", very long blue hair": comma at 71, very 72, long 73,
    # blue 74; "hair" would be the 76th token, the last comma is 4 <= 20 tokens back, so
    # "very long blue" moves to chunk 2 and the tag stays whole.
    prompt = ", ".join(["x"] * 36) + ", very long blue hair"
    layout = layout_prompt(prompt)
    assert [c.length for c in layout.chunks] == [72, 4]
    tag = layout.tags[-1]
    assert tag.text == "very long blue hair"
    assert tag.positions == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert not tag.crosses_boundary


def test_tag_without_nearby_comma_crosses_boundary():
    layout = layout_prompt("1girl, " + " ".join(["cat"] * 80))
    # 1 girl , + 80 cats = 83 tokens; the comma is 73 tokens back (> 20): no backtrack.
    assert [c.length for c in layout.chunks] == [75, 8]
    long_tag = layout.tags[1]
    assert long_tag.crosses_boundary
    assert (long_tag.chunk, long_tag.chunk_end) == (0, 1)
    assert long_tag.n_tokens == 80


def test_break_pads_out_chunk():
    layout = layout_prompt("masterpiece, 1girl BREAK outdoors")
    assert [c.length for c in layout.chunks] == [4, 1]
    assert layout.tags[2].text == "outdoors"
    assert layout.tags[2].positions == [(1, 0)]


def test_and_starts_separate_subprompt():
    layout = layout_prompt("cat AND dog")
    assert [c.length for c in layout.chunks] == [1, 1]


def test_prompt_tags_weights_and_escapes():
    prompt = "(red hair:1.2), hijikata_toushirou_\\(gintama\\), [blurry]"
    layout = layout_prompt(prompt, underscores=True)
    texts = [t.text for t in layout.tags]
    assert texts == ["red hair", "hijikata toushirou (gintama)", "blurry"]
    # As A1111 sends it, by default: the underscores reach CLIP.
    assert layout_prompt(prompt).tags[1].text == "hijikata_toushirou_(gintama)"
    assert layout.tags[0].weight == pytest.approx(1.2)
    assert layout.tags[2].weight == pytest.approx(1 / 1.1)
    # Unescaped parentheses in a prompt are emphasis, as in A1111.
    assert split_prompt_tags("name (series)") == ["name series"]


def test_scheduled_branches_listed_but_not_laid_out():
    layout = layout_prompt("[cat:dog:0.5], sky")
    assert [t.text for t in layout.tags] == ["cat", "sky", "dog"]
    assert layout.tags[2].scheduled and layout.tags[2].positions == []


def test_extra_networks_removed():
    assert split_prompt_tags("<lora:cross_tattoo_v1:0.8>, cross tattoo") == ["cross tattoo"]


def test_empty_prompt_has_one_empty_chunk():
    layout = layout_prompt("")
    assert [c.length for c in layout.chunks] == [0]
    assert layout.tags == []
