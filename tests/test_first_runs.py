"""What a new user meets on a first run: progress on stderr, forms that never hide, one
warning for a too-long tag, sentences for odd arguments and files, e621 lists, plain help."""

from __future__ import annotations

import io
import time
from pathlib import Path

import pytest
from fake_embedder import BagOfTokensEmbedder, random_table
from rich.console import Console

from tagsmith.analysis.suggest import SuggestOptions, suggest
from tagsmith.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, run
from tagsmith.cli import _progress as progress_mod
from tagsmith.cli._progress import Progress

LONG_TAG = " ".join(f"word{i}" for i in range(150))  # 490 tokens: digits are tokens


def _piped() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=False, width=80), buf


# -- progress ---------------------------------------------------------------------------------


def test_progress_names_a_slow_step_once_and_stays_quiet_for_quick_ones() -> None:
    console, buf = _piped()
    with Progress(console, delay=0.05) as say:
        say("quick step")  # replaced before its delay ends: never printed
        say("building the index")
        time.sleep(0.3)
        for done in range(0, 101, 10):
            say.count("encode", done, 100)
        time.sleep(0.3)
    lines = buf.getvalue().splitlines()
    assert lines == ["tagsmith: building the index…", "tagsmith: encode: 100 tags…"]


def test_progress_on_a_terminal_draws_a_spinner_and_bars() -> None:
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=80)
    with Progress(console) as say:
        say("reading the vocabulary")
        say.count("encode", 50, 100)
        say.count("encode", 100, 100)
    out = buf.getvalue()
    assert "encode" in out and "100/100" in out


@pytest.fixture
def no_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_mod, "DELAY_S", 0.0)


def test_first_suggest_with_a_vocabulary_says_it_builds_the_index(tmp_path: Path, no_delay,
                                                                   capsys) -> None:  # noqa: ANN001
    vocab = tmp_path / "vocab.csv"
    vocab.write_text("bottle,0,100,\nwine_bottle,0,10,\nmayonnaise,0,5,\n", encoding="utf-8")
    assert run(["suggest", "mayonnaise bottle", "--vocab", str(vocab)]) == EXIT_OK
    first = capsys.readouterr().err
    assert "tagsmith: building the vocabulary index of vocab.csv" in first
    assert run(["suggest", "mayonnaise bottle", "--vocab", str(vocab), "--json"]) == EXIT_OK
    second = capsys.readouterr().err  # --json: stdout stays JSON, progress still on stderr
    assert "tagsmith: reading the vocabulary index of vocab.csv" in second


def test_resumed_score_reads_the_cache_as_its_own_phase(tmp_path: Path, tiny_model: Path,
                                                        no_delay, capsys) -> None:  # noqa: ANN001
    vocab = tmp_path / "tags.txt"
    vocab.write_text("".join(f"tag{i} thing\n" for i in range(12)), encoding="utf-8")
    out = tmp_path / "s.csv"
    common = ["score", str(vocab), "-o", str(out), "--model", str(tiny_model)]
    assert run([*common, "--limit", "8"]) == EXIT_OK  # stands in for an interrupted run
    capsys.readouterr()
    assert run(common) == EXIT_OK
    err = capsys.readouterr().err
    assert "tagsmith: cache: 12 tags…" in err
    # the encoder's progress counts only what is left, so its rate and eta are real
    assert "tagsmith: encode: 4 tags…" in err


def test_dataset_says_what_it_reads(tmp_path: Path, no_delay, capsys) -> None:  # noqa: ANN001
    folder = tmp_path / "ds" / "3_x"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"")
        (folder / f"{i}.txt").write_text("1girl, maid", encoding="utf-8")
    assert run(["dataset", str(tmp_path / "ds"), "--no-model", "--json"]) == EXIT_OK
    err = capsys.readouterr().err
    assert "tagsmith: reading the captions in" in err
    assert "tagsmith: counting tags and pairs in 3 captions…" in err


