"""`tagsmith lora` and --lora on the model commands, end to end through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from lora_fixtures import KOHYA_METADATA, build_lora, save_lora_file
from test_lora import merged_reference, reference_vectors
from tiny_models import save_single_file, tiny_weights

from tagsmith.analysis.lora_report import lora_info
from tagsmith.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, run


@pytest.fixture(scope="module")
def files(tmp_path_factory):  # noqa: ANN001, ANN201
    root = tmp_path_factory.mktemp("loras")
    weights = tiny_weights(seed=5)
    model = save_single_file(weights, root / "base.safetensors")
    mayo_modules = build_lora("lora", weights, seed=3)
    mayo = save_lora_file(root / "mayo.safetensors", mayo_modules, metadata=KOHYA_METADATA)
    meta = dict(KOHYA_METADATA)
    meta["ss_tag_frequency"] = json.dumps({"5_bottle-cross": {
        "bottle-cross": 10, "1girl": 10, "tattoo": 4}})
    meta["ss_dataset_dirs"] = json.dumps({"5_bottle-cross": {"n_repeats": 5, "img_count": 10}})
    cross = save_lora_file(root / "cross.safetensors", build_lora("loha", weights, seed=4),
                           metadata=meta)
    vocab = root / "danbooru.csv"
    vocab.write_text("1girl,0,6008644,\"girl\"\nbottle,0,71684,\ntattoo,0,135355,\n"
                     "holding,0,400000,\nkitchen,0,20000,\nwine_bottle,0,6727,\n",
                     encoding="utf-8")
    return {"root": root, "weights": weights, "model": model, "mayo": mayo,
            "mayo_modules": mayo_modules, "cross": cross, "vocab": vocab}


def _json(capsys, *args: str) -> dict:  # noqa: ANN001
    assert run(list(args)) == EXIT_OK
    return json.loads(capsys.readouterr().out)


def test_header_report_reads_no_tensor(files, capsys, monkeypatch) -> None:  # noqa: ANN001
    import tagsmith.model.lora_patch as patch_mod
    import tagsmith.model.safetensors_file as st_mod

    def boom(ref):  # noqa: ANN001, ANN202
        raise AssertionError("read a tensor")

    monkeypatch.setattr(patch_mod, "read_tensor_array", boom)
    monkeypatch.setattr(st_mod, "read_tensor_array", boom)
    out = _json(capsys, "lora", str(files["mayo"]), "--json")
    r = out["loras"][0]
    assert r["family"] == "sd1" and r["text_encoder_trained"] is True
    assert r["training"]["clip_skip"] == 2 and r["training"]["keep_tokens"] == 1
    assert r["training"]["shuffle_caption"] is True
    assert r["network"]["module"] == "networks.lora" and r["network"]["dim"] == 4
    assert r["folders"] == {"10_mayobottle": {"repeats": 10, "images": 20}}
    tags = {t["tag"]: t for t in r["tags"]}
    assert tags["1girl"]["count"] == 14  # kohya's old " 1girl" key, normalised
    assert tags["1girl"]["share"] == pytest.approx(14 / 20)
    assert tags["mayonnaise bottle"]["tokens"] == ["may", "onnaise", "bottle"]
    assert [t["tag"] for t in r["tags"]][:2] == ["mayobottle", "1girl"]
    assert [t["tag"] for t in r["triggers"]] == ["mayobottle"]
    assert "training folder's name" in r["triggers"][0]["why"]


def test_vocabulary_decides_rare_triggers(files, capsys) -> None:  # noqa: ANN001
    out = _json(capsys, "lora", str(files["cross"]), "--json", "--vocab", str(files["vocab"]))
    r = out["loras"][0]
    # both tags are in every caption; 1girl is common in the vocabulary, so not a trigger
    assert [t["tag"] for t in r["triggers"]] == ["bottle-cross"]
    assert "not in the vocabulary" in r["triggers"][0]["why"]
    tags = {t["tag"]: t for t in r["tags"]}
    assert tags["1girl"]["vocab_count"] == 6008644 and tags["bottle-cross"]["in_vocab"] is False


def test_moved_tags_match_the_reference(files, capsys) -> None:  # noqa: ANN001
    out = _json(capsys, "lora", str(files["mayo"]), "--model", str(files["model"]), "--json",
                "--clip-skip", "1", "--vocab", str(files["vocab"]), "--top", "50",
                "--cache-dir", str(files["root"] / "cache"))
    moved = out["loras"][0]["moved"]
    caption = [t["tag"] for t in out["loras"][0]["tags"]]
    texts = list(dict.fromkeys(caption + ["1girl", "bottle", "tattoo", "holding", "kitchen",
                                          "wine bottle"]))
    assert moved["measured"] == len(texts)
    base = reference_vectors(files["weights"], texts)
    merged = merged_reference(files["weights"], files["mayo_modules"], "lora", 1.0)
    after = reference_vectors(merged, texts)
    mean = base.mean(0)
    b, a = base - mean, after - mean
    want = 1 - (b * a).sum(1) / np.linalg.norm(b, axis=1) / np.linalg.norm(a, axis=1)
    got = {m["tag"]: m["moved"] for m in moved["top"]}
    assert set(got) == set(texts)
    for tag, value in zip(texts, want):
        assert got[tag] == pytest.approx(float(value), abs=1e-4)
    assert [m["tag"] for m in moved["top"]][0] == texts[int(np.argmax(want))]
    trig = moved["triggers"][0]
    assert trig["tag"] == "mayobottle" and len(trig["neighbours"]) > 0
    assert all(n["tag"] != "mayobottle" for n in trig["neighbours"])


def test_collisions_table_json_and_plot(files, capsys) -> None:  # noqa: ANN001
    plot = files["root"] / "collide.png"
    out = _json(capsys, "lora", str(files["mayo"]), f"{files['cross']}:0.5", "--model",
                str(files["model"]), "--json", "--plot", str(plot),
                "--cache-dir", str(files["root"] / "cache"))
    (c,) = out["collisions"]
    assert c["a"] == "mayo.safetensors" and c["b"] == "cross.safetensors"
    assert c["shared_tokens"] == ["bottle"]  # mayo|bottle and bottle|-|cross
    assert c["shared_training_tags"] == ["1girl"]
    assert 0 <= c["moved_overlap"] <= 1 and -1 <= c["trigger_similarity"] <= 1
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert out["loras"][1]["moved"]["model"]["loras"][0]["weight"] == 0.5
    assert run(["lora", str(files["mayo"]), str(files["cross"])]) == EXIT_OK
    text = capsys.readouterr().out
    assert "Collisions" in text and "Likely triggers" in text


def test_suggest_with_lora_shows_base_numbers(files, capsys) -> None:  # noqa: ANN001
    common = ["suggest", "mayonnaise bottle", "--model", str(files["model"]), "--json",
              "--cache-dir", str(files["root"] / "cache")]
    plain = _json(capsys, *common)
    with_lora = _json(capsys, *common, "--lora", f"{files['mayo']}:0.8")
    base = {c["form"]: c["score"] for c in plain["candidates"]}
    assert with_lora["model"]["loras"][0]["weight"] == 0.8
    assert any("applied 18 text-encoder deltas (LoRA, rank 4)" in n for n in with_lora["notices"])
    for c in with_lora["candidates"]:
        # the base model's numbers are against the same neighbours as the LoRA's
        assert set(c["base"]["similarity"]) == set(c["similarity"])
        if c["form"] in base:
            assert c["base"]["score"] == pytest.approx(base[c["form"]], abs=1e-6)
    assert any(abs(c["score"] - c["base"]["score"]) > 1e-4 for c in with_lora["candidates"])


def test_trigger_with_lora_and_other_commands(files, capsys) -> None:  # noqa: ANN001
    out = _json(capsys, "trigger", "mayo bottle", "--model", str(files["model"]), "--json",
                "--lora", str(files["cross"]), "--no-cache")
    plain = _json(capsys, "trigger", "mayo bottle", "--model", str(files["model"]), "--json",
                  "--no-cache")
    alone = {c["form"]: c["score"] for c in plain["candidates"]}
    assert alone and all(c["form"] in alone for c in out["candidates"])
    for c in out["candidates"]:  # measured in the same run, on the base model's baseline
        assert c["base"]["score"] == pytest.approx(alone[c["form"]], abs=1e-6)
    assert any(abs(c["score"] - c["base"]["score"]) > 1e-4 for c in out["candidates"])
    assert run(["embed", "1girl", "--model", str(files["model"]), "--lora", str(files["mayo"]),
                "--no-cache", "--json"]) == EXIT_OK
    assert "applied 18 text-encoder deltas" in capsys.readouterr().err


def test_refusals_exit_with_one_sentence(files, capsys, tmp_path) -> None:  # noqa: ANN001
    xl = save_lora_file(tmp_path / "xl.safetensors", build_lora("lora", files["weights"], layers=1),
                        encoder="te2")
    base = ["embed", "1girl", "--model", str(files["model"]), "--no-cache", "--lora"]
    assert run([*base, str(xl)]) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "is for SDXL" in err and "SD1.5" in err and "Traceback" not in err
    assert run([*base, str(tmp_path / "nope.safetensors")]) == EXIT_FAILURE
    assert "no LoRA file" in capsys.readouterr().err
    assert run([*base, f"{files['mayo']}:strong"]) == EXIT_USAGE
    assert run(["lora", str(files["model"])]) == EXIT_FAILURE
    assert "full checkpoint" in capsys.readouterr().err


def test_unet_only_lora_notice(files, tmp_path) -> None:  # noqa: ANN001
    path = save_lora_file(tmp_path / "unet.safetensors", {}, metadata=KOHYA_METADATA)
    r = lora_info(path)
    assert not r.te_trained and any("only through the UNet" in n for n in r.notes)


def test_explore_shows_the_lora_table(files) -> None:  # noqa: ANN001
    import asyncio

    from test_tui import SIZE, loaded, shown

    from tagsmith.model.embedding import EncoderSettings
    from tagsmith.tui.app import ExploreApp, LoraSource
    from tagsmith.tui.loaders import load_lora_table

    settings = EncoderSettings(model=str(files["model"]), cache_dir=files["root"] / "cache")
    table = load_lora_table(files["mayo"], settings, files["vocab"])
    moved = dict(zip(table.values["tag"], table.values["moved"]))
    report = _report_moved(files, settings)
    assert moved == pytest.approx(report.moved.by_tag)
    assert table.default_sort == ("moved", True)
    trig = dict(zip(table.values["tag"], table.values["trigger"]))
    assert trig["mayobottle"] == 1.0 and trig["1girl"] == 0.0

    async def go() -> None:
        app = ExploreApp(LoraSource(files["mayo"], settings, files["vocab"]))
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            rows = shown(app)
            assert rows[0] == max(moved, key=moved.get)

    asyncio.run(go())


def _report_moved(files, settings):  # noqa: ANN001, ANN202
    from tagsmith.analysis.lora_report import lora_info, measure_moved
    from tagsmith.model.lora import LoraSpec
    from tagsmith.text.vocab import read_vocabulary

    voc = read_vocabulary(files["vocab"])
    report = lora_info(files["mayo"], vocab_counts={e.text: e.count for e in voc.entries})
    report.moved = measure_moved(report, settings, LoraSpec(files["mayo"]),
                                 [e.text for e in voc.entries])
    return report
