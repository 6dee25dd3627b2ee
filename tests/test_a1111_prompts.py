"""`--prompt` mode against an independent run of the A1111 webui's path (tests/a1111_reference.py:
lark with the webui 1.10 grammar, transformers' slow CLIPTokenizer, tokenize_line chunking)."""

from __future__ import annotations

import json
import random

import pytest
from a1111_reference import lark_schedule, slow_clip_tokenizer, slow_ids, webui_first_step

from tagsmith.cli import run as main
from tagsmith.text.prompt import layout_prompt
from tagsmith.text.prompt_editing import prompt_schedule, split_and, strip_comments, when_step
from tagsmith.text.tokenizer import clean_text, clean_text_transformers, load_tokenizer

pytest.importorskip("lark")


@pytest.fixture(scope="module")
def slow(tmp_path_factory):  # noqa: ANN001, ANN201
    return slow_clip_tokenizer(tmp_path_factory.mktemp("clip"))


def _ours(prompt: str, **kw) -> list[tuple[float, list[tuple[list[int], list[float]]]]]:
    layout = layout_prompt(prompt, **kw)
    out = []
    for k, part in enumerate(layout.parts):
        chunks = [(c.ids, c.multipliers) for c in layout.chunks if c.part == k]
        out.append((part.weight, chunks))
    return out


def _same(ours, ref) -> None:  # noqa: ANN001
    assert len(ours) == len(ref)
    for (w1, c1), (w2, c2) in zip(ours, ref):
        assert w1 == pytest.approx(w2)
        assert [ids for ids, _ in c1] == [ids for ids, _ in c2]
        assert [m for _, m in c1] == [pytest.approx(m) for _, m in c2]


ISSUE_CASES = [
    "black_shoes :1.2 AND (coat:1)",
    "1girl, smile:1.5",
    "[turtleneck|danganronpa: trigger happy havoc]",
    "|_|, [red hair:blue hair:3]",
    "[a|b:0.5], c",
    "[red hair:blue hair:0]",
    "[red hair:blue hair:-1]",
    "[red hair:blue hair:0.01]",
    "[red hair:blue hair:1e1]",
    "flat_chest, long_hair",
    "a \\\\\\(b\\)",
    "a AND",
    "[x AND y:3]",
    "masterpiece, # a note\n(cat:1.3),; dog",
    "(cat:1.3),; dog",
    "tom &amp; jerry <3, (fish &amp; chips)",
    "(a BREAK b), c BREAK d",
    "<lora:x:0.8>, cat AND dog :0.5 AND",
]


@pytest.mark.parametrize("prompt", ISSUE_CASES)
def test_issue_cases_match_the_webui(slow, prompt):  # noqa: ANN001
    _same(_ours(prompt), webui_first_step(slow, prompt))


def test_and_and_trailing_weight():
    parts = split_and("black_shoes :1.2 AND (coat:1)")
    assert [(p.text, p.weight) for p in parts] == [("black_shoes", 1.2), (" (coat:1)", 1.0)]
    # No AND: the trailing :1.5 is still the (only) part's weight, not text.
    layout = layout_prompt("1girl, smile:1.5")
    assert [(p.text, p.weight) for p in layout.parts] == [("1girl, smile", 1.5)]
    assert [t.tokens for t in layout.tags] == [["1</w>", "girl</w>"], ["smile</w>"]]
    chunk0 = layout_prompt("black_shoes :1.2 AND (coat:1)").chunks[0]
    tok = load_tokenizer()
    assert [tok.id_to_token(i) for i in chunk0.ids[: chunk0.length]] == [
        "black</w>", "_</w>", "shoes</w>"]


def test_failed_editing_parse_leaves_the_prompt_literal():
    for prompt in ("[turtleneck|danganronpa: trigger happy havoc]", "|_|, [a:b:3]",
                   "[a|b:0.5]", "a [{b|d{:.5] c"):
        assert lark_schedule(prompt, 20) is None  # the webui's grammar fails on each
        schedule = prompt_schedule(prompt, 20)
        assert not schedule.parsed and schedule.entries == [(20, prompt)]
    layout = layout_prompt("[turtleneck|danganronpa: trigger happy havoc]")
    assert layout.parts[0].literal
    assert layout.tags[0].text == "turtleneck|danganronpa: trigger happy havoc"
    assert layout.tags[0].multipliers == [pytest.approx(1 / 1.1)] * 12


