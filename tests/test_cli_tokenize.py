"""`tagsmith tokenize` end to end, and the CLI's exit-code conventions."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tagsmith.cli import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, run


def _json(capsys) -> list[dict]:
    return json.loads(capsys.readouterr().out)


def test_json_contract_in_input_order(capsys):
    assert run(["tokenize", "mayonnaise_bottle", "cross-arm", "crossarm", "--json"]) == EXIT_OK
    rows = _json(capsys)
    assert [r["tag"] for r in rows] == ["mayonnaise_bottle", "cross-arm", "crossarm"]
    first = rows[0]
    assert set(first) >= {"tag", "text", "tokens", "ids", "n_tokens", "known_words",
                          "unknown_words"}
    assert first["text"] == "mayonnaise bottle"
    assert first["tokens"] == ["may", "onnaise</w>", "bottle</w>"]
    assert first["ids"] == [1686, 48934, 5392]
    assert first["n_tokens"] == 3
    assert first["known_words"] == ["bottle"]
    assert first["unknown_words"] == ["mayonnaise"]
    assert rows[1]["tokens"] == ["cross</w>", "-</w>", "arm</w>"]
    assert rows[1]["unknown_words"] == []
    assert rows[2]["tokens"] == ["cross", "arm</w>"]
    assert rows[2]["unknown_words"] == ["crossarm"]


def test_table_shows_pieces_and_word_status(capsys):
    assert run(["tokenize", "mayonnaise bottle"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "onnaise</w>" in out
    assert "1686 48934 5392" in out
    assert "bottle known" in out
    assert "split may+onnaise" in out


def test_file_with_bom_crlf_and_blank_lines(tmp_path, capsys):
    f = tmp_path / "tags.txt"
    f.write_bytes("\ufeffbottle\r\n\r\nwine_bottle\r\n".encode())
    assert run(["tokenize", "--file", str(f), "--json"]) == EXIT_OK
    rows = _json(capsys)
    assert [r["text"] for r in rows] == ["bottle", "wine bottle"]
    assert rows[1]["ids"] == [2604, 5392]


def test_stdin(monkeypatch, capsys):
    import io

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"1girl\nsolo\n")))
    assert run(["tokenize", "-f", "-", "--json"]) == EXIT_OK
    assert [r["ids"] for r in _json(capsys)] == [[272, 1611], [5797]]


def test_invalid_utf8_names_file_and_line(tmp_path, capsys):
    f = tmp_path / "bad.txt"
    f.write_bytes(b"bottle\nwine\xff bottle\n")
    assert run(["tokenize", "--file", str(f)]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "not UTF-8 text (invalid byte" in err and "line 2)" in err and "bad.txt" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["tokenize", ""], EXIT_USAGE, "Tag 1 is empty"),
        (["tokenize", "a", "   "], EXIT_USAGE, "Tag 2 is empty"),
        (["tokenize"], EXIT_USAGE, "Give at least one tag"),
        (["tokenize", "--file", "/nonexistent/tags.txt"], EXIT_FAILURE, "does not exist"),
        (["tokenize", "--bogus"], EXIT_USAGE, "No such option"),
    ],
)
def test_bad_input_one_sentence_and_exit_code(args, code, message, capsys):
    assert run(args) == code
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err


def test_directory_given_as_file(tmp_path, capsys):
    assert run(["tokenize", "--file", str(tmp_path)]) == EXIT_FAILURE
    assert "is a folder" in capsys.readouterr().err


def test_blank_file(tmp_path, capsys):
    f = tmp_path / "empty.txt"
    f.write_text("\n  \n")
    assert run(["tokenize", "--file", str(f)]) == EXIT_FAILURE
    assert "holds no tags" in capsys.readouterr().err


def test_tag_over_75_tokens_warns_where_it_is_cut(capsys):
    tag = " ".join(f"word{i}" for i in range(40))  # word + digit pieces: well over 75
    assert run(["tokenize", tag, "--json"]) == EXIT_OK
    captured = capsys.readouterr()
    n = json.loads(captured.out)[0]["n_tokens"]
    assert n > 75
    assert f"is {n} tokens; a 75-token chunk ends after" in captured.err


def test_control_characters_warned_and_cleaned(tmp_path, capsys):
    f = tmp_path / "ctl.txt"
    f.write_bytes("wine\u200b bottle\x07\n".encode())
    assert run(["tokenize", "--file", str(f), "--json"]) == EXIT_OK
    captured = capsys.readouterr()
    assert "U+200B" in captured.err and "U+0007" in captured.err
    assert "line 1 of" in captured.err


def test_syntax_only_tag_warns_empty(capsys):
    assert run(["tokenize", "<lora:foo:1>", "bottle"]) == EXIT_OK
    assert "empty once prompt syntax is removed" in capsys.readouterr().err


def test_prompt_mode_reports_chunks_and_crossing(capsys):
    prompt = "1girl, " + " ".join(["cat"] * 80) + ", smile"
    assert run(["tokenize", "--prompt", prompt, "--json"]) == EXIT_OK
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [r["text"] for r in rows] == ["1girl", " ".join(["cat"] * 80), "smile"]
    assert rows[1]["crosses_boundary"] is True
    assert (rows[1]["chunk"], rows[1]["chunk_end"]) == (0, 1)
    assert rows[2]["chunk"] == 1
    assert "split between chunk 1 and chunk 2" in captured.err


def test_prompt_mode_table(capsys):
    assert run(["tokenize", "--prompt", "(red hair:1.2), smile BREAK outdoors"]) == EXIT_OK
    out = capsys.readouterr().out
    # red hair , smile | outdoors
    assert "5 tokens in 2 chunks" in out
    assert "chunk 1: 4/75 tokens" in out and "chunk 2: 1/75 tokens" in out
    assert "1.20" in out


def test_keyboard_interrupt_exits_130(monkeypatch, capsys):
    import tagsmith.text.prompt

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tagsmith.text.prompt, "analyze_tags", boom)
    assert run(["tokenize", "bottle"]) == EXIT_INTERRUPTED
    assert "Interrupted" in capsys.readouterr().err


def test_unexpected_tagsmith_error_exit_code(monkeypatch, capsys):
    import tagsmith.text.prompt
    from tagsmith.errors import InputError

    def fail(*a, **k):
        raise InputError("Something specific went wrong.")

    monkeypatch.setattr(tagsmith.text.prompt, "analyze_tags", fail)
    assert run(["tokenize", "bottle"]) == EXIT_FAILURE
    assert capsys.readouterr().err.strip() == "Error: Something specific went wrong."


def test_version_and_help(capsys):
    assert run(["--version"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("tagsmith ")
    assert run(["--help"]) == EXIT_OK
    assert "tokenize" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--help"], ["tokenize", "mayonnaise bottle"],
                                  ["tokenize", "--prompt", "a, b"]])
def test_help_and_tokenize_never_import_torch_or_transformers_models(args):
    code = (
        "import sys\n"
        "from tagsmith.cli import run\n"
        f"rc = run({args!r})\n"
        "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')\n"
        "    or m.startswith('transformers.models') or m == 'textual' or m == 'sklearn')\n"
        "print('HEAVY', heavy, file=sys.stderr)\n"
        "sys.exit(rc if not heavy else 99)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "tagsmith", "tokenize", "sks", "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["ids"] == [48136]


def test_tokenize_file_reads_a_tag_list_as_vocab_and_embed_do(tmp_path, capsys) -> None:  # noqa: ANN001
    """A tagcomplete CSV gives its tags (not whole CSV rows); a lone-CR or UTF-16 text file
    gives its lines; lines of prompts that are no tag list stay lines."""
    import json

    from tagsmith.cli import EXIT_OK, run

    def tags(path) -> list[str]:  # noqa: ANN001
        assert run(["tokenize", "--file", str(path), "--json"]) == EXIT_OK
        return [row["tag"] for row in json.loads(capsys.readouterr().out)]

    csv_file = tmp_path / "danbooru.csv"
    csv_file.write_text('1girl,0,6008644,"1girls,sole_female"\nlong_hair,0,4350743,\n',
                        encoding="utf-8")
    assert tags(csv_file) == ["1girl", "long_hair"]
    cr = tmp_path / "cr.txt"
    cr.write_bytes(b"red hair\rblue eyes\r")
    assert tags(cr) == ["red hair", "blue eyes"]
    u16 = tmp_path / "u16.txt"
    u16.write_bytes("red hair\ncaf\u00e9\n".encode("utf-16"))
    assert tags(u16) == ["red hair", "caf\u00e9"]
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("masterpiece, best quality, 1girl\nsolo, smile, outdoors\n",
                       encoding="utf-8")
    assert tags(prompts) == ["masterpiece, best quality, 1girl", "solo, smile, outdoors"]
