"""--lora: merged weights per format against formulas written out here, run through transformers'
CLIPTextModel; the refusals (other family, corrupt, shapes) and the cache key."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lora_fixtures import (
    FORMATS,
    KOHYA_METADATA,
    build_lora,
    save_lora_file,
)
from tiny_models import reference_model, save_single_file, tiny_weights

from tagsmith.errors import InputError, UnsupportedModelError, UsageError
from tagsmith.model.embedding import EncoderSettings, open_embedder
from tagsmith.model.lora import LoraSpec, parse_lora_spec, read_lora
from tagsmith.text.tokenizer import BOS_ID, EOS_ID, load_tokenizer

TAGS = ["mayonnaise bottle", "1girl", "cross-arm", "wine bottle"]
RANK = 4


@pytest.fixture(scope="module")
def base(tmp_path_factory):  # noqa: ANN001, ANN201
    weights = tiny_weights(seed=5)
    path = save_single_file(weights, tmp_path_factory.mktemp("base") / "model.safetensors")
    return weights, path


# -- the independent computation: each loader's formula, written out in float64 --------------


def _d(t: torch.Tensor) -> torch.Tensor:
    return t.double()


def _tucker(core, w_a, w_b):  # noqa: ANN001, ANN202 - LyCORIS rebuild_tucker for a linear layer
    return torch.einsum("ij,jr,ip->pr", _d(core), _d(w_b), _d(w_a)).contiguous()


def expected_weight(fmt: str, t: dict[str, torch.Tensor], w: torch.Tensor, mult: float,
                    bias: torch.Tensor):  # noqa: ANN201
    w = _d(w)
    if fmt in ("ia3", "ia3-input"):
        vec = _d(t["weight"])
        factor = vec[None, :] if fmt == "ia3-input" else vec[:, None]
        return w + mult * w * factor, None
    if fmt == "full":
        return w + mult * _d(t["diff"]), _d(bias) + mult * _d(t["diff_b"])
    if fmt.startswith(("lora", "dora")):
        down, up = _d(t["lora_down.weight"]), _d(t["lora_up.weight"])
        r = down.shape[0]
        if fmt == "lora-scale":
            scale = float(t["scale"])
        elif fmt == "lora-noalpha":
            scale = 1.0
        else:
            scale = float(t["alpha"]) / r
        delta = up @ down * scale
    elif fmt.startswith("peft"):
        a, b = _d(t["lora_A.weight"]), _d(t["lora_B.weight"])
        r = a.shape[0]
        alpha = 8.0  # from the file's lora_adapter_metadata
        delta = b @ a * (alpha / math.sqrt(r) if fmt == "peft-rslora" else alpha / r)
    elif fmt == "loha":
        w1 = _d(t["hada_w1_a"]) @ _d(t["hada_w1_b"])
        delta = w1 * (_d(t["hada_w2_a"]) @ _d(t["hada_w2_b"]))
        delta = delta * float(t["alpha"]) / t["hada_w1_b"].shape[0]
    elif fmt == "loha-tucker":
        delta = _tucker(t["hada_t1"], t["hada_w1_a"], t["hada_w1_b"]) * _tucker(
            t["hada_t2"], t["hada_w2_a"], t["hada_w2_b"])
        delta = delta * float(t["alpha"]) / t["hada_w1_b"].shape[0]
    elif fmt == "lokr":
        w2 = _d(t["lokr_w2_a"]) @ _d(t["lokr_w2_b"])
        delta = torch.kron(_d(t["lokr_w1"]), w2) * float(t["alpha"]) / t["lokr_w2_b"].shape[0]
    elif fmt == "lokr-tucker":
        w2 = _tucker(t["lokr_t2"], t["lokr_w2_a"], t["lokr_w2_b"])
        delta = torch.kron(_d(t["lokr_w1"]), w2) * float(t["alpha"]) / t["lokr_w2_b"].shape[0]
    elif fmt == "lokr-full":
        delta = torch.kron(_d(t["lokr_w1"]), _d(t["lokr_w2"]))  # both full: scale 1
    elif fmt == "glora":
        a1, a2 = _d(t["a1.weight"]), _d(t["a2.weight"])
        b1, b2 = _d(t["b1.weight"]), _d(t["b2.weight"])
        delta = (b1 @ b2 + w @ a1 @ a2) * float(t["alpha"]) / a2.shape[0]
    else:
        raise AssertionError(fmt)
    magnitude = t.get("dora_scale", t.get("lora_magnitude_vector"))
    if magnitude is not None:
        v = w + delta
        if fmt == "dora-column":
            norm = v.norm(dim=0, keepdim=True)
            m = _d(magnitude)
        else:
            norm = v.norm(dim=1, keepdim=True)
            m = _d(magnitude).reshape(-1, 1)
        return w + mult * (m * v / norm - w), None
    return w + mult * delta, None


def merged_reference(weights: dict[str, torch.Tensor], modules: dict, fmt: str, mult: float):  # noqa: ANN001, ANN201
    merged = dict(weights)
    for target, t in modules.items():
        new_w, new_b = expected_weight(fmt, t, weights[f"{target}.weight"], mult,
                                       weights[f"{target}.bias"])
        merged[f"{target}.weight"] = new_w.float()
        if new_b is not None:
            merged[f"{target}.bias"] = new_b.float()
    return merged


def reference_vectors(weights: dict[str, torch.Tensor], tags: list[str]) -> np.ndarray:
    model = reference_model(weights)
    out = []
    for ids in load_tokenizer().encode_batch(tags):
        row = torch.tensor([[BOS_ID, *ids, EOS_ID]])
        with torch.no_grad():
            hs = model(row, output_hidden_states=True).hidden_states[-1]
            states = model.final_layer_norm(hs)[0, 1:1 + len(ids)]
        out.append(states.mean(0).numpy())
    return np.stack(out)


def write_format(tmp_path: Path, fmt: str, weights: dict) -> tuple[Path, dict]:  # noqa: ANN001
    modules = build_lora(fmt, weights, seed=11, rank=RANK)
    meta = dict(KOHYA_METADATA)
    naming = "peft" if fmt.startswith("peft") else "kohya"
    if naming == "peft":
        meta = {"lora_adapter_metadata": json.dumps({
            "text_encoder.r": RANK, "text_encoder.lora_alpha": 8,
            "text_encoder.use_rslora": fmt == "peft-rslora",
        })}
    path = save_lora_file(tmp_path / f"{fmt}.safetensors", modules, naming=naming, metadata=meta)
    return path, modules


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_merged_weights_match_the_formula(tmp_path, base, fmt, backend) -> None:  # noqa: ANN001
    weights, model = base
    path, modules = write_format(tmp_path, fmt, weights)
    mult = 0.7
    settings = EncoderSettings(model=str(model), use_cache=False, device="cpu",
                               loras=(LoraSpec(path, mult),))
    with open_embedder(settings) as emb:
        emb.encoder(positions=1, backend=backend)
        ours = emb.embed(TAGS)
        note = next(n for n in emb.notes if n.startswith("LoRA"))
    want = reference_vectors(merged_reference(weights, modules, fmt, mult), TAGS)
    base_vecs = reference_vectors(weights, TAGS)
    assert np.abs(want - base_vecs).max() > 1e-3  # the LoRA really moves the vectors
    np.testing.assert_allclose(ours, want, atol=2e-5, rtol=1e-4)
    assert f"applied {len(modules)} text-encoder deltas" in note
    assert "0 unknown keys" in note


@pytest.mark.parametrize("second", ["peft", "dora-row"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_two_loras_stack_in_order(tmp_path, base, second, backend) -> None:  # noqa: ANN001
    """Two LoRAs on the same layers: the numpy pass keeps two plain LoRAs as factors beside each
    product (no merged copy); a DoRA second normalises the weight the first one already moved,
    so there both are merged. Either way the vectors are the sequentially merged model's."""
    weights, model = base
    first_path, first = write_format(tmp_path, "lora", weights)
    second_path, other = write_format(tmp_path, second, weights)
    settings = EncoderSettings(model=str(model), use_cache=False, device="cpu",
                               loras=(LoraSpec(first_path, 0.7), LoraSpec(second_path, 0.5)))
    with open_embedder(settings) as emb:
        enc = emb.encoder(positions=1, backend=backend)
        ours = emb.embed(TAGS)
    if backend == "numpy":
        factored = [lw.low for lw in enc.layers]
        assert all(factored) == (second == "peft")
        if second == "peft":  # both LoRAs' factors side by side: rank 4 + 4
            assert factored[0]["fc1"][0][0].shape == (weights["encoder.layers.0.mlp.fc1.weight"]
                                                      .shape[1], 2 * RANK)
    once = merged_reference(weights, first, "lora", 0.7)
    want = reference_vectors(merged_reference(once, other, second, 0.5), TAGS)
    np.testing.assert_allclose(ours, want, atol=2e-5, rtol=1e-4)