# -- suggest shows what the user came to compare ------------------------------------------------


def test_top_limits_only_the_substitutes() -> None:
    emb = BagOfTokensEmbedder(random_table(32, seed=5))
    res = suggest("mayonnaise bottle", SuggestOptions(top=1, candidates=["mayo jar", "mayo tub"]),
                  embedder=emb)
    forms = {rc.candidate.form: rc.candidate.kind for rc in res.candidates}
    for form in ("mayonnaise bottle", "mayonnaise-bottle", "mayonnaise_bottle",
                 "mayonnaisebottle", "mayo jar", "mayo tub"):
        assert form in forms
    assert sum(kind.startswith("substitute") for kind in forms.values()) == 1
    scores = [rc.score for rc in res.candidates]
    assert scores == sorted(scores, reverse=True)  # ranked in place


def test_without_a_model_top_still_shows_every_form(capsys) -> None:  # noqa: ANN001
    assert run(["suggest", "mayonnaise bottle", "--top", "1", "-c", "mayo jar"]) == EXIT_OK
    out = capsys.readouterr().out
    for form in ("mayonnaise-bottle", "mayonnaise_bottle", "mayonnaisebottle", "mayo jar"):
        assert form in out


# -- one short warning for a too-long tag -----------------------------------------------------


@pytest.mark.parametrize("with_model", [False, True])
def test_suggest_warns_once_about_a_too_long_tag(with_model: bool, tiny_model: Path,
                                                 capsys) -> None:  # noqa: ANN001
    args = ["suggest", LONG_TAG] + (["--model", str(tiny_model)] if with_model else [])
    assert run(args) == EXIT_OK
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("-token chunk SD1.5 reads") == 1, err
    assert "word0 word1" in err and LONG_TAG not in err and "word149" not in err


def test_embed_warns_once_for_several_long_tags(tiny_model: Path, capsys) -> None:  # noqa: ANN001
    assert run(["embed", LONG_TAG, LONG_TAG + " x", "--model", str(tiny_model)]) == EXIT_OK
    err = " ".join(capsys.readouterr().err.split())
    assert err.count("-token chunk SD1.5 reads") == 1 and "and 1 more tag exceed" in err


def test_tokenize_warning_does_not_repeat_the_whole_tag(capsys) -> None:  # noqa: ANN001
    assert run(["tokenize", LONG_TAG]) == EXIT_OK
    err = capsys.readouterr().err
    assert "is 490 tokens" in err and LONG_TAG not in " ".join(err.split())


# -- odd arguments and files ------------------------------------------------------------------


