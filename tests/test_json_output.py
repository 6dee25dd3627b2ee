"""Every --json goes through one writer that streams plain JSON (never rich's print_json)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tagsmith.cli import EXIT_OK, run
from tagsmith.cli import _json as json_out


def test_iter_json_streams_arrays_one_item_per_line() -> None:
    items = ({"tag": f"t{i}", "n": i, "text": "ü"} for i in range(1500))
    pieces = list(json_out.iter_json(items))
    assert len(pieces) > 2  # written in batches as the generator runs, not as one string
    text = "".join(pieces)
    assert json.loads(text) == [{"tag": f"t{i}", "n": i, "text": "ü"} for i in range(1500)]
    assert text.count("\n") == 1502 and "ü" in text  # "[", one item a line, "]"; UTF-8 kept


@pytest.mark.parametrize("value", [[], {}, {"a": [1, 2]}, "x", 3, None, [[1], {"b": None}]])
def test_iter_json_round_trips(value) -> None:  # noqa: ANN001
    buf = io.StringIO()
    json_out.write_json(value, buf)
    assert json.loads(buf.getvalue()) == value


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list:
    """Calls of the one writer; rich's print_json may not be used at all."""
    calls: list = []
    real = json_out.write_json

    def spy(data, stream=None, **kw):  # noqa: ANN001, ANN202
        calls.append(data)
        return real(data, stream, **kw)

    monkeypatch.setattr(json_out, "write_json", spy)

    def refuse(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("rich's print_json re-parses and highlights: too slow for JSON")

    import rich.console

    monkeypatch.setattr(rich.console.Console, "print_json", refuse)
    return calls


def _dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds" / "5_thing"
    root.mkdir(parents=True)
    for i in range(6):
        (root / f"{i}.png").write_bytes(b"")
        (root / f"{i}.txt").write_text("1girl, maid, apron" + (", smile" if i % 2 else ""))
    return tmp_path / "ds"


@pytest.mark.parametrize("args", [
    ["tokenize", "--json", "mayonnaise bottle", "cross-arm"],
    ["tokenize", "--json", "--prompt", "masterpiece, (red hair:1.2) BREAK smile"],
    ["suggest", "--json", "mayonnaise bottle"],
    ["trigger", "--json", "cross tattoo", "--part", "arm"],
    ["dataset", "--json", "--no-model", "{dataset}"],
    ["retag", "--json", "--dry-run", "{dataset}", "--map", "maid=maid-x"],
])
def test_every_json_option_uses_the_one_writer(args: list[str], tmp_path: Path, writes: list,
                                               capsys) -> None:  # noqa: ANN001
    if "{dataset}" in args:
        folder = str(_dataset(tmp_path))
        args = [folder if a == "{dataset}" else a for a in args]
    code = run(args)
    cap = capsys.readouterr()
    assert code == EXIT_OK, cap.err
    assert len(writes) == 1
    json.loads(cap.out)  # stdout is pure JSON


def test_embed_json_uses_the_one_writer(tiny_model: Path, writes: list, capsys) -> None:  # noqa: ANN001
    assert run(["embed", "--json", "a", "b", "--model", str(tiny_model)]) == EXIT_OK
    rows = json.loads(capsys.readouterr().out)
    assert [r["tag"] for r in rows] == ["a", "b"] and len(writes) == 1


def test_tokenize_json_over_many_tags(tmp_path: Path, capsys) -> None:
    tags = tmp_path / "tags.txt"
    tags.write_text("".join(f"tag number {i}\n" for i in range(5000)), encoding="utf-8")
    assert run(["tokenize", "--json", "--file", str(tags)]) == EXIT_OK
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 5000 and rows[4999]["tag"] == "tag number 4999"