def test_weight_zero_and_no_te_keys_equal_the_base(tmp_path, base) -> None:  # noqa: ANN001
    weights, model = base
    path, _ = write_format(tmp_path, "lora", weights)
    unet_only = save_lora_file(tmp_path / "unet.safetensors", {}, metadata=KOHYA_METADATA)
    with open_embedder(EncoderSettings(model=str(model), use_cache=False)) as emb:
        plain, fp = emb.embed(TAGS), emb.fingerprint
    for spec in (LoraSpec(path, 0.0), LoraSpec(unet_only, 1.0)):
        with open_embedder(EncoderSettings(model=str(model), use_cache=False,
                                           loras=(spec,))) as emb:
            np.testing.assert_array_equal(emb.embed(TAGS), plain)
            assert emb.fingerprint == fp  # base vectors already cached are reused
    with open_embedder(EncoderSettings(model=str(model), use_cache=False,
                                       loras=(LoraSpec(unet_only),))) as emb:
        assert any("acts only through the UNet" in n for n in emb.notes)


def test_cache_key_carries_fingerprint_and_weight(tmp_path, base) -> None:  # noqa: ANN001
    weights, model = base
    path, _ = write_format(tmp_path, "lora", weights)
    other, _ = write_format(tmp_path / "o", "loha", weights)

    def fp(*specs: LoraSpec, clip_skip: int = 1) -> str:
        with open_embedder(EncoderSettings(model=str(model), cache_dir=tmp_path / "c",
                                           loras=specs, clip_skip=clip_skip)) as emb:
            return emb.fingerprint

    base_fp = fp()
    keys = {base_fp, fp(LoraSpec(path, 1.0)), fp(LoraSpec(path, 0.5)), fp(LoraSpec(other)),
            fp(LoraSpec(path), LoraSpec(other))}
    assert len(keys) == 5


