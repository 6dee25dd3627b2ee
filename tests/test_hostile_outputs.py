"""Output hygiene against hostile tags, captions and file names: spreadsheet formulas in CSV,
terminal escapes and bidi overrides on screen, temp files left by a killed write."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from tagsmith.analysis.score import ScoreRow
from tagsmith.analysis.score_io import read_score_file, write_scores
from tagsmith.cli import EXIT_OK, run
from tagsmith.fileio import atomic_write_text, csv_cell, csv_value, remove_abandoned_temp_files
from tagsmith.text.display import shown

EVIL = ["=cmd|' /C calc'!A0", "+1+1", "@SUM(A1:A9)", "-2+3", "\tx", "\rx", "'=x", "''+y"]
HARMLESS = ["-1", "-0.25", "1e5", "'s", "long hair", "[x]", ""]


# -- 11. CSV formula injection ---------------------------------------------------------------------


@pytest.mark.parametrize("value", EVIL)
def test_formula_cells_get_an_apostrophe_and_round_trip(value):
    cell = csv_cell(value)
    assert cell == "'" + value
    assert csv_value(cell) == value


@pytest.mark.parametrize("value", HARMLESS)
def test_numbers_and_plain_text_are_left_alone(value):
    assert csv_cell(value) == value and csv_value(value) == value


def _row(tag: str) -> ScoreRow:
    return ScoreRow(tag=tag, text=tag, count=5, category=0, category_name="general",
                    tokens=("a</w>",), n_tokens=1,
                    known_words=("a",), unknown_words=(), head_token="a", shares_token_with=None,
                    shares_token_count=None, neighbors=(), leak_similarity=-0.5,
                    distinctiveness=0.25, leak_risk=0.1)


def test_score_csv_is_escaped_and_jsonl_keeps_the_raw_tag(tmp_path):
    evil = [t for t in EVIL if "\r" not in t]  # (read_score_file reads universal newlines)
    rows = [_row(t) for t in evil]
    out = write_scores(rows, tmp_path / "s.csv")
    cells = list(csv.reader(io.StringIO(out.read_text(), newline="")))
    assert [c[0] for c in cells[1:]] == ["'" + t for t in evil]
    assert not any(c[0][:1] in "=+-@\t\r" for c in cells[1:])
    assert cells[1][cells[0].index("leak_similarity")] == "-0.5"  # a number stays a number
    assert [r.tag for r in read_score_file(out)] == evil  # tagsmith reads its own escaping back
    jsonl = write_scores(rows, tmp_path / "s.jsonl")
    assert [json.loads(line)["tag"] for line in jsonl.read_text().splitlines()] == evil


def test_suggest_and_trigger_csv_use_the_same_escaping(tmp_path):
    from tagsmith.cli.suggest_cmd import write_suggest_csv
    from tagsmith.cli.trigger_cmd import write_trigger_csv

    cand = SimpleNamespace(
        to_dict=lambda: {"form": "=HYPERLINK(\"x\")", "kind": "@k", "tokens": ["a"],
                         "n_tokens": 1, "known": True, "score": -0.5, "fidelity": 0.1,
                         "leakage": 0.2, "avoid": None, "reason": "+reason"},
        similarity={"-evil": -0.25},
    )
    write_suggest_csv(tmp_path / "s.csv", SimpleNamespace(
        neighbors=[SimpleNamespace(tag="-evil")], candidates=[cand]))
    header, row = list(csv.reader((tmp_path / "s.csv").open()))
    assert header[-1] == "sim:-evil"  # starts with "s": safe as it is
    assert row[1:3] == ["'=HYPERLINK(\"x\")", "'@k"] and row[10] == "'+reason"
    assert row[6] == "-0.500000" and row[-1] == "-0.250000"
    part = SimpleNamespace(part="-p", tokens=["a"], n_tokens=1)
    member = SimpleNamespace(form="=m", score=0.5, similarity={"@n": 0.1}, candidate=part)
    fam = SimpleNamespace(stem="+stem", members=[member], held_out=None, score=0.5,
                          separation=0.1, reason="=r")
    write_trigger_csv(tmp_path / "t.csv", SimpleNamespace(
        neighbors=[SimpleNamespace(tag="@n")], families=[fam]))
    header, row = list(csv.reader((tmp_path / "t.csv").open()))
    assert row[1:4] == ["'+stem", "'=m", "'-p"] and row[9] == "'=r"


# -- 12. terminal escapes and bidi overrides -------------------------------------------------------


def test_shown_escapes_controls_bidi_and_undecodable_bytes():
    assert shown("a\x1b[31mred\x07") == "a\\x1b[31mred\\x07"
    assert shown("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert shown("caf" + os.fsdecode(b"\xe9")) == "caf\\xe9"
    assert shown("\x9b2J") == "\\x9b2J"
    assert shown("1girl, long hair\nsolo\té") == "1girl, long hair\nsolo\té"


def _no_raw(text: str) -> None:
    assert "\x1b[31m" not in text and "\u202e" not in text and "\x07" not in text


def test_tokenize_shows_hostile_tags_escaped(capsys):
    assert run(["tokenize", "red\x1b[31mhair\x07", "x\u202ey"]) == EXIT_OK
    out, err = capsys.readouterr()
    _no_raw(out + err)
    assert "\\x1b" in out and "\\u202e" in out
    # Escaped before wrapping: the longer text wraps, nothing is cropped.
    first_column = "".join(ln.split("│")[1].strip() for ln in out.splitlines()
                           if ln.startswith("│"))
    assert first_column.startswith("red\\x1b[31mhair")  # (rich itself drops BEL)
    assert " ".join(err.split()).count("the tokenizer sees the cleaned text shown") == 2


def test_dataset_and_retag_diff_show_hostile_names_and_captions_escaped(tmp_path, capsys):
    root = tmp_path / "ds"
    root.mkdir()
    for i in range(3):
        stem = f"img{i}\x1b[31m" if i == 0 else f"img{i}"
        (root / f"{stem}.png").write_bytes(b"\x89PNG")
        (root / f"{stem}.txt").write_text(
            "mayonnaise bottle, evil\u202etag, red\x1b[31mhair, 1girl", encoding="utf-8")
    assert run(["dataset", str(root)]) == EXIT_OK
    out = capsys.readouterr().out
    _no_raw(out)
    assert "\\u202e" in out
    assert run(["retag", str(root), "--map", "mayonnaise bottle=mayo", "--dry-run"]) == EXIT_OK
    out = capsys.readouterr().out
    _no_raw(out)
    assert "img0\\x1b[31m.txt" in out and "\\u202e" in out


def test_error_sentences_escape_hostile_paths(tmp_path, capsys):
    name = tmp_path / "no\x1b[31msuch"
    assert run(["dataset", str(name)]) != EXIT_OK
    err = capsys.readouterr().err
    assert "\x1b[31m" not in err and "no\\x1b[31msuch" in err


# -- 13. temp files a killed -o write left ---------------------------------------------------------


def test_a_successful_rerun_removes_temp_files_a_killed_write_left(tmp_path):
    target = tmp_path / "scores.csv"
    stale = tmp_path / ".scores.csv.k1ll3d_x.tmp"
    stale.write_text("half a file")
    unrelated = [tmp_path / ".other.csv.abcd1234.tmp", tmp_path / ".scores.csv.notours"]
    for p in unrelated:
        p.write_text("not ours")
    write_scores([_row("1girl")], target)
    assert not stale.exists()
    assert all(p.exists() for p in unrelated)
    assert read_score_file(target)[0].tag == "1girl"


@pytest.mark.skipif(os.name != "posix", reason="flock")
def test_a_temp_file_a_live_writer_holds_is_left_alone(tmp_path):
    import fcntl

    target = tmp_path / "out.txt"
    live = tmp_path / ".out.txt.l1vewrit.tmp"
    live.write_text("still being written")
    with live.open("rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        atomic_write_text(target, "done")
        assert live.exists()
    assert remove_abandoned_temp_files(target) == [live.name]
    assert target.read_text() == "done"




@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_a_terminated_command_removes_its_half_written_output(tmp_path, signame):
    """A job killed with SIGTERM (or its terminal closed) leaves neither a half-written output
    nor a hidden temporary file beside it, and an existing output stays as it was."""
    import signal

    target = tmp_path / "scores.csv"
    target.write_text("the old complete file\n", encoding="utf-8")
    code = (
        "import sys, time\n"
        "from tagsmith.cli import exit_on_termination\n"
        "from tagsmith.fileio import atomic_writer\n"
        "exit_on_termination()\n"
        f"with atomic_writer({str(target)!r}) as fh:\n"
        "    fh.write('half of the new file'); fh.flush()\n"
        "    print('writing', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    assert len(list(tmp_path.iterdir())) == 2  # the output and its temporary file
    proc.send_signal(getattr(signal, signame))
    assert proc.wait(timeout=60) == 128 + getattr(signal, signame)
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]
    assert target.read_text(encoding="utf-8") == "the old complete file\n"
