"""`tagsmith suggest` / `trigger` end to end through the real encoder path.

The encoder is hand-built: every layer's attention and MLP output is zero, so the residual
stream is the token embedding and a tag vector is the mean of LayerNorm(token embedding) over
the tag's tokens. Token embeddings are chosen so that ``bottle`` sits close to ``wine bottle``
and ``container`` is bottle's nearest known word without being a bottle.
"""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import TINY, save_hf_folder, save_single_file, tiny_weights

from tagsmith.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, run
from tagsmith.text.tokenizer import load_tokenizer

H = TINY.hidden_size
DESIGNED = 16  # dims 0..15 hold the designed directions; other tokens live in dims 16+


def _dir(k: int, scale: float = 1.0) -> torch.Tensor:
    # Zero-mean directions survive LayerNorm unchanged: +1 on dim 2k, -1 on dim 2k+1.
    v = torch.zeros(H)
    v[2 * k], v[2 * k + 1] = scale, -scale
    return v


def hand_built_weights() -> dict[str, torch.Tensor]:
    w = tiny_weights(seed=3)
    for name in list(w):
        if name.endswith(("out_proj.weight", "out_proj.bias", "fc2.weight", "fc2.bias")):
            w[name] = torch.zeros_like(w[name])
    w["embeddings.position_embedding.weight"].zero_()
    w["final_layer_norm.weight"] = torch.ones(H)
    w["final_layer_norm.bias"] = torch.zeros(H)
    emb = w["embeddings.token_embedding.weight"]
    emb[:, :DESIGNED] = 0.0
    tok = load_tokenizer()

    def put(piece: str, vec: torch.Tensor) -> None:
        emb[tok.token_to_id(piece)] = vec

    mayo, bottle = _dir(0), _dir(1)
    put("may", mayo)
    put("onnaise</w>", mayo)
    put("bottle</w>", bottle)
    put("wine</w>", bottle + _dir(2, 0.3))
    put("water</w>", bottle + _dir(3, 0.3))
    put("container</w>", 0.5 * bottle + _dir(4, 0.87))
    put("-</w>", _dir(5))
    put("_</w>", _dir(6))
    return w


@pytest.fixture(scope="module")
def hand_model(tmp_path_factory):
    return save_hf_folder(hand_built_weights(), tmp_path_factory.mktemp("hand") / "encoder")


@pytest.fixture
def vocab_file(tmp_path):
    f = tmp_path / "tags.csv"
    f.write_text("bottle,0,71684,\nwater_bottle,0,11505,\nwine_bottle,0,6727,\n"
                 "mayonnaise,0,526,\nmayonnaise_bottle,0,144,\n", encoding="utf-8")
    return f


def test_suggest_prefers_form_without_bottle(hand_model, vocab_file, capsys):
    code = run(["suggest", "mayonnaise_bottle", "--model", str(hand_model), "--vocab",
                str(vocab_file), "--neighbor", "wine bottle", "--json"])
    assert code == EXIT_OK, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    best = out["candidates"][0]
    assert "bottle" not in best["form"] and best["form"].startswith("mayonnaise")
    assert "swaps 'bottle' for 'container'" in best["reason"]
    base = next(c for c in out["candidates"] if c["form"] == "mayonnaise bottle")
    assert best["similarity"]["wine bottle"] < base["similarity"]["wine bottle"] - 0.05
    # --json carries the calibrated value, its percentile, the raw cosine and the baseline.
    assert set(best["raw"]["similarity"]) == set(best["similarity"])
    assert 0 <= best["percentile"]["wine bottle"] <= best["percentile"]["mayonnaise"] <= 100
    assert out["baseline"]["n_reference"] > 0 and out["baseline"]["tie"] > 0
    assert best["similarity"]["mayonnaise"] > 0.8
    assert out["model"]["fingerprint"] and out["model"]["clip_skip"] == 1
    assert {n["tag"]: n["source"] for n in out["neighbors"]}["wine bottle"] == "user"


def test_suggest_table_csv_and_plot(hand_model, vocab_file, tmp_path, capsys):
    csv_path, png = tmp_path / "out.csv", tmp_path / "matrix.png"
    code = run(["suggest", "mayonnaise bottle", "-m", str(hand_model), "--vocab",
                str(vocab_file), "--csv", str(csv_path), "--plot", str(png)])
    assert code == EXIT_OK
    out = capsys.readouterr().out
    assert "Recommended: mayonnaise container" in out
    assert "similarity (centred cosine: 0 = unrelated in this model)" in out
    header = csv_path.read_text().splitlines()[0].split(",")
    assert header[:3] == ["rank", "form", "kind"] and "sim:wine bottle" in header
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_same_numbers_from_single_file_checkpoint(hand_model, tmp_path, capsys):
    ckpt = save_single_file(hand_built_weights(), tmp_path / "anime.safetensors")
    assert run(["suggest", "mayonnaise bottle", "-m", str(hand_model), "--json"]) == EXIT_OK
    a = json.loads(capsys.readouterr().out)
    assert run(["suggest", "mayonnaise bottle", "-m", str(ckpt), "--json"]) == EXIT_OK
    b = json.loads(capsys.readouterr().out)
    sims_a = {c["form"]: c["similarity"] for c in a["candidates"]}
    sims_b = {c["form"]: c["similarity"] for c in b["candidates"]}
    assert sims_a.keys() == sims_b.keys()
    for form in sims_a:
        for n, v in sims_a[form].items():
            assert sims_b[form][n] == pytest.approx(v, abs=1e-5)


