"""`tagsmith dataset` and `tagsmith retag` end to end: output, JSON, exit codes, sentences."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tagsmith.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, run

BACKGROUND = ["outdoors", "sky", "tree", "smile", "standing", "sitting", "window", "day"]


def make_dataset(root: Path, n: int = 60, seed: int = 0) -> Path:
    """Trigger everywhere; red hair + school uniform together in 90%; a character cluster in
    40%; alpha + beta together twice; independent background tags."""
    rng = random.Random(seed)
    for i in range(n):
        tags = ["mychar"]
        if i < int(0.9 * n):
            tags += ["red_hair", "school uniform"]
        if i in (3, 30):
            tags += ["alpha", "beta"]
        if i % 5 < 2:
            tags += ["eris greyrat", "blue dress", "hair ribbon"]
        tags += [t for t in BACKGROUND if rng.random() < 0.25]
        folder = root / ("10_mychar" if i % 2 else "5_extra")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"img{i:03d}.png").write_bytes(b"")
        (folder / f"img{i:03d}.txt").write_text(", ".join(tags))
    return root


def _err(capsys) -> str:  # noqa: ANN001
    return " ".join(capsys.readouterr().err.split())


# -- dataset --------------------------------------------------------------------------------


def test_report_lists_tags_pairs_clusters(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    assert run(["dataset", str(root), "--no-model", "-k", "1"]) == EXIT_OK
    out, err = capsys.readouterr()
    assert "60 captions for 60 images" in out
    assert "10_mychar ×10 (30)" in out and "5_extra ×5 (30)" in out
    assert "weighted by repeats" in " ".join(out.split())
    assert "red hair + school uniform" in out
    assert "blue dress, eris greyrat, hair ribbon" in out
    assert "alpha + beta" not in out
    assert "In every caption: mychar" in out
    assert "red hair | red_hair" not in out  # one written form only
    assert "Traceback" not in err


def test_json_report_contract(tmp_path, capsys):
    root = make_dataset(tmp_path / "ds")
    assert run(["dataset", str(root), "--no-model", "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["n_captions"] == 60
    assert data["weighted_by_repeats"] is True
    assert {r["folder"]: r["repeats"] for r in data["repeat_folders"]} == {
        "10_mychar": 10, "5_extra": 5,
    }
    pairs = [(p["a"], p["b"]) for p in data["pairs"]]
    assert pairs[0] == ("red hair", "school uniform")
    assert ("alpha", "beta") not in pairs
    first = data["pairs"][0]
    assert first["together"] == 54 and first["p_b_given_a"] == 1.0
    assert set(first) >= {"npmi", "lift", "phi", "score", "p_value", "q_value"}
    assert sorted(sorted(c["tags"]) for c in data["clusters"]) == [
        ["blue dress", "eris greyrat", "hair ribbon"], ["red hair", "school uniform"],
    ]
    assert all(c["embedding"] is None for c in data["clusters"])
    tags = {t["tag"]: t for t in data["tags"]}
    assert tags["red hair"]["forms"] == ["red_hair"]
    assert tags["red hair"]["n_tokens"] == 3  # red _ hair, as kohya tokenizes it
    assert data["tokens"]["keep_tokens"] == 0
    assert data["always_present"] == ["mychar"]


def test_no_model_found_is_a_one_line_notice(tmp_path, capsys, monkeypatch):
    root = make_dataset(tmp_path / "ds")
    monkeypatch.setenv("TAGSMITH_MODEL", str(tmp_path / "no-such-model.safetensors"))
    assert run(["dataset", str(root), "--json"]) == EXIT_OK
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert "The model column is skipped." in data["embedding_note"]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(" ".join(lines).split("Note: ")) == 2 and "model column is skipped" in err


def test_model_column_with_a_tiny_encoder(tmp_path, capsys, tiny_model):
    from tagsmith.model.calibration import common_tags, ordinal, top_share
    from tagsmith.model.embedding import EncoderSettings, open_embedder

    root = make_dataset(tmp_path / "ds")
    assert run(["dataset", str(root), "--json", "-m", str(tiny_model), "--no-cache"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["embedding_note"] is None
    cluster = next(c for c in data["clusters"] if "school uniform" in c["tags"])
    emb = cluster["embedding"]
    (pair,) = emb["pairs"]
    # Independent check: the façade's own vectors, centred on the mean of the shipped common
    # tags (the model's baseline without a vocabulary), cosine by hand; raw: plain cosine.
    with open_embedder(EncoderSettings(model=str(tiny_model), use_cache=False)) as embedder:
        a, b = embedder.embed([pair["a"], pair["b"]])
        mean = embedder.embed(common_tags()).mean(axis=0)
    assert pair["raw"] == pytest.approx(
        float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))), abs=1e-4)
    a, b = a - mean, b - mean
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert pair["cosine"] == pytest.approx(cos, abs=1e-4)
    assert 0 <= pair["percentile"] <= 100
    assert emb["collision"] == (pair["percentile"] >= 95)
    assert run(["dataset", str(root), "-m", str(tiny_model), "--no-cache"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "in the model" in out
    # The percentile in words: "81st pct", never "81th pct"; "top 3%", never "top 0%".
    if emb["collision"]:
        assert top_share(pair["percentile"]) in out
    else:
        assert f"{ordinal(int(pair['percentile']))} pct" in out
    assert "top 0%" not in out and not re.search(r"(?<!1)[123]th pct", out)


def test_bad_model_option_fails_even_without_clusters(tmp_path, capsys):
    root = tmp_path / "ds"
    (root).mkdir()
    (root / "a.png").write_bytes(b"")
    (root / "a.txt").write_text("x")
    assert run(["dataset", str(root), "--device", "toaster"]) == EXIT_USAGE
    assert "toaster" in _err(capsys)


@pytest.mark.parametrize(
    ("make", "args", "code", "message"),
    [
        (None, ["dataset", "{root}/missing"], EXIT_FAILURE, "missing does not exist."),
        ("notes", ["dataset", "{root}"], EXIT_FAILURE,
         "holds no caption files beside images"),
        (None, ["dataset", "{root}", "--keep-tokens", "-1"], EXIT_USAGE, "--keep-tokens"),
        (None, ["dataset", "{root}", "--min-score", "2"], EXIT_USAGE, "--min-score"),
    ],
)
def test_dataset_bad_input(tmp_path, capsys, make, args, code, message):
    if make == "notes":
        (tmp_path / "notes.txt").write_text("a, b")
    assert run([a.format(root=tmp_path) for a in args]) == code
    err = _err(capsys)
    assert message in err and "Traceback" not in err


def test_odd_files_are_noted_not_fatal(tmp_path, capsys):
    root = tmp_path / "ds"
    root.mkdir()
    for stem, data in {
        "bom": b"\xef\xbb\xbfa, b\r\n",
        "utf16": "a, b".encode("utf-16"),
        "cp": "caf\u00e9, b".encode("cp1252"),
        "empty": b"",
        "trail": b"a, b,",
        "esc": b"hijikata_toushirou_\\(gintama\\), b",
    }.items():
        (root / f"{stem}.png").write_bytes(b"")
        (root / f"{stem}.txt").write_bytes(data)
    assert run(["dataset", str(root), "--no-model", "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["encodings"] == {"UTF-8": 3, "CP1252": 1, "UTF-16 LE with BOM": 1,
                                 "UTF-8 with BOM": 1}
    tags = {t["tag"] for t in data["tags"]}
    assert {"a", "b", "café", "hijikata toushirou (gintama)"} <= tags
    assert "" not in tags
    notes = " ".join(data["notes"])
    assert "not UTF-8" in notes and "empty" in notes and "trailing or doubled comma" in notes


# -- retag ----------------------------------------------------------------------------------


def _caption_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    root.mkdir()
    for stem, text in {
        "a": "1girl, mayonnaise_bottle, table",
        "b": "(mayonnaise bottle:1.2), mayonnaise-container, x",
        "c": "1girl, solo",
    }.items():
        (root / f"{stem}.png").write_bytes(b"")
        (root / f"{stem}.txt").write_text(text)
    (root / "README.txt").write_text("mayonnaise bottle")
    return root


def _texts(root: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(root.glob("*.txt"))}


def test_dry_run_shows_the_diff_and_writes_nothing(tmp_path, capsys):
    root = _caption_dir(tmp_path)
    before = _texts(root)
    args = ["retag", str(root), "--map", "mayonnaise bottle=mayonnaise-container", "--dry-run"]
    assert run(args) == EXIT_OK
    out = capsys.readouterr().out
    assert "- 1girl, mayonnaise_bottle, table" in out
    assert "+ 1girl, mayonnaise-container, table" in out
    assert "+ (mayonnaise-container:1.2), x" in out
    assert "2 of 3 caption files change" in out and "1 duplicate removed" in out
    assert _texts(root) == before
    assert not (root / ".tagsmith-backup").exists()


def test_retag_then_undo(tmp_path, capsys):
    root = _caption_dir(tmp_path)
    before = _texts(root)
    assert run(["retag", str(root), "-m", "mayonnaise bottle=mayonnaise-container", "--yes"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Rewrote 2 files." in out and f"tagsmith retag --undo {root}" in out
    after = _texts(root)
    assert after["a.txt"] == "1girl, mayonnaise-container, table"
    assert after["b.txt"] == "(mayonnaise-container:1.2), x"
    assert after["README.txt"] == "mayonnaise bottle"  # not a caption: no image beside it
    assert run(["retag", "--undo", str(root)]) == EXIT_OK
    assert "Restored 2 files" in capsys.readouterr().out
    assert _texts(root) == before


def test_retag_json(tmp_path, capsys):
    root = _caption_dir(tmp_path)
    args = ["retag", str(root), "--map", "mayonnaise bottle=mayonnaise-container", "--json"]
    assert run(args + ["--dry-run"]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)
    assert plan["changed"] == 2 and plan["duplicates_removed"] == 1
    assert plan["renamed"] == {"mayonnaise bottle=mayonnaise-container": 2}
    assert plan["files"][0]["diff"] == [{
        "line": 1, "old": "1girl, mayonnaise_bottle, table",
        "new": "1girl, mayonnaise-container, table",
    }]
    assert run(args + ["--yes"]) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert sorted(result["written"]) == ["a.txt", "b.txt"] and result["backup"]


def test_nothing_to_change(tmp_path, capsys):
    root = _caption_dir(tmp_path)
    assert run(["retag", str(root), "--map", "zebra=horse", "--yes"]) == EXIT_OK
    assert "No caption of 3 mentions 'zebra'; nothing to change." in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--map", "mayonnaise bottle"], EXIT_USAGE,
         "--map 'mayonnaise bottle' must be OLD=NEW with exactly one '='"),
        ([], EXIT_USAGE, 'Give at least one --map "OLD=NEW".'),
        (["--map", "a=b", "--map", "b=a"], EXIT_USAGE, "The map chains: 'b' is the new tag"),
        (["--map", "a=b", "--map", "a=c"], EXIT_USAGE,
         "The map conflicts: 'a' is mapped to both 'b' and 'c'."),
        (["--map", "a=b", "--map", "b=c"], EXIT_USAGE, "The map chains"),
        (["--undo", "--map", "a=b"], EXIT_USAGE,
         "--undo restores the last run and takes no --map."),
        (["--undo"], EXIT_FAILURE, "has no retag run to undo"),
        # Not a terminal and no --yes: show the diff, write nothing, say how.
        (["--map", "mayonnaise bottle=x"], EXIT_USAGE, "Nothing written: pass --yes to rewrite 2"),
    ],
)
def test_retag_bad_input(tmp_path, capsys, args, code, message):
    root = _caption_dir(tmp_path)
    before = _texts(root)
    assert run(["retag", str(root), *args]) == code
    err = _err(capsys)
    assert message in err and "Traceback" not in err
    assert _texts(root) == before


def test_retag_missing_folder_and_no_captions(tmp_path, capsys):
    assert run(["retag", str(tmp_path / "nope"), "--map", "a=b"]) == EXIT_FAILURE
    assert "nope does not exist." in _err(capsys)
    (tmp_path / "notes.txt").write_text("a")
    assert run(["retag", str(tmp_path), "--map", "a=b"]) == EXIT_FAILURE
    assert "holds no caption files beside images" in _err(capsys)


def test_help_lists_both_commands_without_heavy_imports():
    code = (
        "import sys; from tagsmith.cli import run; rc = run(['--help']);"
        "heavy = [m for m in ('torch', 'transformers', 'scipy', 'numpy') if m in sys.modules];"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"},
    ).stdout
    assert "dataset" in out and "retag" in out
    assert "HEAVY []" in out
