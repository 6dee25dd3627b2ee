"""Rewriting caption files: the map, the byte-exact rewrite, backups, undo, and crashes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tagsmith.captions import retag as rt
from tagsmith.captions.parse import parse_caption_text, tag_key
from tagsmith.captions.retag import (
    apply_retag,
    list_backups,
    parse_maps,
    plan_retag,
    rewrite_caption_text,
    undo_last_retag,
)
from tagsmith.errors import DatasetError, UsageError

MAYO = ["mayonnaise bottle=mayonnaise-container"]


def write(folder: Path, stem: str, data: bytes, *, image: str = ".png", ext: str = ".txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}{image}").write_bytes(b"\x89PNG")
    path = folder / f"{stem}{ext}"
    path.write_bytes(data)
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".tagsmith-backup" not in p.parts
    }


# -- the map --------------------------------------------------------------------------------


def test_parse_maps_normalises_keys_and_keeps_new_text():
    (m,) = parse_maps(["  Mayonnaise_Bottle = mayonnaise-container "])
    assert (m.old, m.new, m.key, m.new_key) == (
        "Mayonnaise_Bottle", "mayonnaise-container", "mayonnaise bottle", "mayonnaise-container",
    )
    (m,) = parse_maps(["\\=_\\= = equals face"])  # \= is a literal '='
    assert (m.old, m.key) == ("=_=", "=_=")
    assert len(parse_maps(["a=b", "a=b"])) == 1  # the same map twice
    (m,) = parse_maps(["red_hair=red hair"])  # a rewrite of the written form is not a chain
    assert m.key == m.new_key == "red hair"
    assert len(parse_maps(["a=c", "b=c"])) == 2  # merging two tags is allowed


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([], 'Give at least one --map "OLD=NEW".'),
        (["mayonnaise bottle"], "--map 'mayonnaise bottle' must be OLD=NEW with exactly one '='"),
        (["a=b=c"], "must be OLD=NEW with exactly one '='"),
        (["=b"], "--map '=b' has an empty old tag"),
        (["a= "], "--map 'a= ' has an empty new tag"),
        (["a=b, c"], "the new tag contains a comma or line break"),
        (["a=(b:1.2)"], "write the new tag without weight syntax"),
        (["a=b", "a=c"], "The map conflicts: 'a' is mapped to both 'b' and 'c'."),
        (["a=b", "b=a"], "The map chains: 'b' is the new tag of 'a=b' and the old tag of 'b=a'"),
        (["a=b", "b=c"], "The map chains: 'b' is the new tag of 'a=b' and the old tag of 'b=c'"),
        (["x_y=z", "z=X Y"], "The map chains: 'z' is the new tag of 'x_y=z'"),
    ],
)
def test_bad_maps_are_refused_with_one_sentence(specs, message):
    with pytest.raises(UsageError) as exc:
        parse_maps(specs)
    assert message in str(exc.value)
    assert exc.value.exit_code == 2
    assert str(exc.value).count(". ") == 0  # one sentence


# -- rewriting text -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        # underscores, case and spacing around the tag all match; spacing is kept
        ("1girl, mayonnaise_bottle, table", "1girl, mayonnaise-container, table"),
        ("1girl,Mayonnaise Bottle ,table", "1girl,mayonnaise-container ,table"),
        ("  mayonnaise  bottle\t,x", "  mayonnaise-container\t,x"),
        # weights around the tag are kept
        ("(mayonnaise bottle:1.2), x", "(mayonnaise-container:1.2), x"),
        ("((mayonnaise_bottle)), [x]", "((mayonnaise-container)), [x]"),
        ("(a, mayonnaise bottle:1.1)", "(a, mayonnaise-container:1.1)"),
        # line endings and trailing commas are kept
        ("mayonnaise bottle,\r\nsecond, mayonnaise bottle\r\n",
         "mayonnaise-container,\r\nsecond, mayonnaise-container\r\n"),
        # de-duplication: the first occurrence stays, later ones go with their comma
        ("mayonnaise-container, x, mayonnaise bottle", "mayonnaise-container, x"),
        ("mayonnaise bottle, x, (mayonnaise-container:1.3), y",
         "mayonnaise-container, x, y"),
        ("a, mayonnaise bottle, mayonnaise_bottle", "a, mayonnaise-container"),
        # per line: kohya reads the first line, so a second line is its own caption
        ("mayonnaise bottle\nmayonnaise-container", "mayonnaise-container\nmayonnaise-container"),
        # duplicates the map did not create are left alone
        ("x, x, mayonnaise bottle", "x, x, mayonnaise-container"),
        # tags that only contain the words are not the tag
        ("mayonnaise bottle cap, bottle", "mayonnaise bottle cap, bottle"),
    ],
)
def test_rewrite_cases(before, after):
    new, _ = rewrite_caption_text(before, parse_maps(MAYO))
    assert new == after


def test_escaped_parentheses_match_and_new_text_is_written_as_typed():
    maps = parse_maps(["hijikata toushirou (gintama)=hijikata_\\(gintama\\)"])
    new, edits = rewrite_caption_text("1boy, hijikata_toushirou_\\(gintama\\), x", maps)
    assert new == "1boy, hijikata_\\(gintama\\), x"
    assert edits[0].old == "hijikata_toushirou_\\(gintama\\)"


def test_duplicate_inside_a_weight_group_is_renamed_not_removed():
    new, edits = rewrite_caption_text(
        "mayonnaise-container, (x, mayonnaise bottle:1.2)", parse_maps(MAYO)
    )
    assert new == "mayonnaise-container, (x, mayonnaise-container:1.2)"
    assert edits[0].note.startswith("kept: part of a weight group")


def test_merging_two_tags_into_one_keeps_one():
    new, edits = rewrite_caption_text("a, b, c", parse_maps(["a=merged", "b=merged"]))
    assert new == "merged, c"
    assert [(e.old, e.new) for e in edits] == [("a", "merged"), ("b", None)]


TAGS = ["mayonnaise bottle", "mayonnaise_bottle", "Mayonnaise Bottle", "mayonnaise-container",
        "red hair", "red_hair", "1girl", "x\\(y\\)", ":)", ""]


@given(
    st.lists(
        st.tuples(
            st.sampled_from(TAGS),
            st.sampled_from(["", "(", "(("]),
            st.sampled_from([",", ", ", " , ", "\n", "\r\n", ",\r\n"]),
        ),
        min_size=1, max_size=10,
    )
)
@settings(max_examples=300, deadline=None)
def test_rewrite_properties(pieces):
    parts = []
    for tag, wrap, sep in pieces:
        closing = {"": "", "(": ":1.2)", "((": "))"}[wrap]
        parts.append((f"{wrap}{tag}{closing}" if tag else "") + sep)
    text = "".join(parts)
    maps = parse_maps(MAYO + ["red hair=crimson"])
    new, _ = rewrite_caption_text(text, maps)
    touched = {"mayonnaise bottle", "mayonnaise-container", "red hair", "crimson"}
    old_tags = parse_caption_text(text)
    new_tags = parse_caption_text(new)
    # Line structure and every other tag, in order, are untouched.
    assert new.count("\n") == text.count("\n") and new.count("\r") == text.count("\r")
    assert [t.key for t in old_tags if t.key not in touched] == [
        t.key for t in new_tags if t.key not in touched
    ]
    # No old tag is left, and where the map renamed something the new tag appears once.
    assert not {"mayonnaise bottle", "red hair"} & {t.key for t in new_tags}
    for source, target in (("mayonnaise bottle", "mayonnaise-container"), ("red hair", "crimson")):
        for line in {t.line for t in old_tags if t.key == source}:
            assert [t.key for t in new_tags if t.line == line].count(target) == 1
    # Applying the map again changes nothing.
    assert rewrite_caption_text(new, maps)[0] == new


# -- files ----------------------------------------------------------------------------------

CASES = {
    "utf8": ("1girl, mayonnaise_bottle, table", "utf-8", b""),
    "bom": ("1girl, mayonnaise bottle\r\n", "utf-8", b"\xef\xbb\xbf"),
    "utf16": ("mayonnaise bottle, café\r\n", "utf-16-le", b"\xff\xfe"),
    "utf16be": ("x, (mayonnaise bottle:1.2)", "utf-16-be", b"\xfe\xff"),
    "cp1252": ("naïve, mayonnaise bottle, “q”,", "cp1252", b""),
}


def _dataset(tmp_path: Path) -> Path:
    root = tmp_path / "ds"
    for stem, (text, enc, bom) in CASES.items():
        write(root / "10_x", stem, bom + text.encode(enc))
    write(root / "10_x", "untouched", b"1girl, solo")
    write(root / "10_x" / "sub", "nested", b"mayonnaise bottle", image=".webp")
    (root / "10_x" / "README.txt").write_bytes(b"mayonnaise bottle notes")  # no image: not ours
    (root / "notes.caption").write_bytes(b"mayonnaise bottle")
    (root / ".hidden").mkdir()
    write(root / ".hidden", "h", b"mayonnaise bottle")
    return root


def test_plan_apply_undo_keep_every_byte(tmp_path):
    root = _dataset(tmp_path)
    (root / "10_x" / "bom.txt").chmod(0o640)
    before = snapshot(root)
    mtime = os.stat(root / "10_x" / "bom.txt").st_mtime_ns
    plan = plan_retag(root, parse_maps(MAYO))
    assert snapshot(root) == before  # planning writes nothing
    assert sorted(c.rel for c in plan.changes) == sorted(
        [f"10_x/{s}.txt" for s in CASES] + ["10_x/sub/nested.txt"]
    )
    result = apply_retag(plan)
    after = snapshot(root)
    for stem, (text, enc, bom) in CASES.items():
        expected = text.replace("mayonnaise_bottle", "mayonnaise-container").replace(
            "mayonnaise bottle", "mayonnaise-container"
        )
        assert after[f"10_x/{stem}.txt"] == bom + expected.encode(enc)
    changed = {k for k in before if before[k] != after[k]}
    assert changed == {c.rel for c in plan.changes}  # nothing else, README and hidden included
    assert (root / "10_x" / "bom.txt").stat().st_mode & 0o777 == 0o640
    # The backup holds the originals and a manifest with both hashes.
    manifest = json.loads((result.backup / "manifest.json").read_text())
    assert manifest["maps"] == [{"old": "mayonnaise bottle", "new": "mayonnaise-container"}]
    for e in manifest["files"]:
        assert (result.backup / "files" / e["path"]).read_bytes() == before[e["path"]]
        assert e["old_sha256"] == hashlib.sha256(before[e["path"]]).hexdigest()
        assert e["new_sha256"] == hashlib.sha256(after[e["path"]]).hexdigest()
    undone = undo_last_retag(root)
    assert sorted(undone.restored) == sorted(c.rel for c in plan.changes)
    assert snapshot(root) == before
    assert (root / "10_x" / "bom.txt").stat().st_mode & 0o777 == 0o640
    assert os.stat(root / "10_x" / "bom.txt").st_mtime_ns == mtime
    with pytest.raises(DatasetError, match="no retag run to undo"):
        undo_last_retag(root)


def test_undo_steps_back_one_run_at_a_time(tmp_path):
    root = tmp_path / "ds"
    f = write(root, "a", b"mayonnaise bottle, red hair")
    apply_retag(plan_retag(root, parse_maps(MAYO)))
    apply_retag(plan_retag(root, parse_maps(["red hair=crimson"])))
    assert f.read_bytes() == b"mayonnaise-container, crimson"
    assert len(list_backups(root)) == 2
    undo_last_retag(root)
    assert f.read_bytes() == b"mayonnaise-container, red hair"
    undo_last_retag(root)
    assert f.read_bytes() == b"mayonnaise bottle, red hair"


def test_undo_refuses_when_a_file_changed_since(tmp_path):
    root = tmp_path / "ds"
    a = write(root, "a", b"mayonnaise bottle")
    b = write(root, "b", b"mayonnaise bottle, x")
    apply_retag(plan_retag(root, parse_maps(MAYO)))
    b.write_bytes(b"edited by hand")
    with pytest.raises(DatasetError, match="b.txt changed after the retag run") as exc:
        undo_last_retag(root)
    assert "nothing was restored" in str(exc.value)
    assert a.read_bytes() == b"mayonnaise-container"  # all or nothing


def test_backup_without_manifest_is_ignored(tmp_path):
    root = tmp_path / "ds"
    write(root, "a", b"x")
    (root / ".tagsmith-backup" / "20990101T000000.000000Z" / "files").mkdir(parents=True)
    assert list_backups(root) == []
    with pytest.raises(DatasetError, match="no retag run to undo"):
        undo_last_retag(root)


def test_file_changed_between_plan_and_apply_is_left_alone(tmp_path):
    root = tmp_path / "ds"
    a = write(root, "a", b"mayonnaise bottle")
    b = write(root, "b", b"mayonnaise bottle")
    plan = plan_retag(root, parse_maps(MAYO))
    b.write_bytes(b"changed meanwhile")
    result = apply_retag(plan)
    assert result.changed_since_plan == ["b.txt"] and result.written == ["a.txt"]
    assert a.read_bytes() == b"mayonnaise-container"
    assert b.read_bytes() == b"changed meanwhile"


def test_no_captions_and_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        plan_retag(tmp_path / "missing", parse_maps(MAYO))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("mayonnaise bottle")
    with pytest.raises(DatasetError, match="no caption files beside images"):
        plan_retag(tmp_path / "empty", parse_maps(MAYO))


def test_a_write_error_midway_leaves_old_or_new_and_undo_restores(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    files = [write(root, f"f{i}", b"mayonnaise bottle, %d" % i) for i in range(5)]
    before = snapshot(root)
    real = rt.replace_file_bytes
    calls = []

    def failing(path, data, **kw):  # noqa: ANN001, ANN202
        calls.append(path)
        if len(calls) == 4:  # the manifest, then two captions, then a failure
            raise OSError(28, "No space left on device")
        return real(path, data, **kw)

    monkeypatch.setattr(rt, "replace_file_bytes", failing)
    with pytest.raises(DatasetError, match="2 of 5 files were rewritten"):
        apply_retag(plan_retag(root, parse_maps(MAYO)))
    monkeypatch.setattr(rt, "replace_file_bytes", real)
    states = [f.read_bytes() for f in files]
    assert states[:2] == [b"mayonnaise-container, 0", b"mayonnaise-container, 1"]
    assert states[2:] == [b"mayonnaise bottle, %d" % i for i in (2, 3, 4)]
    result = undo_last_retag(root)
    assert sorted(result.restored) == ["f0.txt", "f1.txt"]
    assert snapshot(root) == before


# -- killed mid-run ------------------------------------------------------------------------


def _start_retag(root: Path, delay: str, log: Path) -> subprocess.Popen:
    env = dict(os.environ, **{rt.DELAY_ENV: delay})
    # Output goes to a file: a full pipe would block the run before it writes anything.
    return subprocess.Popen(
        [sys.executable, "-m", "tagsmith", "retag", str(root), "--map", MAYO[0], "--yes"],
        env=env, stdout=subprocess.DEVNULL, stderr=log.open("wb"),
    )


def _wait_for_new(files: list[Path], new: dict[Path, bytes], at_least: int, proc) -> None:  # noqa: ANN001
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sum(f.read_bytes() == new[f] for f in files) >= at_least:
            return
        if proc.poll() is not None:
            pytest.fail(f"retag ended early with exit code {proc.returncode}")
        time.sleep(0.02)
    pytest.fail("retag made no progress")


def _big_dataset(root: Path, n: int) -> tuple[list[Path], dict[Path, bytes], dict[Path, bytes]]:
    files, old, new = [], {}, {}
    for i in range(n):
        # Long captions, so a half-written file would be easy to spot.
        text = f"1girl, mayonnaise_bottle, tag{i}, " + ", ".join(f"filler {k}" for k in range(200))
        f = write(root, f"img{i:03d}", text.encode())
        files.append(f)
        old[f] = text.encode()
        new[f] = text.replace("mayonnaise_bottle", "mayonnaise-container").encode()
    return files, old, new


@pytest.mark.parametrize("how", ["SIGKILL", "SIGINT"])
def test_killed_run_leaves_each_file_old_or_new_and_undo_restores_all(tmp_path, how):
    root = tmp_path / "ds"
    files, old, new = _big_dataset(root, 30)
    log = tmp_path / "stderr.txt"
    proc = _start_retag(root, "0.15", log)
    try:
        _wait_for_new(files, new, 3, proc)
        proc.send_signal(signal.SIGKILL if how == "SIGKILL" else signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = log.read_bytes()
    states = [f.read_bytes() for f in files]
    assert all(s in (old[f], new[f]) for f, s in zip(files, states))
    n_new = sum(s == new[f] for f, s in zip(files, states))
    assert 3 <= n_new < len(files)
    if how == "SIGINT":
        assert proc.returncode == 130
        assert "each file is either unchanged or fully rewritten" in err.decode()
    else:
        assert proc.returncode == -signal.SIGKILL
    # Leftover temporary files never look like captions.
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert all(".tagsmith-" in name or name == ".tagsmith-backup" for name in leftovers)
    out = subprocess.run(
        [sys.executable, "-m", "tagsmith", "retag", "--undo", str(root)],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert f"Restored {n_new} files" in out.stdout
    assert all(f.read_bytes() == old[f] for f in files)
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


def test_a_kill_during_the_backup_touches_no_caption(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    files, old, _ = _big_dataset(root, 5)
    real = rt._write_new
    calls = []

    def dying(path, data):  # noqa: ANN001, ANN202
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(rt, "_write_new", dying)
    with pytest.raises(KeyboardInterrupt):
        apply_retag(plan_retag(root, parse_maps(MAYO)))
    assert all(f.read_bytes() == old[f] for f in files)
    assert list_backups(root) == []  # no manifest: not a run to undo


def test_tag_key_used_for_matching_is_the_dataset_key():
    assert tag_key("Mayonnaise_Bottle") == "mayonnaise bottle"


@pytest.mark.parametrize(("old", "new", "shown_old", "shown_new"), [
    # a long caption: two unchanged tags either side of the change, the rest cut to "…"
    ("a, b, c, d, e, f, g, h, i", "a, b, c, d, E, f, g, h, i",
     "…, c, d, e, f, g, …", "…, c, d, E, f, g, …"),
    # two changes far apart keep their own context; a short run between them stays whole
    ("x, a, b, c, d, e, f, g, h, y", "X, a, b, c, d, e, f, g, h, Y",
     "x, a, b, …, g, h, y", "X, a, b, …, g, h, Y"),
    ("one, two, three", "one, 2, three", "one, two, three", "one, 2, three"),  # short: whole
    ("a,b,c,d,e,f", "a,b,c,d,e,F", "…,d,e,f", "…,d,e,F"),  # no spaces after the commas
    # a duplicate removed: the tag before it loses its comma, so it is part of the change
    ("a, b, m, c, d, e, m", "a, b, m, c, d, e", "…, c, d, e, m", "…, c, d, e"),
])
def test_retag_diff_shows_each_change_with_its_neighbours(old: str, new: str, shown_old: str,
                                                         shown_new: str) -> None:
    from tagsmith.cli.dataset_cmd import _highlighted_pair

    a, b = _highlighted_pair(old, new)
    assert (a.plain, b.plain) == (shown_old, shown_new)


def test_a_map_that_changes_nothing_says_why(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from tagsmith.cli import EXIT_OK, run

    folder = tmp_path / "1_a"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(b"")
        (folder / f"{i}.txt").write_text("1girl, smile" if i else "solo", encoding="utf-8")
    assert run(["retag", str(tmp_path), "--map", "1girl=1girl", "--dry-run"]) == EXIT_OK
    assert ("2 of 3 captions have '1girl' written as '1girl' already; nothing to change."
            in capsys.readouterr().out)
    assert run(["retag", str(tmp_path), "--map", "2girls=1girl", "--dry-run"]) == EXIT_OK
    assert "No caption of 3 mentions '2girls'; nothing to change." in capsys.readouterr().out
