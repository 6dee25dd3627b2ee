"""Attacks a shared dataset or tag list can carry: each test performs one and checks that
nothing outside the dataset is written, nothing hangs, and the user gets one sentence."""

from __future__ import annotations

import errno
import gzip
import json
import os
import stat
from pathlib import Path

import pytest

from tagsmith.captions import backups as bk
from tagsmith.captions import retag as rt
from tagsmith.captions.files import MAX_CAPTION_TAGS, load_dataset
from tagsmith.captions.retag import (
    apply_retag,
    list_backups,
    parse_maps,
    plan_retag,
    undo_last_retag,
)
from tagsmith.cli import EXIT_FAILURE, EXIT_OK, run
from tagsmith.errors import DatasetError, InputError, TagsmithError
from tagsmith.fileio import gunzip_bounded, read_tag_lines

MAYO = ["mayonnaise bottle=mayonnaise-container"]


def write(folder: Path, stem: str, data: bytes, *, ext: str = ".txt") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.png").write_bytes(b"\x89PNG")
    path = folder / f"{stem}{ext}"
    path.write_bytes(data)
    return path


def _enospc(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
    raise OSError(errno.ENOSPC, "No space left on device")


# -- 1. undo never writes outside DIR -----------------------------------------------------------


def test_a_tampered_manifest_pointing_outside_dir_is_refused(tmp_path):
    root = tmp_path / "ds"
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_bytes(b"precious")
    write(root, "a", b"mayonnaise bottle")
    result = apply_retag(plan_retag(root, parse_maps(MAYO)))
    # The attacker rewrites the manifest of the user's real run and plants the copy.
    manifest_path = result.backup / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][0].update(path="../outside/victim.txt", mode=0o4755)
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DatasetError, match="changed after tagsmith wrote it"):
        undo_last_retag(root)
    # Even with the user's own record forged to match, the path itself is refused.
    (record,) = bk.runs_dir().glob("*.json")
    forged = json.loads(record.read_text())
    forged["manifest_sha256"] = bk.sha256(manifest_path.read_bytes())
    record.write_text(json.dumps(forged))
    with pytest.raises(DatasetError, match="leaves the dataset"):
        undo_last_retag(root)
    assert victim.read_bytes() == b"precious"
    assert stat.S_IMODE(victim.stat().st_mode) & 0o7000 == 0