def test_explore_refuses_a_file_that_is_not_a_score_file(tmp_path: Path, capsys,
                                                         monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.chdir(tmp_path)
    Path("forms.png").write_bytes(b"\x89PNG\r\n")
    assert run(["explore", "forms.png"]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "forms.png is a file, not a score file" in err


@pytest.mark.parametrize("command", [["tokenize"], ["embed"], ["suggest"], ["trigger"],
                                     ["explore"]])
def test_an_empty_tag_argument_is_the_same_bad_argument_everywhere(command: list[str],
                                                                  capsys) -> None:  # noqa: ANN001
    assert run([*command, ""]) == EXIT_USAGE
    assert "Tag 1 is empty; give a tag with at least one visible character." in \
        capsys.readouterr().err


@pytest.mark.parametrize("args", [
    ["suggest", "mayonnaise bottle", "--candidate", ""],
    ["suggest", "mayonnaise bottle", "--keep", " "],
    ["suggest", "mayonnaise bottle", "--avoid", ""],
    ["suggest", "mayonnaise bottle", "--neighbor", ""],
    ["trigger", "cross tattoo", "--part", ""],
    ["trigger", "cross tattoo", "--avoid", ""],
    ["trigger", "cross tattoo", "--held-out", ""],
])
def test_empty_option_values_are_refused_not_ignored(args: list[str], capsys) -> None:  # noqa: ANN001
    assert run(args) == EXIT_USAGE
    option = next(a for a in args if a.startswith("--"))
    assert f"{option} is empty" in capsys.readouterr().err


def test_a_non_utf8_file_gets_one_sentence_everywhere(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"maid\ncaf\xe9\n")
    messages = set()
    for args in (["tokenize", "--file", str(bad)], ["suggest", "x", "--vocab", str(bad)],
                 ["score", str(bad), "-o", str(tmp_path / "o.csv")]):
        assert run(args) == EXIT_FAILURE
        err = " ".join(capsys.readouterr().err.split())
        messages.add(err[err.index("Error: "):])
    assert messages == {f"Error: {bad} is not UTF-8 text (invalid byte 0xe9 on line 2); save "
                        "it as UTF-8 and try again."}


def test_plain_list_reads_bom_and_prompt_syntax_like_tokenize(tmp_path: Path) -> None:
    from tagsmith.text.vocab import read_vocabulary

    p = tmp_path / "tags.txt"
    p.write_bytes("\ufeffmaid\n(maid:1.2)\n\ufeffapron\n((red hair))\nname_(series)\n"
                  .encode("utf-8"))
    v = read_vocabulary(p)
    assert v.texts == ["maid", "apron", "red hair", "name (series)"]
    assert v.duplicates_removed == 1


def test_suggest_names_bad_vocabulary_rows(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    vocab = tmp_path / "v.csv"
    rows = ["bottle,0,100,", "wine_bottle,x,10,"] + [f"t{i},y,1," for i in range(7)]
    vocab.write_text("\n".join(rows) + "\n", encoding="utf-8")
    assert run(["suggest", "mayonnaise bottle", "--vocab", str(vocab)]) == EXIT_OK
    err = capsys.readouterr().err
    assert "skipped line 2: category 'x' is not a whole number" in err
    assert "skipped line 6:" in err and "skipped line 7:" not in err
    assert "and 3 more bad rows" in err


# -- e621 lists -------------------------------------------------------------------------------


E621 = "wolf,5,900,\nsolo,0,800,\nmeta_tag,7,50,\nsome_artist,1,20,\n"


@pytest.mark.parametrize(("category", "tags"), [
    ("species", {"wolf"}), ("meta", {"meta tag"}), ("general", {"solo"}), ("5", {"wolf"}),
])
def test_e621_categories_by_the_lists_own_numbering(tmp_path: Path, category: str,
                                                    tags: set[str], capsys) -> None:  # noqa: ANN001
    from tagsmith.analysis.score_io import read_score_file

    vocab = tmp_path / "tags.csv"  # no "e621" in the name: detected from category 7
    vocab.write_text(E621, encoding="utf-8")
    out = tmp_path / "s.jsonl"
    assert run(["score", str(vocab), "-o", str(out), "--category", category]) == EXIT_OK, \
        capsys.readouterr().err
    assert {r.text for r in read_score_file(out)} == tags


def test_numbering_can_be_given(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from tagsmith.analysis.score_io import read_score_file

    vocab = tmp_path / "custom.csv"
    vocab.write_text("wolf,5,900,\nsolo,0,800,\n", encoding="utf-8")  # nothing says e621
    out = tmp_path / "s.jsonl"
    assert run(["score", str(vocab), "-o", str(out), "--category", "species"]) == EXIT_USAGE
    assert "Unknown category 'species'" in capsys.readouterr().err
    assert run(["score", str(vocab), "-o", str(out), "--category", "species",
                "--numbering", "e621"]) == EXIT_OK
    assert {r.text for r in read_score_file(out)} == {"wolf"}


def test_e621_detected_from_the_file_name(tmp_path: Path) -> None:
    from tagsmith.text.vocab import read_vocabulary

    p = tmp_path / "e621.csv"
    p.write_text("wolf,5,900,\n", encoding="utf-8")
    assert read_vocabulary(p).numbering == "e621"
    q = tmp_path / "danbooru.csv"
    q.write_text("highres,5,900,\n", encoding="utf-8")
    assert read_vocabulary(q).numbering == "danbooru"



@pytest.mark.parametrize(("numbering", "names"), [
    ([], {"wolf": "species", "solo": "general", "meta tag": "meta",
          "some artist": "artist"}),  # e621, from its category 7
    (["--numbering", "danbooru"], {"wolf": "meta", "solo": "general", "meta tag": None,
                                   "some artist": "artist"}),
])
def test_score_files_name_categories_in_the_lists_numbering(
    tmp_path: Path, numbering: list[str], names: dict, capsys  # noqa: ANN001
) -> None:
    import csv

    from tagsmith.analysis.score_io import read_score_file

    vocab = tmp_path / "tags.csv"
    vocab.write_text(E621, encoding="utf-8")
    for ext in ("csv", "jsonl", "parquet"):
        out = tmp_path / f"s.{ext}"
        assert run(["score", str(vocab), "-o", str(out), *numbering]) == EXIT_OK, \
            capsys.readouterr().err
        assert {r.text: r.category_name for r in read_score_file(out)} == names
    with (tmp_path / "s.csv").open(encoding="utf-8", newline="") as fh:
        header = next(csv.reader(fh))
    assert header[header.index("category") + 1] == "category_name"


def test_explore_labels_and_filters_categories_as_the_file_names_them(tmp_path: Path) -> None:
    from tagsmith.analysis.score import score_vocabulary
    from tagsmith.analysis.score_io import write_scores
    from tagsmith.text.vocab import read_vocabulary
    from tagsmith.tui.loaders import load_score_table
    from tagsmith.tui.table import TableView

    # No 6-8 in this list, so only the e621 name (or --numbering) says that 5 is species.
    vocab = tmp_path / "e621_tags.csv"
    vocab.write_text("wolf,5,900,\nsolo,0,800,\nsome_artist,1,20,\n", encoding="utf-8")
    rows = score_vocabulary(read_vocabulary(vocab)).rows
    out = write_scores(rows, tmp_path / "scores.csv")  # the score file's name says nothing

    def shown(table, query: str) -> list[str]:  # noqa: ANN001
        view = TableView(table)
        view.set_query(query)
        return sorted(table.key(int(r)) for r in view.rows)

    table = load_score_table(out)
    cat = next(c for c in table.columns if c.key == "category")
    assert cat.labels[5] == "species" and cat.labels[7] == "meta"
    assert shown(table, "category=species") == ["wolf"]
    assert shown(table, "category=meta") == []  # e621's meta is 7: not the species row
    wolf = [table.key(i) for i in range(len(rows))].index("wolf")
    assert ("", "species") in table.detail(wolf).facts

    # A score file from before category_name: numbers alone, guessed as score guesses a list.
    old = tmp_path / "old.csv"
    old.write_text("tag,text,category,n_tokens\nwolf,wolf,5,1\nmeta_tag,meta tag,7,2\n"
                   "highres,highres,5,1\n", encoding="utf-8")
    old_table = load_score_table(old)
    assert shown(old_table, "category=species") == ["highres", "wolf"]
    assert ("", "species") in old_table.detail(0).facts  # the pane names it as the table does
    older = tmp_path / "danbooru_old.csv"
    older.write_text("tag,text,category,n_tokens\nhighres,highres,5,1\n", encoding="utf-8")
    assert shown(load_score_table(older), "category=meta") == ["highres"]


# -- help -------------------------------------------------------------------------------------


def test_no_help_text_is_eaten_as_rich_markup() -> None:
    """Help is rendered as Rich markup, where ``[from:to:0.5]`` is a style tag and vanishes:
    every bracket meant literally must be escaped (``\\[``)."""
    import typer
    from rich.markup import render

    from tagsmith.cli import _load_app

    root = typer.main.get_command(_load_app())
    texts = [("tagsmith", root.help or "")]
    for name, command in root.commands.items():
        texts.append((name, command.help or ""))
        texts += [(f"{name} {p.name}", getattr(p, "help", None) or "") for p in command.params]
    eaten = [where for where, text in texts
             if render(text).plain != text.replace("\\[", "[")]
    assert eaten == []


MODEL_OPTIONS = ["--model", "--lora", "--clip-skip", "--device", "--dtype", "--representation",
                 "--encoder", "--combine", "--context", "--cache-dir", "--no-cache"]


@pytest.mark.parametrize("command", ["suggest", "trigger", "score", "dataset", "embed",
                                     "explore"])
def test_model_commands_end_with_the_shared_model_options(command: str, tmp_path: Path,
                                                          capsys) -> None:  # noqa: ANN001
    import typer

    from tagsmith.cli import _load_app

    params = typer.main.get_command(_load_app()).commands[command].params
    names = [p.opts[0] for p in params if p.opts[0].startswith("--")]
    assert names[-len(MODEL_OPTIONS):] == MODEL_OPTIONS
    assert run([command, "--help"]) == EXIT_OK
    shown = capsys.readouterr().out
    assert all(opt in shown for opt in MODEL_OPTIONS)
    # Each value reaches the settings: a bad one is refused by name before any model loads.
    vocab = tmp_path / "tags.csv"
    vocab.write_text("solo,0,800,\n", encoding="utf-8")
    args = {"suggest": ["x"], "trigger": ["x"], "embed": ["x"], "explore": ["x"],
            "score": [str(vocab), "-o", str(tmp_path / "o.csv")], "dataset": [str(tmp_path)],
            }[command]
    assert run([command, *args, "--context", "no slot here"]) == EXIT_USAGE
    assert "{}" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["", "tokenize", "embed", "suggest", "trigger", "score",
                                     "explore", "dataset", "retag"])
@pytest.mark.parametrize("width", [80, 120])
def test_help_shows_what_a_user_types(command: str, width: int, monkeypatch, capsys) -> None:  # noqa: ANN001
    import tagsmith.cli._console  # noqa: F401 - its consoles keep the suite's width, not this one

    monkeypatch.setenv("COLUMNS", str(width))  # typer draws help on a console of its own
    assert run([command, "--help"] if command else ["--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "<bool>" not in out and "<str>" not in out and "<int>" not in out
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "{" not in usage
    assert "…" not in out  # nothing cut off: every default and path is readable


def test_progress_lines_defuse_terminal_escapes_in_names() -> None:
    console, buf = _piped()
    with Progress(console, delay=0) as say:
        say("reading the captions in evil\x1b[2Jdir [bold]x[/bold]")
    line = buf.getvalue()
    assert "\x1b" not in line and "[bold]x[/bold]" in line


def test_explore_filters_explain_left_out_columns_and_unknown_names(tmp_path: Path) -> None:
    from tagsmith.analysis.score import score_vocabulary
    from tagsmith.analysis.score_io import write_scores
    from tagsmith.text.vocab import read_vocabulary
    from tagsmith.tui.loaders import load_score_table
    from tagsmith.tui.table import TableView

    vocab = tmp_path / "danbooru.csv"
    vocab.write_text("solo,0,800,\nhighres,5,900,\nhatsune_miku,4,100,\n", encoding="utf-8")
    out = write_scores(score_vocabulary(read_vocabulary(vocab)).rows, tmp_path / "s.csv")
    view = TableView(load_score_table(out))  # no model: no similarity columns
    view.set_query("leak>0.5")
    assert "'leak>0.5': empty here (scored without a text encoder)" in view.status()
    view.set_query("category=species")  # an e621 name in a Danbooru file
    assert ("'category=species': not a category here; use general, artist, copyright, "
            "character, meta, rating or a number") in view.status()
    view.set_query("category=character")
    assert [view.table.key(int(r)) for r in view.rows] == ["hatsune miku"]
    view.set_query("nosuch>3")  # still read as words; says what the columns are
    assert "'nosuch' is no column" in view.status()
