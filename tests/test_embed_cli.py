"""`tagsmith embed`: output formats, input order, exit codes and one-sentence errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tagsmith.cli import run


@pytest.fixture(autouse=True)
def _one_torch_thread():  # noqa: ANN202
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def library_vectors(model: Path, texts: list[str], **kw) -> np.ndarray:  # noqa: ANN003
    from tagsmith.model.embedding import EncoderSettings, open_embedder

    with open_embedder(EncoderSettings(model=str(model), use_cache=False, **kw)) as e:
        return e.embed(texts)


def test_json_rows_in_input_order(tiny_model: Path, capsys: pytest.CaptureFixture) -> None:
    tags = ["mayonnaise_bottle", "1girl", "mayonnaise bottle", "1girl", "cross-arm"]
    assert run(["embed", *tags, "--model", str(tiny_model), "--json"]) == 0
    out, err = capsys.readouterr()
    rows = json.loads(out)
    assert [r["tag"] for r in rows] == tags
    assert rows[0]["text"] == "mayonnaise bottle"
    got = np.array([r["vector"] for r in rows], dtype=np.float32)
    want = library_vectors(tiny_model, ["mayonnaise bottle", "1girl", "mayonnaise bottle",
                                        "1girl", "cross-arm"])
    assert np.abs(got - want).max() <= 1e-6  # %.9g keeps float32 exactly; batching may not
    assert np.array_equal(got[0], got[2])
    fingerprint = err.split()[1]
    assert err.startswith("model ") and len(fingerprint) == 16


def test_npy_output(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out_file = tmp_path / "vectors.npy"
    assert run(["embed", "long_hair", "wine bottle", "-m", str(tiny_model), "-o",
                str(out_file), "--clip-skip", "2"]) == 0
    stdout = capsys.readouterr().out
    arr = np.load(out_file)
    assert arr.shape == (2, 128) and arr.dtype == np.float32
    want = library_vectors(tiny_model, ["long hair", "wine bottle"], clip_skip=2)
    assert np.abs(arr - want).max() <= 1e-6
    assert "clip skip 2" in stdout and f"wrote 2 x 128 float32 to {out_file}" in stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vectors.npy"]  # no temp files left


def test_json_file_and_tag_file(tiny_model: Path, tmp_path: Path) -> None:
    tags_file = tmp_path / "tags.txt"
    tags_file.write_text("solo\n\nwine_bottle\nsolo\r\n", encoding="utf-8")
    out_file = tmp_path / "v.json"
    assert run(["embed", "1girl", "--file", str(tags_file), "-m", str(tiny_model),
                "-o", str(out_file), "--representation", "eos"]) == 0
    rows = json.loads(out_file.read_text(encoding="utf-8"))
    assert [r["tag"] for r in rows] == ["1girl", "solo", "wine_bottle", "solo"]
    want = library_vectors(tiny_model, ["1girl", "solo", "wine bottle", "solo"],
                           representation="eos")
    assert np.abs(np.array([r["vector"] for r in rows]) - want).max() <= 1e-6


def test_tagcomplete_csv_file(tiny_model: Path, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    csv = tmp_path / "danbooru.csv"
    csv.write_text('1girl,0,6008644,"1girls,sole_female"\nlong_hair,0,4350743,"/lh,longhair"\n',
                   encoding="utf-8")
    assert run(["embed", "--file", str(csv), "-m", str(tiny_model), "--json"]) == 0
    assert [r["tag"] for r in json.loads(capsys.readouterr().out)] == ["1girl", "long_hair"]


def test_table_output_and_context(tiny_model: Path, capsys: pytest.CaptureFixture) -> None:
    assert run(["embed", "mayonnaise bottle", "-m", str(tiny_model), "--context",
                "1girl, solo, {}"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model ") and "context '1girl, solo, {}'" in out
    assert "mayonnaise bottle" in out and "1 x 128 vectors" in out


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["embed"], 2, "Give tags to embed"),
        (["embed", "x", "--json", "-o", "a.npy"], 2, "either -o/--output or --json"),
        (["embed", "x", "-o", "a.csv"], 2, "must end in .npy or .json"),
        (["embed", "x", "--device", "gpu"], 2, "'gpu' is not one of"),
        (["embed", "x", "--dtype", "fp8"], 2, "'fp8' is not one of"),
        (["embed", "x", "--representation", "cls"], 2, "'cls' is not one of"),
        (["embed", "x", "--clip-skip", "0"], 2, "--clip-skip"),
        (["embed", "x", "--context", "1girl, solo"], 2, "must contain {} exactly once"),
        (["embed", "x"], 1, "--model PATH or the TAGSMITH_MODEL"),
        (["embed", "x", "-m", "nowhere/model.safetensors"], 1, "no file or folder"),
        (["embed", "--file", "missing.txt", "-m", "x"], 1, "missing.txt"),
    ],
)
def test_errors_exit_codes(args: list[str], code: int, message: str, capsys) -> None:  # noqa: ANN001
    assert run(args) == code
    err = capsys.readouterr().err
    assert message in " ".join(err.split())
    assert "Traceback" not in err


def test_bad_model_files_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import tiny_models as tm

    for path, message in (
        (tm.save_sdxl_like(tmp_path / "sdxl.safetensors"), "not both SDXL text encoders"),
        (tm.save_lora(tmp_path / "lora.safetensors"), "LoRA"),
    ):
        assert run(["embed", "x", "-m", str(path)]) == 1
        err = " ".join(capsys.readouterr().err.split())
        assert err.startswith("Error: ") and message in err and "Traceback" not in err


def test_repaired_position_ids_are_reported(tiny_models, capsys) -> None:  # noqa: ANN001
    path = tiny_models.single_file(pos_ids="float")
    assert run(["embed", "x", "-m", str(path), "--no-cache"]) == 0
    assert "Note: Repaired the checkpoint's position_ids" in capsys.readouterr().err


def test_second_run_is_served_from_cache_without_torch(
    tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["embed", "mayonnaise bottle", "1girl", "-m", str(tiny_model), "--json",
            "--cache-dir", str(tmp_path)]
    assert run(args) == 0  # fills the cache (this process has torch already)
    first_out, first_err = capsys.readouterr()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = (
        "import sys; from tagsmith.cli import run\n"
        f"code = run({args!r})\n"
        "print('TORCH', 'torch' in sys.modules, code, file=sys.stderr)\n"
    )
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, check=True)
    assert "TORCH False 0" in second.stderr
    assert json.loads(second.stdout) == json.loads(first_out)
    assert "from cache" in second.stderr and "fp32 on cpu" in first_err