@pytest.mark.parametrize(
    ("number", "when"),
    [("0", 0), ("-1", -1), ("0.01", 0), ("1e1", 10), ("1E1", 10), ("1e-1", 0), ("1.5e1", 20),
     ("1.0", 20), ("5.", 20), (".5", 10), ("30", 20), ("0.999", 19), ("2.5", 20), ("-0.5", -10)],
)
def test_schedule_numbers_at_20_steps(number, when):
    # Hand-computed from the webui 1.10 rule: "." -> fraction of steps, else a step; int().
    assert when_step(number, 20) == when
    prompt = f"[red hair:blue hair:{number}]"
    ref = lark_schedule(prompt, 20)
    assert prompt_schedule(prompt, 20).entries == ref
    assert ref[0][1] == ("blue hair" if when < 1 else "red hair")


def test_schedule_steps_option_changes_the_first_step():
    assert prompt_schedule("[a:b:0.01]", 20).first == "b"
    assert prompt_schedule("[a:b:0.01]", 150).first == "a"  # 1.5 -> step 1


def test_underscores_as_written_in_prompt_mode():
    tok = load_tokenizer()
    layout = layout_prompt("flat_chest")
    assert [tok.id_to_token(i) for i in layout.tags[0].ids] == ["flat</w>", "_</w>", "chest</w>"]
    spaced = layout_prompt("flat_chest, ^_^", underscores=True)
    assert [t.text for t in spaced.tags] == ["flat chest", "^_^"]  # tagcomplete's exclusions


def test_backslash_kept_and_escapes(slow):  # noqa: ANN001
    layout = layout_prompt("a \\\\\\(b\\)")
    assert layout.tags[0].text == "a \\(b)"
    assert layout.chunks[0].ids[: layout.chunks[0].length] == slow_ids(slow, "a \\(b)")


def test_empty_part_after_and_is_an_empty_chunk():
    layout = layout_prompt("a AND")
    assert [(c.part, c.length) for c in layout.chunks] == [(0, 1), (1, 0)]
    assert layout_prompt("a AND AND b").chunks[1].length == 0


def test_and_inside_brackets_splits_first():
    layout = layout_prompt("[x AND y:3]")
    assert [p.text for p in layout.parts] == ["[x", " y:3]"]
    assert [t.text for t in layout.tags] == ["x", "y:3]"]
    assert layout.tags[0].multipliers == [pytest.approx(1 / 1.1)]


def test_comments_stripped_by_default_and_offered():
    prompt = "masterpiece, # a note\nsmile"
    assert [t.text for t in layout_prompt(prompt).tags] == ["masterpiece", "smile"]
    assert [t.text for t in layout_prompt(prompt, comments=False).tags] == [
        "masterpiece", "# a note smile"]
    assert strip_comments("#whole line\na # rest\nb") == "a \nb"


def test_punctuation_token_holding_a_comma_has_its_own_multiplier():
    layout = layout_prompt("(cat:1.3),; dog")
    cat = layout.tags[0]
    assert cat.tokens == ["cat</w>", ","] and cat.multipliers == [pytest.approx(1.3), 1.0]
    assert cat.weight == pytest.approx(1.3)
    assert layout.chunks[0].multipliers[:4] == [pytest.approx(1.3), 1.0, 1.0, 1.0]


def test_cleaning_follows_transformers_in_prompt_mode(slow):  # noqa: ANN001
    text = "fish &amp; chips <3"
    assert clean_text(text) == "fish & chips <3"  # OpenAI's reference unescapes
    assert clean_text_transformers(text) == "fish &amp; chips <3"
    layout = layout_prompt(text)
    assert layout.chunks[0].ids[: layout.chunks[0].length] == slow_ids(slow, text)
    tok = load_tokenizer()
    assert tok.encode(text) != slow_ids(slow, text)  # tag commands keep the reference's
    assert tok.encode(text, cleaning="transformers") == slow_ids(slow, text)


@pytest.mark.parametrize(
    "text", ["tom &amp; jerry", "a &amp;amp; b", "Café ＡＢＣ “quotes” ﬁsh", "x\u3000y\tz",
             "don’t", "Ã©t&eacute; <b>", "日本語", "  spaced   out  "])
def test_transformers_cleaning_matches_slow_tokenizer(slow, text):  # noqa: ANN001
    assert load_tokenizer().encode(text, cleaning="transformers") == slow_ids(slow, text)


