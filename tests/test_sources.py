"""Where the encoder comes from: --model parsing, layouts, bad files, hub cache, fingerprint."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tagsmith.errors import ModelNotFoundError, TagsmithError, UnsupportedModelError
from tagsmith.model.config import EncoderConfig, encoder_config_from_shapes
from tagsmith.model.fingerprint import safetensors_fingerprint
from tagsmith.model.hub import resolve_hub
from tagsmith.model.layouts import position_ids_note
from tagsmith.model.safetensors_file import read_safetensors_header, sniff_format
from tagsmith.model.sources import DEFAULT_MODEL, parse_model_spec, resolve_source

TESTS = Path(__file__).resolve().parent


def tiny():  # noqa: ANN201
    import tiny_models

    return tiny_models


# -- parsing --model ---------------------------------------------------------------------------


def test_existing_paths_win_over_hub_ids(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "org" / "name").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert parse_model_spec("org/name").kind == "path"
    assert parse_model_spec("other/name").kind == "hub"
    assert parse_model_spec("hf://org/name").kind == "hub"
    clip = "openai/clip-vit-large-patch14"
    assert parse_model_spec(clip).value == clip


@pytest.mark.parametrize("spec", ["missing.safetensors", "./nothing/here.ckpt", "a/b/c", "  "])
def test_nonexistent_paths_are_one_sentence(spec: str) -> None:
    with pytest.raises(ModelNotFoundError) as err:
        parse_model_spec(spec)
    assert err.value.message.endswith(".")
    assert "\n" not in err.value.message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=60))
def test_any_model_string_parses_or_fails_with_a_sentence(spec: str) -> None:
    try:
        parsed = parse_model_spec(spec)
    except TagsmithError as exc:
        assert exc.message
    else:
        assert parsed.kind in ("path", "hub")


def test_model_comes_from_env_then_default(monkeypatch: pytest.MonkeyPatch, tiny_models) -> None:  # noqa: ANN001
    with pytest.raises(ModelNotFoundError) as err:
        resolve_source(None)
    assert DEFAULT_MODEL in err.value.message
    monkeypatch.setenv("TAGSMITH_MODEL", str(tiny_models.single_file()))
    assert resolve_source(None).files == (tiny_models.single_file(),)


# -- layouts -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("maker", "kind", "desc"),
    [
        (lambda t: t.single_file(), "single-file", "A1111/ComfyUI layout), fp32"),
        (lambda t: t.single_file(layout="old"), "single-file", "without text_model."),
        (lambda t: t.single_file(dtype="fp16"), "single-file", "fp16"),
        (lambda t: t.single_file(dtype="bf16"), "single-file", "bf16"),
        (lambda t: t.hf_folder(), "folder", "CLIPTextModel folder, fp32"),
        (lambda t: t.hf_folder(clip_model=True), "folder", "CLIPModel folder"),
        (lambda t: t.diffusers_folder(), "diffusers", "diffusers pipeline"),
    ],
    ids=["a1111", "a1111-old", "fp16", "bf16", "hf-folder", "clipmodel-folder", "diffusers"],
)
def test_layouts_resolve_to_the_tiny_architecture(tiny_models, maker, kind, desc) -> None:  # noqa: ANN001
    src = resolve_source(str(maker(tiny_models)))
    assert src.kind == kind
    assert desc in src.description
    assert src.format == "safetensors"
    assert src.config == tiny().TINY
    assert src.notes == ()
    # only the encoder's tensors are located (no unet/vae/vision tensors)
    assert set(src.tensors) == set(tiny_models.weights) | {"embeddings.position_ids"}


def test_pickle_checkpoints_are_recognised_without_opening(tiny_models) -> None:  # noqa: ANN001
    for path in (tiny_models.ckpt(), tiny_models.ckpt(legacy=True)):
        src = resolve_source(str(path))
        assert src.format == "pickle"
        assert src.config is None  # torch.load happens in tagsmith.model.encoder


def test_sniff_format(tiny_models, tmp_path: Path) -> None:  # noqa: ANN001
    assert sniff_format(tiny_models.single_file()) == "safetensors"
    assert sniff_format(tiny_models.ckpt()) == "zip-pickle"
    assert sniff_format(tiny_models.ckpt(legacy=True)) == "legacy-pickle"
    assert sniff_format(tiny().save_random_bytes(tmp_path / "x.bin")) == "unknown"


# -- what is not an SD1.5 encoder gets one sentence -------------------------------------------


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda t, d: t.save_sd2_like(d / "sd21.safetensors"), "SD 2.x checkpoint"),
        (lambda t, d: t.save_sdxl_like(d / "sdxl.safetensors"), "not both SDXL text encoders"),
        (lambda t, d: t.save_lora(d / "lora.safetensors"), "is a LoRA"),
        (lambda t, d: t.save_vae(d / "vae.safetensors"), "is a VAE"),
        (lambda t, d: t.save_random_bytes(d / "noise.safetensors"), "not a safetensors file"),
        (lambda t, d: t.save_random_bytes(d / "noise.ckpt"), "not a readable PyTorch checkpoint"),
        (lambda t, d: t.save_random_bytes(d / "noise.gguf"), "not a model file tagsmith reads"),
        (lambda t, d: _write(d / "empty.safetensors", b""), "too short"),
        (lambda t, d: _write(d / "j.safetensors", struct.pack("<Q", 4) + b"{xx}"), "valid JSON"),
    ],
    ids=["sd2", "sdxl", "lora", "vae", "random-st", "random-ckpt", "other-ext", "empty", "json"],
)
def test_bad_files_get_their_sentence(tmp_path: Path, build, expected: str) -> None:  # noqa: ANN001
    path = build(tiny(), tmp_path)
    with pytest.raises((UnsupportedModelError, ModelNotFoundError)) as err:
        resolve_source(str(path))
    message = err.value.message
    assert expected in message, message
    assert str(path) in message and message.endswith(".") and "\n" not in message


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("fraction", [0.5, 0.999, 0.00001])
def test_truncated_checkpoint_says_truncated(tiny_models, tmp_path: Path, fraction: float) -> None:  # noqa: ANN001
    cut = tiny().save_truncated(tiny_models.single_file(), tmp_path / "cut.safetensors", fraction)
    with pytest.raises(UnsupportedModelError) as err:
        resolve_source(str(cut))
    assert "truncated" in err.value.message or "too short" in err.value.message


def test_unet_only_and_incomplete_encoders(tmp_path: Path, tiny_models) -> None:  # noqa: ANN001
    from safetensors.torch import save_file

    t = tiny()
    tensors = t.single_file_tensors(tiny_models.weights)
    unet_only = {k: v for k, v in tensors.items() if not k.startswith("cond_stage_model.")}
    save_file(unet_only, str(tmp_path / "unet.safetensors"))
    with pytest.raises(UnsupportedModelError, match="holds a UNet but no text encoder"):
        resolve_source(str(tmp_path / "unet.safetensors"))
    pruned = {k: v for k, v in tensors.items() if "layers.2.mlp" not in k}
    save_file(pruned, str(tmp_path / "pruned.safetensors"))
    with pytest.raises(UnsupportedModelError, match="incomplete text encoder: .*layers.2.mlp"):
        resolve_source(str(tmp_path / "pruned.safetensors"))


def test_widths_of_other_models_are_named() -> None:
    def shapes(width: int, vocab: int = 49408) -> dict:
        cfg = EncoderConfig(vocab_size=vocab, hidden_size=width, num_layers=1, num_heads=1,
                            intermediate_size=4)
        from tagsmith.model.config import expected_shapes

        return expected_shapes(cfg)

    with pytest.raises(UnsupportedModelError, match="SD 2.x text encoder"):
        encoder_config_from_shapes(shapes(1024), None, "te")
    with pytest.raises(UnsupportedModelError, match="SDXL second text encoder"):
        encoder_config_from_shapes(shapes(1280), None, "te")
    with pytest.raises(UnsupportedModelError, match="vocabulary of 32,000 tokens"):
        encoder_config_from_shapes(shapes(64, vocab=32000), None, "te")
    full = encoder_config_from_shapes(shapes(768), None, "te")
    assert (full.num_heads, full.hidden_act) == (12, "quick_gelu")  # ViT-L/14: 12 heads of 64


def test_folders_without_an_encoder(tmp_path: Path, tiny_models) -> None:  # noqa: ANN001
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnsupportedModelError, match="holds no text encoder"):
        resolve_source(str(empty))
    ckpts = tmp_path / "Stable-diffusion"
    ckpts.mkdir()
    (ckpts / "a.safetensors").write_bytes(b"x")
    (ckpts / "b.ckpt").write_bytes(b"x")
    with pytest.raises(UnsupportedModelError, match="folder of 2 checkpoint files"):
        resolve_source(str(ckpts))
    pipe = tmp_path / "pipe"
    pipe.mkdir()
    (pipe / "model_index.json").write_text("{}")
    with pytest.raises(UnsupportedModelError, match="no text_encoder/ subfolder"):
        resolve_source(str(pipe))
    (pipe / "text_encoder").mkdir()
    (pipe / "text_encoder_2").mkdir()
    with pytest.raises(UnsupportedModelError, match="has no weights"):
        resolve_source(str(pipe))  # an SDXL pipeline, read as one, whose folders are empty
    (pipe / "text_encoder").rmdir()
    with pytest.raises(UnsupportedModelError, match="SDXL refiner"):
        resolve_source(str(pipe))
    vision = tmp_path / "vision"
    vision.mkdir()
    (vision / "config.json").write_text(json.dumps({"architectures": ["CLIPVisionModel"],
                                                     "model_type": "clip_vision_model"}))
    with pytest.raises(UnsupportedModelError, match="CLIP vision model"):
        resolve_source(str(vision))


# -- position_ids ---------------------------------------------------------------------------


def test_position_ids_are_checked(tiny_models) -> None:  # noqa: ANN001
    assert resolve_source(str(tiny_models.single_file())).notes == ()
    floats = resolve_source(str(tiny_models.single_file(pos_ids="float"))).notes
    assert len(floats) == 1 and "stored as fp32 instead of integers" in floats[0]
    broken = resolve_source(str(tiny_models.single_file(pos_ids="corrupt"))).notes
    assert len(broken) == 1 and "11 of 77 were off" in broken[0] and "held 2.9999" in broken[0]


def test_position_ids_note_by_hand() -> None:
    import numpy as np

    assert position_ids_note(np.arange(77), "I64") is None
    assert "12 values" in position_ids_note(np.arange(12), "I64")


# -- fingerprint ------------------------------------------------------------------------------


def test_fingerprint_depends_on_weights_not_layout(tiny_models) -> None:  # noqa: ANN001
    fp = {
        name: safetensors_fingerprint(resolve_source(str(path)))
        for name, path in {
            "single": tiny_models.single_file(),
            "old": tiny_models.single_file(layout="old"),
            "corrupt_ids": tiny_models.single_file(pos_ids="corrupt"),
            "hf": tiny_models.hf_folder(),
            "clip": tiny_models.hf_folder(clip_model=True),
            "diffusers": tiny_models.diffusers_folder(),
            "fp16": tiny_models.single_file(dtype="fp16"),
            "other": tiny_models.other_single_file(),
        }.items()
    }
    same = {fp[k] for k in ("single", "old", "corrupt_ids", "hf", "clip", "diffusers")}
    assert len(same) == 1
    assert fp["fp16"] != fp["single"]  # different bytes on disk, different numbers on a GPU
    assert fp["other"] != fp["single"]
    assert len(fp["single"]) == 16 and int(fp["single"], 16) >= 0


def test_fingerprint_is_stable_across_processes(tiny_models) -> None:  # noqa: ANN001
    path = tiny_models.single_file()
    here = safetensors_fingerprint(resolve_source(str(path)))
    code = (
        "import sys; from tagsmith.model.sources import resolve_source; "
        "from tagsmith.model.fingerprint import safetensors_fingerprint; "
        f"print(safetensors_fingerprint(resolve_source({str(path)!r}))); "
        "assert 'torch' not in sys.modules"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == here


def test_header_parser_never_crashes_on_garbage(tmp_path: Path) -> None:
    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=64), st.integers(min_value=0, max_value=200))
    def check(tail: bytes, n: int) -> None:
        p = tmp_path / "g.safetensors"
        p.write_bytes(struct.pack("<Q", n) + tail)
        try:
            read_safetensors_header(p)
        except UnsupportedModelError as exc:
            assert exc.message.endswith(".")

    check()


# -- Hugging Face hub ---------------------------------------------------------------------


def test_hub_repo_is_read_from_the_local_cache_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models  # noqa: ANN001
) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    tiny().build_hf_cache(tiny_models.weights, hf_home, DEFAULT_MODEL, variant="fp16")
    src = resolve_source(None)  # the default model, found in the cache
    assert src.kind == "hub"
    assert "fp16 variant, from the local cache" in src.description
    assert src.config == tiny().TINY and src.stored_dtype == "fp16"
    tiny().build_hf_cache(tiny_models.weights, hf_home, "openai/clip-vit-large-patch14",
                          variant="fp32", layout="clip")
    clip = resolve_source("openai/clip-vit-large-patch14")
    assert clip.stored_dtype == "fp32"
    assert safetensors_fingerprint(clip) == safetensors_fingerprint(
        resolve_source(str(tiny_models.single_file()))
    )


def test_uncached_hub_model_offline_says_how_to_give_a_model() -> None:
    with pytest.raises(ModelNotFoundError) as err:
        resolve_source("someone/some-model")
    msg = err.value.message
    assert "not in the Hugging Face cache" in msg and "HF_HUB_OFFLINE" in msg
    assert "--model PATH" in msg and "TAGSMITH_MODEL" in msg


def test_download_fetches_only_the_encoder_and_prefers_fp16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models  # noqa: ANN001
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    repo_files = [
        "model_index.json", "unet/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors", "text_encoder/config.json",
        "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
        "text_encoder/pytorch_model.bin", "v1-5-pruned.safetensors",
    ]
    fetched: list[str] = []
    source_dir = tiny().save_hf_folder(tiny_models.weights, tmp_path / "remote", dtype="fp16",
                                       filename="model.fp16.safetensors")

    def fetch(repo_id: str, filename: str, cache_dir: Path) -> Path:
        fetched.append(filename)
        target = tmp_path / "dl" / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((source_dir / Path(filename).name).read_bytes())
        return target

    folder, weights, note = resolve_hub(DEFAULT_MODEL, fetch=fetch, list_files=lambda r: repo_files)
    assert fetched == ["text_encoder/config.json", "text_encoder/model.fp16.safetensors"]
    assert weights.name == "model.fp16.safetensors" and "downloaded" in note


def test_hub_network_failure_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def boom(repo_id: str) -> list[str]:
        raise ConnectionError("Name or service not known")

    with pytest.raises(ModelNotFoundError, match="Could not reach the Hugging Face Hub"):
        resolve_hub("org/name", list_files=boom)