@pytest.mark.parametrize(
    "rel, why",
    [
        ("../outside/victim.txt", "leaves the dataset"),
        ("/etc/passwd", "is absolute"),
        ("sub/../../x.txt", "leaves the dataset"),
        ("link/a.txt", "symbolic link"),
        ("a.txt/", "leaves the dataset"),
        (5, "not a file name"),
    ],
)
def test_every_manifest_path_must_stay_inside_dir(tmp_path, rel, why):
    root = tmp_path / "ds"
    root.mkdir()
    (tmp_path / "outside").mkdir()
    (root / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(DatasetError, match=why):
        bk.safe_target(root, rel)


def test_undo_never_takes_a_mode_from_the_manifest(tmp_path):
    root = tmp_path / "ds"
    f = write(root, "a", b"mayonnaise bottle")
    f.chmod(0o4755)  # setuid on a caption: never copied into the rewrite or the restore
    apply_retag(plan_retag(root, parse_maps(MAYO)))
    assert stat.S_IMODE(f.stat().st_mode) == 0o755
    f.chmod(0o600)
    undo_last_retag(root)
    assert f.read_bytes() == b"mayonnaise bottle"
    assert stat.S_IMODE(f.stat().st_mode) == 0o600  # the file's own mode, not the manifest's


# -- 2. undo restores this user's run, not a planted one -----------------------------------------


def test_a_planted_future_backup_is_not_restored_and_the_users_run_is(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_bytes(b"mine")
    root = tmp_path / "ds"
    f = write(root, "a", b"mayonnaise bottle, red hair")
    planted = root / ".tagsmith-backup" / "29991231T235959.999999Z"
    (planted / "files" / ".cfg").mkdir(parents=True)
    (planted / "files" / ".cfg" / ".bashrc").write_bytes(b"evil")
    (root / ".cfg").symlink_to(home)
    evil = b"evil"
    import hashlib

    digest = hashlib.sha256(evil).hexdigest()
    (planted / "manifest.json").write_text(json.dumps({"version": 1, "files": [
        {"path": ".cfg/.bashrc", "old_sha256": digest, "new_sha256":
         hashlib.sha256(b"mine").hexdigest(), "mode": 0o4755}]}))
    assert list_backups(root) == []  # not made by this machine's run
    with pytest.raises(DatasetError, match="not made by tagsmith on this machine"):
        undo_last_retag(root)
    apply_retag(plan_retag(root, parse_maps(MAYO)))
    assert f.read_bytes() == b"mayonnaise-container, red hair"
    assert run(["retag", "--undo", str(root)]) == EXIT_OK
    assert f.read_bytes() == b"mayonnaise bottle, red hair"  # the user's own run was undone
    assert (home / ".bashrc").read_bytes() == b"mine"
    assert not (planted / "undone.json").exists()


def test_a_backup_copied_from_another_machine_is_not_restored(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    f = write(root, "a", b"mayonnaise bottle")
    apply_retag(plan_retag(root, parse_maps(MAYO)))
    # Another machine (another cache, so another record) opens the same dataset.
    monkeypatch.setenv("TAGSMITH_CACHE_DIR", str(tmp_path / "other-cache"))
    with pytest.raises(DatasetError, match="not made by tagsmith on this machine"):
        undo_last_retag(root)
    assert f.read_bytes() == b"mayonnaise-container"


# -- 3. a .tagsmith-backup symlink out of DIR ----------------------------------------------------


def test_a_backup_folder_that_is_a_symlink_is_refused(tmp_path):
    root = tmp_path / "ds"
    f = write(root, "a", b"mayonnaise bottle")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / ".tagsmith-backup").symlink_to(elsewhere)
    with pytest.raises(DatasetError, match="is a symbolic link"):
        apply_retag(plan_retag(root, parse_maps(MAYO)))
    assert list(elsewhere.iterdir()) == []
    assert f.read_bytes() == b"mayonnaise bottle"
    with pytest.raises(DatasetError, match="is a symbolic link"):
        undo_last_retag(root)


# -- 4. odd names, read-only captions, full disks --------------------------------------------------


def test_non_utf8_and_255_byte_names_are_retagged_and_undone(tmp_path, capsys):
    root = tmp_path / "ds"
    root.mkdir()
    odd = os.fsdecode(b"caf\xe9")  # Latin-1 bytes: not valid UTF-8
    long = "x" * 251  # "x...x.txt" is 255 bytes, the longest name most filesystems allow
    for stem in (odd, long):
        write(root, stem, b"mayonnaise bottle")
    assert run(["retag", str(root), "--map", MAYO[0], "--dry-run"]) == EXIT_OK
    assert "caf\\xe9.txt" in capsys.readouterr().out  # shown escaped, no traceback
    assert run(["retag", str(root), "--map", MAYO[0], "--dry-run", "--json"]) == EXIT_OK
    plan = json.loads(capsys.readouterr().out)  # valid JSON: the odd byte as a \udcXX escape
    assert sorted(f["file"] for f in plan["files"]) == sorted([f"{odd}.txt", f"{long}.txt"])
    assert run(["retag", str(root), "--map", MAYO[0], "--yes"]) == EXIT_OK
    assert (root / f"{odd}.txt").read_bytes() == b"mayonnaise-container"
    assert (root / f"{long}.txt").read_bytes() == b"mayonnaise-container"
    assert run(["retag", "--undo", str(root)]) == EXIT_OK
    assert (root / f"{odd}.txt").read_bytes() == b"mayonnaise bottle"
    assert (root / f"{long}.txt").read_bytes() == b"mayonnaise bottle"
    assert not [p for p in root.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX permissions")
def test_read_only_captions_are_skipped_with_a_reason(tmp_path):
    root = tmp_path / "ds"
    ro = write(root, "ro", b"mayonnaise bottle")
    rw = write(root, "rw", b"mayonnaise bottle")
    ro.chmod(0o444)
    plan = plan_retag(root, parse_maps(MAYO))
    assert plan.skipped == [("ro.txt", "it is read-only")]
    apply_retag(plan)
    assert ro.read_bytes() == b"mayonnaise bottle" and rw.read_bytes() == b"mayonnaise-container"


def test_a_backup_failing_on_a_full_disk_leaves_no_partial_backup(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    files = [write(root, f"f{i}", b"mayonnaise bottle") for i in range(4)]
    real = rt._write_new
    calls = []

    def filling(path, data):  # noqa: ANN001, ANN202
        calls.append(path)
        if len(calls) == 3:
            _enospc()
        return real(path, data)

    monkeypatch.setattr(rt, "_write_new", filling)
    with pytest.raises(DatasetError, match="nothing was changed"):
        apply_retag(plan_retag(root, parse_maps(MAYO)))
    assert not (root / ".tagsmith-backup").exists()  # true on disk too: nothing left behind
    assert all(f.read_bytes() == b"mayonnaise bottle" for f in files)
    monkeypatch.setattr(rt, "_write_new", real)
    apply_retag(plan_retag(root, parse_maps(MAYO)))  # the retry is not blocked
    assert all(f.read_bytes() == b"mayonnaise-container" for f in files)


def test_a_run_that_cannot_be_recorded_changes_nothing(tmp_path, monkeypatch):
    root = tmp_path / "ds"
    f = write(root, "a", b"mayonnaise bottle")
    blocker = tmp_path / "cache-is-a-file"
    blocker.write_text("x")
    monkeypatch.setenv("TAGSMITH_CACHE_DIR", str(blocker))
    with pytest.raises(DatasetError, match="Cannot record the run .* nothing was changed"):
        apply_retag(plan_retag(root, parse_maps(MAYO)))
    assert f.read_bytes() == b"mayonnaise bottle"
    assert not (root / ".tagsmith-backup").exists()


def test_undo_on_a_full_disk_says_one_sentence(tmp_path, monkeypatch, capsys):
    root = tmp_path / "ds"
    f = write(root, "a", b"mayonnaise bottle")
    apply_retag(plan_retag(root, parse_maps(MAYO)))
    real = bk.tempfile.mkstemp
    monkeypatch.setattr(bk.tempfile, "mkstemp", _enospc)
    assert run(["retag", "--undo", str(root)]) == EXIT_FAILURE
    err = " ".join(capsys.readouterr().err.split())
    assert "No space left on device" in err and "run `tagsmith retag --undo" in err
    assert "Traceback" not in err
    monkeypatch.setattr(bk.tempfile, "mkstemp", real)
    assert run(["retag", "--undo", str(root)]) == EXIT_OK
    assert f.read_bytes() == b"mayonnaise bottle"


# -- 5. FIFOs and /dev/zero ------------------------------------------------------------------------


needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


@needs_fifo
def test_a_caption_that_is_a_fifo_is_refused_not_waited_on(tmp_path, capsys):
    root = tmp_path / "ds"
    write(root, "ok", b"1girl, solo")
    (root / "pipe.png").write_bytes(b"\x89PNG")
    os.mkfifo(root / "pipe.txt")
    with pytest.raises(DatasetError, match="named pipe"):
        load_dataset(root)
    assert run(["retag", str(root), "--map", MAYO[0], "--dry-run"]) == EXIT_FAILURE
    assert "pipe.txt is a named pipe" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_caption_linked_to_dev_zero_is_refused(tmp_path):
    root = tmp_path / "ds"
    write(root, "ok", b"1girl")
    (root / "zero.png").write_bytes(b"\x89PNG")
    (root / "zero.txt").symlink_to("/dev/zero")
    with pytest.raises(DatasetError, match="is a device"):
        load_dataset(root)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_score_and_tag_lists_refuse_dev_zero_and_fifos(tmp_path, capsys):
    assert run(["score", "/dev/zero", "-o", str(tmp_path / "s.csv")]) == EXIT_FAILURE
    assert "is a device, not a regular file" in capsys.readouterr().err
    with pytest.raises(InputError, match="is a device"):
        read_tag_lines("/dev/zero")
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "vocab.csv"
        os.mkfifo(fifo)
        assert run(["score", str(fifo), "-o", str(tmp_path / "s.csv")]) == EXIT_FAILURE
        assert "named pipe" in capsys.readouterr().err


# -- 6. gzip bombs ---------------------------------------------------------------------------------


def test_a_gzip_bomb_vocabulary_is_stopped_with_a_sentence(tmp_path, monkeypatch):
    from tagsmith.text import vocab

    bomb = tmp_path / "tags.csv.gz"
    bomb.write_bytes(gzip.compress(b"a" * (8 << 20)))  # 8 MiB of one byte: ~8 KiB compressed
    monkeypatch.setattr(vocab, "MAX_LIST_BYTES", 1 << 20)
    with pytest.raises(InputError, match="expands to more than 1.0 MiB when decompressed"):
        vocab.read_vocabulary(bomb)


def test_gunzip_bounded_matches_gzip_below_the_limit():
    data = b"".join(b"tag_%d,%d\n" % (i, i) for i in range(5000))
    two_members = gzip.compress(data[:1000]) + gzip.compress(data[1000:])
    assert gunzip_bounded(two_members, limit=len(data), label="x") == gzip.decompress(two_members)
    with pytest.raises(InputError):
        gunzip_bounded(two_members, limit=len(data) - 1, label="x")


# -- 7. captions that would cost hours -------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"a," * 1_400_000, "more than tagsmith reads as one caption"),  # 2.8 MB, 1.4M tags
        (b"t" * (20 << 20), "more than tagsmith reads as one caption"),  # one 20 MB tag
        (b"(" * 10_000_000 + b"x", "more than tagsmith reads as one caption"),
        (b"a," * (MAX_CAPTION_TAGS + 5), "tags, more than tagsmith reads in one caption"),
        (b"(" * 5000 + b"x" + b")" * 5000, "characters, more than tagsmith reads as one tag"),
    ],
    ids=["1.4M tags", "a 20 MB tag", "10M brackets", "too many tags", "a 10k-character tag"],
)
def test_an_absurd_caption_is_refused_naming_the_file(tmp_path, content, message, capsys):
    root = tmp_path / "ds"
    write(root, "ok", b"1girl")
    write(root, "huge", content)
    with pytest.raises(DatasetError, match=message) as exc:
        load_dataset(root)
    assert "huge.txt" in str(exc.value)
    assert run(["retag", str(root), "--map", MAYO[0], "--dry-run"]) == EXIT_FAILURE
    assert "huge.txt" in capsys.readouterr().err


def test_a_caption_at_the_tag_cap_still_costs_little(tmp_path, capsys):
    root = tmp_path / "ds"
    tags = ", ".join(f"tag{i}" for i in range(MAX_CAPTION_TAGS))
    write(root, "many", tags.encode())
    write(root, "few", b"tag1, tag2")
    assert run(["dataset", str(root), "--json"]) == EXIT_OK
    report = json.loads(capsys.readouterr().out)
    counts = {t["tag"]: t["captions"] for t in report["tags"]}
    assert len(counts) == MAX_CAPTION_TAGS and counts["tag1"] == 2 and counts["tag7"] == 1


def test_folders_nested_1200_deep_get_a_sentence(tmp_path):
    root = tmp_path / "ds"
    write(root, "a", b"1girl")
    chain = [root / "d"]
    for _ in range(1199):  # ~2,400 characters: within PATH_MAX (os.makedirs itself recurses)
        chain.append(chain[-1] / "d")
    for folder in chain:
        folder.mkdir()
    with pytest.raises(TagsmithError, match="nested more than 64 folders deep"):
        load_dataset(root)
    for folder in reversed(chain):  # shutil.rmtree recurses too
        folder.rmdir()


# -- 14. UTF-16 without a byte-order mark --------------------------------------------------------


@pytest.mark.parametrize("codec", ["utf-16-le", "utf-16-be"])
def test_utf16_without_bom_is_called_utf16_or_read(tmp_path, codec):
    from tagsmith.text.vocab import read_vocabulary

    path = tmp_path / "tags.csv"
    path.write_bytes("long_hair,0,120\nmayonnaise_bottle,0,144\n".encode(codec))
    assert read_vocabulary(path).texts == ["long hair", "mayonnaise bottle"]
    lines = tmp_path / "tags.txt"
    lines.write_bytes("long hair\ncafé\n".encode(codec))
    assert read_tag_lines(lines) == [(1, "long hair"), (2, "café")]


@needs_fifo
def test_score_files_that_are_fifos_are_refused_by_read_and_explore(tmp_path):
    from tagsmith.analysis.score_io import read_score_file
    from tagsmith.tui.loaders import check_score_path

    fifo = tmp_path / "scores.csv"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="named pipe"):
        read_score_file(fifo)
    with pytest.raises(InputError, match="named pipe"):
        check_score_path(fifo)


def test_a_symlinked_folder_is_not_entered(tmp_path):
    outside = tmp_path / "outside"
    write(outside, "victim", b"mayonnaise bottle")
    root = tmp_path / "ds"
    write(root, "a", b"mayonnaise bottle")
    (root / "10_link").symlink_to(outside)
    (root / "fake.txt").symlink_to(outside)  # a folder link named like a caption
    (root / "fake.png").write_bytes(b"\x89PNG")
    plan = plan_retag(root, parse_maps(MAYO))
    assert [c.rel for c in plan.changes] == ["a.txt"]
    apply_retag(plan)
    assert (outside / "victim.txt").read_bytes() == b"mayonnaise bottle"
