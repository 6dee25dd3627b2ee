"""The embedding cache: keys, damaged rows, kill -9 mid-write, concurrent writers, memo."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest

from tagsmith.errors import CacheError
from tagsmith.model.cache import CacheVariant, EmbeddingCache, SourceMemo
from tagsmith.paths import default_cache_dir, resolve_cache_dir

V1 = CacheVariant(1, "tag", "", "fp32")
DIM = 16


def vec(text: str, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(zlib.crc32(text.encode())).standard_normal(dim).astype(np.float32)


# Child processes use the same recipe for vectors, so the parent can check every row.
CHILD_PRELUDE = textwrap.dedent(
    """
    import sys, zlib
    from pathlib import Path
    import numpy as np
    from tagsmith.model.cache import CacheVariant, EmbeddingCache

    def vec(text, dim=16):
        rng = np.random.default_rng(zlib.crc32(text.encode()))
        return rng.standard_normal(dim).astype(np.float32)

    V1 = CacheVariant(1, "tag", "", "fp32")
    cache = EmbeddingCache(Path(sys.argv[1]), "fp0", 16)
    """
)


def test_round_trip_and_keys(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path, "fp0", DIM) as cache:
        texts = ["long hair", "Long hair", "long hair ", "mayonnaise bottle", "ü"]
        cache.put_many(V1, [(t, vec(t)) for t in texts])
        got = cache.get_many(V1, texts + ["missing"])
        assert set(got) == set(texts)  # exact text: case and spaces matter
        for t in texts:
            assert np.array_equal(got[t], vec(t))
        for other in (
            CacheVariant(2, "tag", "", "fp32"),
            CacheVariant(1, "eos", "", "fp32"),
            CacheVariant(1, "tag", "1girl, {}", "fp32"),
            CacheVariant(1, "tag", "", "fp16"),
        ):
            assert cache.get_many(other, texts) == {}
        assert cache.count() == len(texts)
    assert (tmp_path / "embeddings" / "fp0.sqlite").is_file()


def test_damaged_rows_are_not_returned(tmp_path: Path) -> None:
    with EmbeddingCache(tmp_path, "fp0", DIM) as cache:
        cache.put_many(V1, [(t, vec(t)) for t in ("a", "b", "c")])
    db = sqlite3.connect(tmp_path / "embeddings" / "fp0.sqlite")
    blob = bytearray(db.execute("SELECT vector FROM vectors WHERE text = 'b'").fetchone()[0])
    blob[5] ^= 0x40
    db.execute("UPDATE vectors SET vector = ? WHERE text = 'b'", (bytes(blob),))
    db.execute("UPDATE vectors SET vector = x'00' WHERE text = 'c'")  # wrong length
    db.commit()
    db.close()
    with EmbeddingCache(tmp_path, "fp0", DIM) as cache:
        got = cache.get_many(V1, ["a", "b", "c"])
        assert set(got) == {"a"}
        assert any("2 damaged cache entries" in n for n in cache.notes)
        cache.put_many(V1, [("b", vec("b")), ("c", vec("c"))])  # recomputed rows replace them
        assert set(cache.get_many(V1, ["a", "b", "c"])) == {"a", "b", "c"}


def test_a_file_that_is_no_database_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "embeddings" / "fp0.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 20)
    with EmbeddingCache(tmp_path, "fp0", DIM) as cache:
        assert cache.get_many(V1, ["a"]) == {}
        cache.put_many(V1, [("a", vec("a"))])
        assert set(cache.get_many(V1, ["a"])) == {"a"}
        assert "moved to fp0.sqlite.corrupt-" in cache.notes[0]
    assert list(path.parent.glob("fp0.sqlite.corrupt-*"))


def test_unusable_cache_dir_is_one_sentence(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(CacheError, match="--no-cache"):
        EmbeddingCache(blocker / "sub", "fp0", DIM)


def test_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TAGSMITH_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert resolve_cache_dir(tmp_path / "cli") == tmp_path / "cli"
    assert resolve_cache_dir(None) == tmp_path / "env"
    monkeypatch.delenv("TAGSMITH_CACHE_DIR")
    import platformdirs

    assert default_cache_dir() == Path(platformdirs.user_cache_dir("tagsmith", appauthor=False))


def test_killed_writer_leaves_a_consistent_cache(tmp_path: Path) -> None:
    code = CHILD_PRELUDE + textwrap.dedent(
        """
        i = 0
        while True:
            cache.put_many(V1, [(f"tag {i}-{j}", vec(f"tag {i}-{j}")) for j in range(200)])
            if i == 2:
                print("ready", flush=True)
            i += 1
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        import time

        time.sleep(0.2)  # let it get well into further transactions
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    with EmbeddingCache(tmp_path, "fp0", DIM) as cache:
        n = cache.count()
        assert n >= 600 and n % 200 == 0  # whole transactions only
        texts = [f"tag {i}-{j}" for i in range(n // 200) for j in range(200)]
        got = cache.get_many(V1, texts)
        assert len(got) == n and not cache.notes
        assert all(np.array_equal(got[t], vec(t)) for t in texts[::37])
        cache.put_many(V1, [("after", vec("after"))])
        assert "after" in cache.get_many(V1, ["after"])


def test_two_writers_at_once(tmp_path: Path) -> None:
    code = CHILD_PRELUDE + textwrap.dedent(
        """
        start = int(sys.argv[2])
        for i in range(start, start + 60):
            cache.put_many(V1, [(f"t{i}-{j}", vec(f"t{i}-{j}")) for j in range(20)])
            cache.get_many(V1, [f"t{i}-0", f"t{i - 5}-1"])
        print("done", cache.notes, flush=True)
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(start)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for start in (0, 30)  # overlapping keys 30..59
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert all(o[0].strip() == "done []" for o in outs), outs
    with EmbeddingCache(tmp_path, "fp0", DIM) as cache:
        assert cache.count() == 90 * 20
        texts = [f"t{i}-{j}" for i in range(90) for j in range(20)]
        got = cache.get_many(V1, texts)
        assert len(got) == len(texts) and not cache.notes
        assert all(np.array_equal(got[t], vec(t)) for t in texts)


def test_source_memo(tmp_path: Path) -> None:
    memo = SourceMemo(tmp_path)
    ident = {"files": [["/m.safetensors", 10, 123, 4]], "v": 1}
    assert memo.get(ident) is None
    memo.put(ident, {"fingerprint": "abc"})
    assert memo.get(ident) == {"fingerprint": "abc"}
    assert memo.get({**ident, "files": [["/m.safetensors", 10, 124, 4]]}) is None


# -- through the embedder (tiny model) ------------------------------------------------------


@pytest.fixture(autouse=True)
def _one_torch_thread():  # noqa: ANN202
    if "torch" not in sys.modules:
        yield
        return
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TAGS = ["mayonnaise bottle", "wine bottle", "bottle", "1girl", "long hair", "cross-arm"]


def test_hits_skip_the_model_and_damage_is_recomputed(tiny_models, tmp_path: Path) -> None:  # noqa: ANN001
    from tagsmith.model.embedding import EncoderSettings, open_embedder

    settings = EncoderSettings(model=str(tiny_models.single_file()), cache_dir=tmp_path)
    with open_embedder(EncoderSettings(model=settings.model, use_cache=False)) as e:
        truth = e.embed(TAGS)
    with open_embedder(settings) as e:
        assert np.array_equal(e.embed(TAGS), truth)
        assert e.loaded
        fp = e.fingerprint
    with open_embedder(settings) as e:
        assert np.array_equal(e.embed(TAGS[::-1]), truth[::-1])
        assert not e.loaded  # every vector came from the cache
    with open_embedder(EncoderSettings(model=settings.model, cache_dir=tmp_path, clip_skip=2)) as e:
        assert np.abs(e.embed(TAGS) - truth).max() > 1e-3  # clip skip is part of the key
    db = sqlite3.connect(tmp_path / "embeddings" / f"{fp}.sqlite")
    db.execute("UPDATE vectors SET vector = zeroblob(512) WHERE text = 'bottle'")
    db.commit()
    db.close()
    with open_embedder(settings) as e:
        # recomputed alone rather than in a batch: the same up to summation order
        assert np.allclose(e.embed(TAGS), truth, atol=1e-5, rtol=0)
        assert e.loaded and any("damaged cache entry" in n for n in e.notes)


def test_embedder_killed_mid_run_then_recomputes(tiny_models, tmp_path: Path) -> None:  # noqa: ANN001
    from tagsmith.model.embedding import EncoderSettings, open_embedder

    tags = [f"tag number {i}" for i in range(300)]
    model = str(tiny_models.single_file())
    code = textwrap.dedent(
        f"""
        import sys, time
        import torch
        torch.set_num_threads(1)
        from pathlib import Path
        from tagsmith.model.encoder import ClipTextEncoder
        from tagsmith.model.embedding import EncoderSettings, open_embedder
        ClipTextEncoder.default_token_budget = lambda self: 12  # many small batches
        tags = [f"tag number {{i}}" for i in range(300)]
        e = open_embedder(EncoderSettings(model={model!r}, cache_dir=Path(sys.argv[1])))
        def progress(done, total):
            if done >= 30:
                print("writing", flush=True)
                time.sleep(0.01)
        e.embed(tags, progress=progress)
        print("finished", flush=True)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "writing"
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL
    with open_embedder(EncoderSettings(model=model, use_cache=False)) as e:
        truth = e.embed(tags)
    with open_embedder(EncoderSettings(model=model, cache_dir=tmp_path)) as e:
        cached = e._open_cache().count()
        assert 0 < cached < len(tags)  # it died part-way
        assert np.allclose(e.embed(tags), truth, atol=1e-5, rtol=0)
        assert e.loaded and not e.notes


def test_fingerprint_is_memoised_and_follows_the_file(
    tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    import shutil

    from tagsmith.model import embedding
    from tagsmith.model.embedding import EncoderSettings, open_embedder

    model = tmp_path / "m.safetensors"
    shutil.copy(tiny_models.single_file(), model)
    settings = EncoderSettings(model=str(model), cache_dir=tmp_path / "c")
    first = open_embedder(settings).fingerprint

    def no_hashing(source):  # noqa: ANN001, ANN202
        raise AssertionError("the fingerprint should come from the memo")

    monkeypatch.setattr(embedding, "safetensors_fingerprint", no_hashing)
    assert open_embedder(settings).fingerprint == first
    monkeypatch.undo()
    shutil.copy(tiny_models.other_single_file(), model)  # same path, new weights
    assert open_embedder(settings).fingerprint != first
    assert open_embedder(EncoderSettings(model=str(model), use_cache=False)).fingerprint != first
    assert not (tmp_path / "nocache").exists()
