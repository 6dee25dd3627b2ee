"""Attacks a downloaded model file can carry: each test builds one (tiny, under tmp_path) and
checks for one sentence instead of a traceback, a hang, huge memory or wrong numbers."""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from tagsmith.cli import EXIT_FAILURE, run
from tagsmith.errors import ModelError, UnsupportedModelError
from tagsmith.model.sources import resolve_source

A1111 = "cond_stage_model.transformer.text_model."


def _raw_safetensors(path: Path, header_json: bytes, data: bytes = b"") -> Path:
    path.write_bytes(struct.pack("<Q", len(header_json)) + header_json + data)
    return path


@pytest.fixture
def hf_folder(tiny_models, tmp_path) -> Path:  # noqa: ANN001
    from tiny_models import save_hf_folder

    return save_hf_folder(tiny_models.weights, tmp_path / "clip")


def _set_config(folder: Path, **changes) -> None:  # noqa: ANN003
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))


# -- 8. absurd layer numbers ---------------------------------------------------------------------


def test_a_header_naming_layer_99999999_costs_nothing_and_gets_a_sentence(tiny_models, tmp_path):
    from safetensors.torch import save_file
    from tiny_models import single_file_tensors

    tensors = single_file_tensors(tiny_models.weights)
    tensors[A1111 + "encoder.layers.99999999.mlp.fc1.weight"] = tensors[
        A1111 + "encoder.layers.0.mlp.fc1.weight"
    ].clone()
    path = tmp_path / "evil.safetensors"
    save_file(tensors, str(path))
    # Before, this listed 16 x 10^8 required tensor names (6.4 GB); now it is one sentence.
    with pytest.raises(UnsupportedModelError, match="tensors for layer 99,999,999 but none for"):
        resolve_source(str(path))


# -- 9. config values and in-place rewrites -----------------------------------------------------


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"layer_norm_eps": float("nan")}, "layer_norm_eps nan"),
        ({"layer_norm_eps": "abc"}, "layer_norm_eps as 'abc', which is not a number"),
        ({"layer_norm_eps": -1}, "layer_norm_eps -1.0"),
        ({"num_attention_heads": "four"}, "num_attention_heads as 'four'"),
        ({"num_attention_heads": -4}, "declares -4 attention heads"),
        ({"num_attention_heads": True}, "num_attention_heads as True"),
        ({"hidden_act": 5}, "hidden_act as 5"),
        ({"architectures": 5}, "architectures as 5, not a list"),
        ({"model_type": "clip", "text_config": [1]}, "text_config as [1], not an object"),
    ],
)
def test_bad_config_values_are_refused_with_one_sentence(hf_folder, changes, message):
    _set_config(hf_folder, **changes)
    with pytest.raises(UnsupportedModelError, match=message.replace("[", r"\[").replace(
            "]", r"\]")):
        resolve_source(str(hf_folder))


def test_a_shard_index_with_a_list_weight_map_gets_a_sentence(hf_folder):
    (hf_folder / "model.safetensors").rename(hf_folder / "shard-1.safetensors")
    (hf_folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": [1, 2]}))
    with pytest.raises(UnsupportedModelError, match="expected a weight_map object"):
        resolve_source(str(hf_folder))


def test_a_model_rewritten_in_place_with_the_same_stat_is_not_served_old_vectors(
    tiny_models, tmp_path
):
    from safetensors.torch import save_file
    from tiny_models import single_file_tensors, tiny_weights

    from tagsmith.model.embedding import EncoderSettings, open_embedder

    path = tmp_path / "model.safetensors"
    save_file(single_file_tensors(tiny_models.weights), str(path))
    first = open_embedder(EncoderSettings(model=str(path)))
    old = first.embed(["mayonnaise bottle"])
    first.close()
    st = os.stat(path)
    # Same size, same inode, mtime set back: only the tensor bytes differ.
    other = single_file_tensors(tiny_weights(seed=7))
    with path.open("r+b") as fh:
        fh.seek(0)
        tmp = tmp_path / "other.safetensors"
        save_file(other, str(tmp))
        data = tmp.read_bytes()
        assert len(data) == st.st_size
        fh.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_ino, os.stat(path).st_mtime_ns) == (
        st.st_size, st.st_ino, st.st_mtime_ns)
    second = open_embedder(EncoderSettings(model=str(path)))
    new = second.embed(["mayonnaise bottle"])
    second.close()
    reference = open_embedder(EncoderSettings(model=str(tmp), use_cache=False))
    expected = reference.embed(["mayonnaise bottle"])
    reference.close()
    np.testing.assert_allclose(new, expected, atol=1e-6)
    assert np.abs(new - old).max() > 1e-3