_TAGS = ["1girl", "long_hair", "smile", "|_|", "red hair", "blue_eyes", "(kancolle)",
         "hijikata_toushirou_\\(gintama\\)", ">_<", "score_9", "flat_chest", "a&amp;b"]
_SYNTAX = ["{t}", "({t})", "(({t}))", "[{t}]", "({t}:1.2)", "({t}: 0.8 )", "[{t}:{u}:0.5]",
           "[{t}:{u}:3]", "[{t}|{u}]", "[{t}::0.3]", "{t} BREAK", "{t} AND", "{t}:1.1",
           "<lora:x_{t}:0.7>", "{t} # c\n", "[{t}:{u}:1e1]", "\\({t}\\)", "{t},;"]


def _random_prompt(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 40)):
        t, u = rng.choice(_TAGS), rng.choice(_TAGS)
        out.append(rng.choice(_SYNTAX).format(t=t, u=u))
    return ", ".join(out)


def test_random_prompts_match_the_webui(slow):  # noqa: ANN001
    rng = random.Random(16)
    for _ in range(300):
        prompt = _random_prompt(rng)
        _same(_ours(prompt), webui_first_step(slow, prompt))


def test_editing_grammar_matches_lark_on_random_text():
    pieces = ["a", "b c", "_", "[", "]", "(", ")", ":", "|", "\\", "3", "0.5", "1e1", " ",
              ",", "-1", ".", "\n", "x"]
    rng = random.Random(7)
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 14)))
        schedule = prompt_schedule(text, 20)
        assert (schedule.entries if schedule.parsed else None) == lark_schedule(text, 20), text


def test_cli_prompt_json_has_parts_and_multipliers(capsys):  # noqa: ANN001
    assert main(["tokenize", "--prompt", "(red:1.2) hair AND cat:0.5", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["multipliers"] == [1.2, 1.0] and rows[0]["weight"] == 1.2
    assert [(r["text"], r["part"], r["part_weight"]) for r in rows] == [
        ("red hair", 0, 1.0), ("cat", 1, 0.5)]


def test_cli_prompt_table_shows_parts_and_literal_warning(capsys):  # noqa: ANN001
    assert main(["tokenize", "--prompt", "cat :1.2 AND [a|b:0.5]"]) == 0
    captured = capsys.readouterr()
    assert "AND part 1: weight 1.2" in captured.out
    assert "grammar rejects part 2" in captured.err
    assert main(["tokenize", "--prompt", "flat_chest", "--underscores-as-spaces",
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["text"] == "flat chest"


def test_cli_comments_end_with_each_argument(tmp_path, capsys):  # noqa: ANN001
    path = tmp_path / "prompt.txt"
    path.write_text("masterpiece, # quality\n# a whole line\nsmile, (cat:1.2)\n", encoding="utf-8")
    assert main(["tokenize", "--prompt", "--file", str(path), "--json"]) == 0
    assert [r["text"] for r in json.loads(capsys.readouterr().out)] == [
        "masterpiece", "smile", "cat"]
    assert main(["tokenize", "--prompt", "a # note", "b", "--json"]) == 0
    assert [r["text"] for r in json.loads(capsys.readouterr().out)] == ["a", "b"]
    assert main(["tokenize", "--prompt", "a # note", "b", "--no-comments", "--json"]) == 0
    assert [r["text"] for r in json.loads(capsys.readouterr().out)] == ["a # note", "b"]


@pytest.mark.shared_data
def test_random_prompts_of_danbooru_tags_match_the_webui(slow, danbooru_csv):  # noqa: ANN001
    import csv

    with open(danbooru_csv, encoding="utf-8", newline="") as f:
        names = [row[0] for row in csv.reader(f) if row]
    rng = random.Random(1616)
    tags = rng.sample(names, 3000) + ["|_|", ">_<", "^_^", "(o)_(o)", ":d", ";)"]
    for _ in range(60):
        out = []
        for _ in range(rng.randint(1, 45)):
            t, u = rng.choice(tags), rng.choice(tags)
            if rng.random() < 0.5:
                t = t.replace("_", " ").replace("(", "\\(").replace(")", "\\)")
            out.append(rng.choice(_SYNTAX).format(t=t, u=u))
        prompt = ", ".join(out)
        _same(_ours(prompt), webui_first_step(slow, prompt))