def test_trigger_cli(hand_model, capsys):
    code = run(["trigger", "cross tattoo", "--part", "arm", "--part", "chest", "--held-out",
                "back", "--avoid", "hijikata toushirou", "-m", str(hand_model), "--json"])
    assert code == EXIT_OK, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    fam = next(c for c in out["candidates"] if c["stem"] == "cross")
    assert [m["form"] for m in fam["members"]] == ["cross-arm", "cross-chest"]
    assert fam["held_out"]["form"] == "cross-back"
    assert 0.0 <= fam["separation"] <= 2.0
    assert any(n["role"] == "avoid" for n in out["neighbors"])


def test_no_model_reachable_falls_back_to_tokens(capsys, monkeypatch):
    # Offline, nothing cached, no --model: candidates and tokens, one notice, exit 0.
    code = run(["suggest", "mayonnaise bottle", "--json"])
    captured = capsys.readouterr()
    assert code == EXIT_OK
    out = json.loads(captured.out)
    assert out["model"] is None
    assert [c["form"] for c in out["candidates"]][:2] == ["mayonnaise bottle", "mayonnaise-bottle"]
    assert out["candidates"][0]["score"] is None
    notes = [line for line in captured.err.splitlines() if line.startswith("Note:")]
    assert len(notes) == 1 and "--model" in captured.err
    assert "Traceback" not in captured.err


def test_explicit_missing_model_is_an_error(tmp_path, capsys):
    code = run(["suggest", "mayonnaise bottle", "--model", str(tmp_path / "nope.safetensors")])
    assert code == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["suggest", ""], EXIT_USAGE, "Tag 1 is empty"),
        (["trigger", " "], EXIT_USAGE, "Tag 1 is empty"),
        (["suggest", "bottle", "--vocab", "/nonexistent/tags.csv"], EXIT_FAILURE, "not"),
        (["suggest", "bottle", "--weights", "bogus=1"], EXIT_USAGE, "Unknown weight"),
        (["suggest", "bottle", "--weights", "leakage=x"], EXIT_USAGE, "must be a number"),
        (["trigger", "cross tattoo", "--part", ""], EXIT_USAGE, "--part is empty"),
        # empty once prompt syntax is removed: the same usage error, in the text as given
        (["suggest", "<lora:x:1>"], EXIT_USAGE, "The tag is empty"),
        (["trigger", "(:1.2)"], EXIT_USAGE, "The concept is empty"),
        (["trigger", "cross tattoo", "--part", "[]"], EXIT_USAGE, "A --part is empty"),
        (["score", "nope:x:.csv", "-o", "x.csv"], EXIT_FAILURE, "nope:x:.csv does not exist"),
    ],
)
def test_bad_input(args, code, message, capsys):
    assert run(args) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_vocab_format(tmp_path, capsys):
    f = tmp_path / "weird.bin"
    f.write_bytes(bytes(range(256)) * 4)
    assert run(["suggest", "bottle", "--vocab", str(f)]) == EXIT_FAILURE
    assert "Traceback" not in capsys.readouterr().err


def test_dataset_correlated_tags_become_avoid(hand_model, tmp_path, capsys):
    ds = tmp_path / "10_mayo"
    ds.mkdir()
    for i in range(20):
        tags = ["mayonnaise bottle", "kitchen table"] if i < 18 else ["mayonnaise bottle"]
        tags += ["1girl"] if i % 2 else ["solo"]
        (ds / f"{i:03d}.png").write_bytes(b"")
        (ds / f"{i:03d}.txt").write_text(", ".join(tags), encoding="utf-8")
    for i in range(20, 40):  # other images without the object
        (ds / f"{i:03d}.png").write_bytes(b"")
        (ds / f"{i:03d}.txt").write_text("1girl, solo, outdoors", encoding="utf-8")
    code = run(["suggest", "mayonnaise bottle", "-m", str(hand_model), "--dataset",
                str(tmp_path), "--json"])
    assert code == EXIT_OK, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    avoid = [n["tag"] for n in out["neighbors"] if n["role"] == "avoid"]
    assert "kitchen table" in avoid
    assert all(c["avoid"] is not None for c in out["candidates"])