def test_cached_lora_vectors_match_fresh_ones(tmp_path, base) -> None:  # noqa: ANN001
    weights, model = base
    path, _ = write_format(tmp_path, "loha", weights)
    settings = EncoderSettings(model=str(model), cache_dir=tmp_path / "c", loras=(LoraSpec(path),))
    with open_embedder(settings) as emb:
        first = emb.embed(TAGS)
    with open_embedder(settings) as emb:
        second = emb.embed(TAGS)
        assert not emb.loaded  # all from the cache
    np.testing.assert_array_equal(first, second)
    with open_embedder(EncoderSettings(model=str(model), cache_dir=tmp_path / "c")) as emb:
        assert np.abs(emb.embed(TAGS) - first).max() > 1e-3  # the base's own entries


def test_clip_skip_ignores_deltas_in_layers_it_does_not_run(tmp_path, base) -> None:  # noqa: ANN001
    weights, model = base
    modules = {k: v for k, v in build_lora("lora", weights, seed=2).items()
               if k.startswith("encoder.layers.2.")}
    path = save_lora_file(tmp_path / "last.safetensors", modules, metadata=KOHYA_METADATA)
    with open_embedder(EncoderSettings(model=str(model), use_cache=False, clip_skip=2)) as emb:
        plain, fp = emb.embed(TAGS), emb.fingerprint
    with open_embedder(EncoderSettings(model=str(model), use_cache=False, clip_skip=2,
                                       loras=(LoraSpec(path),))) as emb:
        np.testing.assert_array_equal(emb.embed(TAGS), plain)
        assert emb.fingerprint == fp