def test_the_memo_sample_digest_sees_bytes_that_stat_cannot(tmp_path):
    from tagsmith.model.fingerprint import sample_digest

    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    data = bytearray(os.urandom(3 << 20))
    a.write_bytes(bytes(data))
    data[(3 << 20) // 256 * 86 + 5] ^= 0xFF  # inside a sampled block, not the head or tail
    b.write_bytes(bytes(data))
    assert sample_digest(a) != sample_digest(b)
    assert sample_digest(a) == sample_digest(a)


# -- 10. tracebacks from headers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"[" * 100_000 + b"]" * 100_000,  # not an object, and 100k deep
        b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        json.dumps({A1111 + "embeddings.position_ids": {
            "dtype": "I64", "shape": [2**62, 4], "data_offsets": [0, 0]}}).encode(),
        json.dumps({A1111 + "embeddings.position_ids": {
            "dtype": "I64", "shape": [-2, -3], "data_offsets": [0, 48]}}).encode(),
        json.dumps({"x": {"dtype": "F32", "shape": [2**64], "data_offsets": [0, 4]}}).encode(),
        json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 2**64]}}).encode(),
    ],
)
def test_hostile_safetensors_headers_get_one_sentence(tmp_path, header):
    path = _raw_safetensors(tmp_path / "evil.safetensors", header, b"\0" * 64)
    with pytest.raises(UnsupportedModelError, match="damaged"):
        resolve_source(str(path))


# -- 14. saying what a file is -------------------------------------------------------------------


def test_a_symlink_loop_as_model_is_called_a_loop(tmp_path, capsys):
    loop = tmp_path / "org" / "model"
    loop.parent.mkdir()
    loop.symlink_to(loop)
    assert run(["embed", "x", "--model", str(loop)]) == EXIT_FAILURE
    assert "symbolic link that loops" in capsys.readouterr().err
    with pytest.raises(ModelError, match="symbolic link that loops"):
        resolve_source(str(loop))
    relative = tmp_path / "loop.safetensors"
    relative.symlink_to("loop.safetensors")
    with pytest.raises(ModelError, match="loops"):
        resolve_source(str(relative))


@pytest.mark.parametrize("protocol", [0, 1, 2, 4])
def test_a_pickle_named_safetensors_is_called_a_pickle(tmp_path, protocol):
    path = tmp_path / "model.safetensors"
    path.write_bytes(pickle.dumps({"state_dict": {"a": [1, 2]}}, protocol=protocol))
    source = resolve_source(str(path))
    assert source.format == "pickle" and "pickle" in source.description


def test_explore_exits_non_zero_when_the_model_is_refused(tiny_models, tmp_path):
    from tiny_models import save_malicious_ckpt

    from tagsmith.model.embedding import EncoderSettings, open_model
    from tagsmith.tui.app import ExploreApp, SuggestSource

    marker = tmp_path / "code-ran"
    evil = save_malicious_ckpt(tiny_models.weights, tmp_path / "evil.ckpt", marker)

    def loader():  # noqa: ANN202
        return open_model(EncoderSettings(model=str(evil)), explicit=True)

    async def go() -> None:
        app = ExploreApp(SuggestSource("mayonnaise bottle"), model_loader=loader)
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            await asyncio.wait_for(screen.shown.wait(), timeout=60)
            assert "unpickling" in (screen.error or "")
            await pilot.press("q")
        assert app.return_code == 1 and app.failure

    asyncio.run(go())
    assert not marker.exists()


def test_a_real_checkpoint_named_safetensors_loads_as_its_ckpt_does(tiny_models, tmp_path):
    """torch.load picks its safetensors reader by the name: a .ckpt renamed .safetensors (the
    README says such files are read) was refused as damaged. And correct int64 position_ids
    are not "repaired"."""
    import shutil

    from tiny_models import save_ckpt

    from tagsmith.model.embedding import EncoderSettings, open_embedder

    ckpt = save_ckpt(tiny_models.weights, tmp_path / "model.ckpt")
    renamed = tmp_path / "model.safetensors"
    shutil.copy(ckpt, renamed)
    vectors = []
    for path in (ckpt, renamed):
        embedder = open_embedder(EncoderSettings(model=str(path), device="cpu", use_cache=False))
        vectors.append(embedder.embed(["red hair"]))
        assert not [n for n in embedder.notes if "position_ids" in n]
    np.testing.assert_array_equal(vectors[0], vectors[1])


def test_nan_weights_are_refused_not_scored(tiny_models, tmp_path, capsys):
    """A broken merge with one NaN weight made every similarity 'nan' and exit 0."""
    from tiny_models import save_single_file

    weights = {k: v.clone() for k, v in tiny_models.weights.items()}
    fc1 = next(k for k in weights if k.endswith("layers.1.mlp.fc1.weight"))
    weights[fc1][0, 0] = float("nan")
    path = save_single_file(weights, tmp_path / "broken.safetensors")
    cache = tmp_path / "cache"
    for _ in range(2):  # and nothing was cached on the way
        assert run(["suggest", "mayonnaise bottle", "--model", str(path), "--cache-dir",
                    str(cache)]) == EXIT_FAILURE
        err = capsys.readouterr().err
        assert "NaN or infinite" in err and "Traceback" not in err