def test_sdxl_lora_is_refused_naming_both_sides(tmp_path, base) -> None:  # noqa: ANN001
    weights, model = base
    modules = build_lora("lora", weights, layers=1)
    path = save_lora_file(tmp_path / "xl.safetensors", modules, encoder="te1",
                          metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    save_lora_file(tmp_path / "xl2.safetensors", modules, encoder="te2")
    for p in (path, tmp_path / "xl2.safetensors"):
        assert read_lora(p).family == "sdxl"
        with pytest.raises(UnsupportedModelError) as err:
            open_embedder(EncoderSettings(model=str(model), use_cache=False,
                                          loras=(LoraSpec(p),)))
        assert "SDXL" in err.value.message and "SD1.5" in err.value.message
        assert str(model) in err.value.message


def test_shape_mismatch_corrupt_and_non_lora_files(tmp_path, base) -> None:  # noqa: ANN001
    weights, model = base
    wide = {"encoder.layers.0.self_attn.q_proj": {
        "lora_down.weight": torch.zeros(4, 768), "lora_up.weight": torch.zeros(768, 4),
        "alpha": torch.tensor(4.0)}}
    path = save_lora_file(tmp_path / "wide.safetensors", wide)
    with pytest.raises(UnsupportedModelError) as err:
        open_embedder(EncoderSettings(model=str(model), use_cache=False, loras=(LoraSpec(path),)))
    assert "768x768" in err.value.message and "128x128" in err.value.message
    assert "wide.safetensors" in err.value.message
    deep = {"encoder.layers.7.mlp.fc1": wide["encoder.layers.0.self_attn.q_proj"]}
    path = save_lora_file(tmp_path / "deep.safetensors", deep)
    with pytest.raises(UnsupportedModelError, match="does not have"):
        open_embedder(EncoderSettings(model=str(model), use_cache=False, loras=(LoraSpec(path),)))
    broken = tmp_path / "broken.safetensors"
    good, _ = write_format(tmp_path, "lora", weights)
    broken.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(UnsupportedModelError, match="truncated"):
        read_lora(broken)
    with pytest.raises(UnsupportedModelError, match="not a LoRA.*full checkpoint"):
        read_lora(model)
    with pytest.raises(InputError, match="no LoRA file"):
        read_lora(tmp_path / "missing.safetensors")


def test_lora_spec_parsing(tmp_path) -> None:  # noqa: ANN001
    assert parse_lora_spec("a/style.safetensors:0.8") == LoraSpec(Path("a/style.safetensors"), 0.8)
    assert parse_lora_spec("style.safetensors") == LoraSpec(Path("style.safetensors"), 1.0)
    assert parse_lora_spec("s.safetensors:-1").weight == -1.0
    odd = tmp_path / "a:b.safetensors"
    odd.write_bytes(b"")
    assert parse_lora_spec(str(odd)).path == odd
    with pytest.raises(UsageError, match="not a number"):
        parse_lora_spec("style.safetensors:strong")


def test_header_summary_without_reading_tensors(tmp_path, base) -> None:  # noqa: ANN001
    weights, _ = base
    path, modules = write_format(tmp_path, "dora-row", weights)
    f = read_lora(path)
    assert f.family == "sd1" and f.te_trained and f.unet_keys == 1
    assert f.summary() == f"{len(modules)} text-encoder deltas (DoRA (LoRA), rank 4)"
    assert {m.target for m in f.modules} == set(modules)


def test_unknown_keys_are_reported_not_silently_dropped(tmp_path, base) -> None:  # noqa: ANN001
    from safetensors.torch import save_file

    weights, model = base
    path = tmp_path / "comfy.safetensors"
    save_file({
        "text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.lora_A.weight":
            torch.zeros(4, 128),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
    }, str(path))
    with open_embedder(EncoderSettings(model=str(model), use_cache=False,
                                       loras=(LoraSpec(path),))) as emb:
        assert any("none of its 1 non-UNet keys" in n for n in emb.notes)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_sdxl_lora_on_an_sdxl_model_matches_the_formula(tmp_path, backend) -> None:  # noqa: ANN001
    import tiny_sdxl as xl
    from lora_fixtures import kohya_name, module_tensors
    from safetensors.torch import save_file

    weights = xl.sdxl_weights(seed=3)
    model = xl.save_single_file(weights, tmp_path / "xl.safetensors")
    g = torch.Generator().manual_seed(9)
    modules, tensors = {}, {}
    for part, cfg, prefix in (("l", xl.TINY_L, "lora_te1_"), ("g", xl.TINY_G, "lora_te2_")):
        h, i = cfg.hidden_size, cfg.intermediate_size
        shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, h),
                  "self_attn.v_proj": (h, h), "self_attn.out_proj": (h, h),
                  "mlp.fc1": (i, h), "mlp.fc2": (h, i)}
        modules[part] = {f"encoder.layers.{n}.{m}": module_tensors("lora", o, k, g, RANK)
                         for n in range(cfg.num_layers) for m, (o, k) in shapes.items()}
        for target, roles in modules[part].items():
            for role, t in roles.items():
                tensors[f"{kohya_name(prefix, target)}.{role}"] = t
    path = tmp_path / "xl_lora.safetensors"
    save_file(tensors, str(path), metadata={"ss_base_model_version": "sdxl_base_v1-0"})
    with open_embedder(EncoderSettings(model=str(model), use_cache=False, device="cpu",
                                       loras=(LoraSpec(path, 0.6),))) as emb:
        emb.encoder(positions=1, backend=backend)
        ours = emb.embed(TAGS)
        assert any("applied 42 text-encoder deltas" in n for n in emb.notes)
    merged = {p: merged_reference(weights[p], modules[p], "lora", 0.6) for p in ("l", "g")}
    refs = xl.reference_models(merged)
    for text, got in zip(TAGS, ours):
        ids = load_tokenizer().encode(text)
        parts = []
        with torch.no_grad():
            for p, pad in (("l", EOS_ID), ("g", 0)):
                seq = [BOS_ID, *ids, EOS_ID] + [pad] * (75 - len(ids))
                hs = refs[p](torch.tensor([seq]), output_hidden_states=True).hidden_states
                parts.append(hs[-2][0, 1:1 + len(ids)].numpy().mean(0))
        np.testing.assert_allclose(got, np.concatenate(parts), atol=2e-5, rtol=1e-4)
    # an SD1.5 LoRA on the SDXL model: refused naming both sides
    sd1 = save_lora_file(tmp_path / "sd1.safetensors", build_lora("lora", {}, layers=1),
                         metadata=KOHYA_METADATA)
    with pytest.raises(UnsupportedModelError, match="is for SD1.5.*SDXL"):
        open_embedder(EncoderSettings(model=str(model), use_cache=False, loras=(LoraSpec(sd1),)))


def test_factors_of_different_ranks_are_one_sentence_not_a_traceback() -> None:
    from tagsmith.errors import UnsupportedModelError
    from tagsmith.model.lora_math import lora_factors

    t = {"down": np.zeros((4, 16), np.float32), "up": np.zeros((8, 3), np.float32)}
    with pytest.raises(UnsupportedModelError, match=r"lora_up \(8, 3\) and lora_down \(4, 16\)"):
        lora_factors(t)
