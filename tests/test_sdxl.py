"""SDXL's two text encoders: every layout and backend against transformers' CLIPTextModel /
CLIPTextModelWithProjection on the same weights, the in_proj split and text_projection
transpose against an OpenCLIP-style computation, fingerprints and refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tiny_sdxl as xl
import torch
import torch.nn.functional as F

from tagsmith.cli import run
from tagsmith.errors import UnsupportedModelError, UsageError
from tagsmith.model.embedding import EncoderSettings, open_embedder
from tagsmith.model.fingerprint import safetensors_fingerprint
from tagsmith.model.sources import resolve_source
from tagsmith.text.tokenizer import BOS_ID, EOS_ID, load_tokenizer

TAGS = ["mayonnaise bottle", "cross-arm", "1girl", "hatsune miku (cosplay)"]
TOL = 1e-5


@pytest.fixture(scope="module")
def weights() -> dict:
    return xl.sdxl_weights(0)


@pytest.fixture(scope="module")
def refs(weights):  # noqa: ANN001, ANN201
    return xl.reference_models(weights)


@pytest.fixture(scope="module")
def layouts(weights, tmp_path_factory) -> dict[str, str]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("sdxl")
    return {
        "single-file": str(xl.save_single_file(weights, root / "ponyish.safetensors")),
        "single-file-fp16": str(xl.save_single_file(weights, root / "half.safetensors",
                                                    torch.float16)),
        "diffusers": str(xl.save_diffusers_folder(weights, root / "pipe")),
        "ckpt": str(xl.save_ckpt(weights, root / "ponyish.ckpt")),
    }


def _ids(text: str) -> list[int]:
    return load_tokenizer().encode(text)


def _reference_states(refs, text: str, layer: int) -> np.ndarray:  # noqa: ANN001
    """concat(L hidden_states[layer], G hidden_states[layer]) at the tag's own tokens, no
    final layer norm: what SDXL's UNet reads (penultimate: layer -2)."""
    ids = _ids(text)
    # padded to 77 as the UIs do: L with EOS, G with 0 after the EOS
    l_ids = [BOS_ID, *ids, EOS_ID] + [EOS_ID] * (75 - len(ids))
    g_ids = [BOS_ID, *ids, EOS_ID] + [0] * (75 - len(ids))
    out = []
    with torch.no_grad():
        for part, seq in (("l", l_ids), ("g", g_ids)):
            hs = refs[part](torch.tensor([seq]), output_hidden_states=True).hidden_states
            out.append(hs[layer][0, 1:1 + len(ids)].numpy())
    return np.concatenate(out, axis=1)


def _reference_pooled(refs, text: str) -> np.ndarray:  # noqa: ANN001
    ids = _ids(text)
    seq = [BOS_ID, *ids, EOS_ID] + [0] * (75 - len(ids))
    with torch.no_grad():
        return refs["g"](torch.tensor([seq])).text_embeds[0].numpy()


@pytest.mark.parametrize("layout", ["single-file", "diffusers", "ckpt", "single-file-fp16"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_every_layout_and_backend_matches_transformers(layouts, refs, layout, backend) -> None:  # noqa: ANN001
    if layout == "ckpt" and backend == "numpy":
        pytest.skip("pickles always load through torch")
    emb = open_embedder(EncoderSettings(model=layouts[layout], device="cpu", use_cache=False))
    assert emb.family == "SDXL" and emb.dim == 128 + 192
    emb.encoder(positions=10, backend=backend)
    states = emb.token_states(TAGS)
    means = emb.embed(TAGS)
    for text, got, mean in zip(TAGS, states, means):
        want = _reference_states(refs, text, -2)
        # fp16 files hold the same (fp16-exact) weights, computed in fp32
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
        np.testing.assert_allclose(mean, want.mean(axis=0), atol=TOL, rtol=0)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_clip_skip_follows_forge_and_a1111(layouts, refs, backend) -> None:  # noqa: ANN001
    def states(skip: int) -> list[np.ndarray]:
        emb = open_embedder(EncoderSettings(model=layouts["single-file"], device="cpu",
                                            clip_skip=skip, use_cache=False))
        emb.encoder(positions=10, backend=backend)
        return emb.token_states(TAGS[:2])

    one, two, three = states(1), states(2), states(3)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)  # 1 and 2: both the penultimate layer
    for text, got in zip(TAGS[:2], three):
        np.testing.assert_allclose(got, _reference_states(refs, text, -3), atol=TOL, rtol=0)


@pytest.mark.parametrize("layout", ["single-file", "diffusers", "ckpt"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_pooled_vector_matches_text_embeds(layouts, refs, layout, backend) -> None:  # noqa: ANN001
    if layout == "ckpt" and backend == "numpy":
        pytest.skip("pickles always load through torch")
    emb = open_embedder(EncoderSettings(model=layouts[layout], device="cpu", clip_skip=2,
                                        representation="pooled", use_cache=False))
    emb.encoder(positions=10, backend=backend)
    assert emb.dim == 192
    got = emb.embed(TAGS)
    for text, row in zip(TAGS, got):
        np.testing.assert_allclose(row, _reference_pooled(refs, text), atol=TOL, rtol=0)


def test_one_encoder_is_its_side_of_the_conditioning(layouts, refs) -> None:  # noqa: ANN001
    for part, cols in (("l", slice(0, 128)), ("g", slice(128, 320))):
        emb = open_embedder(EncoderSettings(model=layouts["single-file"], device="cpu",
                                            encoder=part, use_cache=False))
        assert emb.dim == cols.stop - cols.start
        got = emb.token_states([TAGS[0]])[0]
        np.testing.assert_allclose(got, _reference_states(refs, TAGS[0], -2)[:, cols],
                                   atol=TOL, rtol=0)


def test_balanced_cosine_is_the_mean_of_each_encoders_cosine(layouts) -> None:  # noqa: ANN001
    base = dict(model=layouts["single-file"], device="cpu", use_cache=False)
    raw = open_embedder(EncoderSettings(**base)).embed(TAGS[:2])
    bal = open_embedder(EncoderSettings(**base, combine="balanced")).embed(TAGS[:2])

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))

    want = (cos(raw[0, :128], raw[1, :128]) + cos(raw[0, 128:], raw[1, 128:])) / 2
    assert cos(bal[0], bal[1]) == pytest.approx(want, abs=1e-6)
    assert cos(raw[0], raw[1]) != pytest.approx(want, abs=1e-4)


# -- the OpenCLIP-style reference ------------------------------------------------------------


def _openclip_forward(t: dict[str, torch.Tensor], ids: list[int]) -> tuple:
    """OpenCLIP's text tower written out from the single file's own tensors: fused in_proj
    through nn.MultiheadAttention's functional form, causal mask, gelu, x @ text_projection."""
    p = xl.G_PREFIX
    width = t[p + "token_embedding.weight"].shape[1]
    heads = width // 64
    n_layers = xl.TINY_G.num_layers
    x = t[p + "token_embedding.weight"][ids] + t[p + "positional_embedding"][: len(ids)]
    x = x[:, None, :]  # (L, N, E), as nn.MultiheadAttention takes it
    mask = torch.full((len(ids), len(ids)), float("-inf")).triu_(1)
    hidden = [x]
    for n in range(n_layers):
        b = f"{p}transformer.resblocks.{n}."
        h = F.layer_norm(x, (width,), t[b + "ln_1.weight"], t[b + "ln_1.bias"])
        a, _ = F.multi_head_attention_forward(
            h, h, h, width, heads, t[b + "attn.in_proj_weight"], t[b + "attn.in_proj_bias"],
            None, None, False, 0.0, t[b + "attn.out_proj.weight"], t[b + "attn.out_proj.bias"],
            training=False, need_weights=False, attn_mask=mask,
        )
        x = x + a
        h = F.layer_norm(x, (width,), t[b + "ln_2.weight"], t[b + "ln_2.bias"])
        h = F.linear(F.gelu(F.linear(h, t[b + "mlp.c_fc.weight"], t[b + "mlp.c_fc.bias"])),
                     t[b + "mlp.c_proj.weight"], t[b + "mlp.c_proj.bias"])
        x = x + h
        hidden.append(x)
    last = F.layer_norm(x, (width,), t[p + "ln_final.weight"], t[p + "ln_final.bias"])
    eos = ids.index(EOS_ID)
    pooled = last[eos, 0] @ t[p + "text_projection"]
    return hidden[-2][:, 0], pooled


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_in_proj_split_and_projection_transpose_match_openclip(layouts, backend) -> None:  # noqa: ANN001
    from safetensors.torch import load_file

    stored = load_file(layouts["single-file"])
    text = TAGS[0]
    ids = [BOS_ID, *_ids(text), EOS_ID]
    with torch.no_grad():
        penultimate, pooled = _openclip_forward(stored, ids)
    g = open_embedder(EncoderSettings(model=layouts["single-file"], device="cpu", encoder="g",
                                      use_cache=False))
    g.encoder(positions=10, backend=backend)
    got = g.token_states([text])[0]
    np.testing.assert_allclose(got, penultimate[1:-1].numpy(), atol=TOL, rtol=0)
    p = open_embedder(EncoderSettings(model=layouts["single-file"], device="cpu",
                                      representation="pooled", use_cache=False))
    p.encoder(positions=10, backend=backend)
    np.testing.assert_allclose(p.embed([text])[0], pooled.numpy(), atol=TOL, rtol=0)
    # and the canonical tensors are the split rows / the transpose of what the file stores
    src = resolve_source(layouts["single-file"]).parts["g"]
    from tagsmith.model.safetensors_file import read_tensor_array

    fused = stored[xl.G_PREFIX + "transformer.resblocks.1.attn.in_proj_weight"].numpy()
    k = read_tensor_array(src.tensors["encoder.layers.1.self_attn.k_proj.weight"])
    np.testing.assert_array_equal(k, fused[192:384])
    proj = read_tensor_array(src.tensors["text_projection.weight"])
    np.testing.assert_array_equal(proj, stored[xl.G_PREFIX + "text_projection"].numpy().T)


# -- sources, fingerprints, refusals ---------------------------------------------------------


def test_every_layout_has_one_fingerprint_covering_both_encoders(
    layouts, weights, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_models  # noqa: ANN001
) -> None:
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    hf_home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    xl.build_hf_cache(weights, hf_home, "stabilityai/stable-diffusion-xl-base-1.0")
    hub = resolve_source("stabilityai/stable-diffusion-xl-base-1.0")
    assert hub.family == "SDXL" and hub.kind == "hub" and "from the local cache" in hub.description
    prints = {name: safetensors_fingerprint(resolve_source(path))
              for name, path in layouts.items() if name != "ckpt"}
    prints["hub"] = safetensors_fingerprint(hub)
    # same weights (fp16-exact): fp32 layouts agree; fp16 files hash their own bytes
    assert prints["single-file"] == prints["diffusers"]
    assert prints["hub"] == prints["single-file-fp16"]
    ckpt = open_embedder(EncoderSettings(model=layouts["ckpt"], use_cache=False))
    assert ckpt.fingerprint == prints["single-file"]
    sd15 = safetensors_fingerprint(resolve_source(str(tiny_models.single_file())))
    assert sd15 not in prints.values()
    # another G changes the fingerprint: it covers both encoders
    other = xl.sdxl_weights(0)
    other["g"]["encoder.layers.3.mlp.fc2.bias"] += 2**-10
    changed = xl.save_single_file(other, tmp_path / "other.safetensors")
    assert safetensors_fingerprint(resolve_source(str(changed))) != prints["single-file"]
    # and each view of the model gets its own cache key
    keys = {open_embedder(EncoderSettings(model=layouts["single-file"], encoder=e)).fingerprint
            for e in ("auto", "l", "g")}
    assert len(keys) == 3


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda w, d: xl.save_refiner(w, d / "refiner.safetensors"), "SDXL refiner"),
        (lambda w, d: xl.save_sd3_like(d / "sd3.safetensors"), "SD3"),
        (lambda w, d: xl.save_flux_like(d / "flux.safetensors"), "Flux"),
    ],
)
def test_other_families_are_refused_in_one_sentence(weights, tmp_path, build, words) -> None:  # noqa: ANN001
    path = build(weights, tmp_path)
    with pytest.raises(UnsupportedModelError) as err:
        resolve_source(str(path))
    msg = err.value.message
    assert words in msg and "SDXL (CLIP-L + OpenCLIP-G)" in msg and msg.count(". ") == 0


def test_sd15_model_refuses_the_sdxl_only_options(tiny_model: Path) -> None:
    for kw in ({"encoder": "g"}, {"representation": "pooled"}):
        with pytest.raises(UsageError, match="needs an SDXL model"):
            open_embedder(EncoderSettings(model=str(tiny_model), **kw))


# -- commands --------------------------------------------------------------------------------


def test_embed_says_sdxl_and_gives_each_side(layouts, capsys) -> None:  # noqa: ANN001
    path = layouts["single-file"]
    assert run(["embed", "mayonnaise bottle", "-m", path, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows[0]["vector"]) == 320
    assert run(["embed", "mayonnaise bottle", "-m", path, "--encoder", "g", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows[0]["vector"]) == 192
    assert run(["embed", "mayonnaise bottle", "-m", path, "--encoder", "g"]) == 0
    out = capsys.readouterr()
    assert "SDXL" in out.out + out.err and "CLIP-G" in out.out + out.err


def test_suggest_json_reports_each_encoders_similarity(layouts, capsys) -> None:  # noqa: ANN001
    path = layouts["single-file"]
    assert run(["suggest", "mayonnaise bottle", "-m", path, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["family"] == "SDXL"
    row = data["candidates"][0]
    by = row["similarity_by_encoder"]
    assert set(by) == {"l", "g"} and set(by["l"]) == set(row["similarity"])
    assert run(["suggest", "mayonnaise bottle", "-m", path]) == 0
    assert "SDXL" in capsys.readouterr().out


def test_explore_ranks_with_an_sdxl_model(layouts) -> None:  # noqa: ANN001
    import asyncio

    from test_tui import SIZE, loaded

    from tagsmith.analysis.suggest import SuggestOptions, suggest
    from tagsmith.tui.app import ExploreApp, SuggestSource

    emb = open_embedder(EncoderSettings(model=layouts["single-file"], device="cpu"))
    options = SuggestOptions(neighbors=["wine bottle"])
    result = suggest("mayonnaise bottle", options, embedder=emb)
    assert result.model["family"] == "SDXL"

    async def go() -> None:
        app = ExploreApp(SuggestSource("mayonnaise bottle", options),
                         model_loader=lambda: (emb, None))
        async with app.run_test(size=SIZE) as pilot:
            await loaded(pilot)
            table = app.screen.table
            scores = [table.cell(table.column("score"), i) for i in range(len(table))]
            assert scores == [f"{rc.score:.3f}" for rc in result.candidates]

    asyncio.run(go())


def test_trigger_score_and_dataset_run_on_sdxl(layouts, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    path = layouts["single-file"]
    assert run(["trigger", "cross tattoo", "-p", "arm", "-p", "chest", "-m", path,
                "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    member = data["candidates"][0]["members"][0]
    assert data["model"]["family"] == "SDXL" and set(member["similarity_by_encoder"]) == {"l", "g"}
    vocab = tmp_path / "tags.csv"
    vocab.write_text("bottle,0,71684,\nwine bottle,0,6727,\nmayonnaise bottle,0,144,\n"
                     "long hair,0,4000000,\ndark blue hair,0,16580,\n", encoding="utf-8")
    assert run(["score", str(vocab), "-m", path, "-o", str(tmp_path / "s.csv")]) == 0
    assert "model SDXL" in capsys.readouterr().out
    ds = tmp_path / "ds"
    ds.mkdir()
    # cross tattoo and arm tattoo always together, never with smile: one entangled cluster.
    for i in range(8):
        text = "1girl, cross tattoo, arm tattoo" if i % 2 else "1girl, smile, outdoors"
        (ds / f"{i}.txt").write_text(text, encoding="utf-8")
        (ds / f"{i}.png").write_bytes(b"")
    assert run(["dataset", str(ds), "-m", path, "--json", "--min-support", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    pairs = [p for c in report["clusters"] for p in (c.get("embedding") or {}).get("pairs", [])]
    assert pairs, "the cluster was not measured in the SDXL model"
    # Each encoder's similarity is its own centred cosine, against its own baseline.
    from tagsmith.model.calibration import model_baseline

    emb = open_embedder(EncoderSettings(model=path, device="cpu"))
    base = model_baseline(emb)
    for pair in pairs:
        vec = emb.embed([pair["a"], pair["b"]])
        assert pair["cosine"] == pytest.approx(float(base.similarity(vec[:1], vec[1:])[0, 0]),
                                               abs=2e-4)
        assert set(pair["by_encoder"]) == {"l", "g"}
        for name, got in pair["by_encoder"].items():
            part = slice(*base.slices[name])
            want = base.encoders[name].similarity(vec[:1, part], vec[1:, part])[0, 0]
            assert got == pytest.approx(float(want), abs=2e-4)


def test_eos_representation_is_the_conditioning_at_the_first_eos(layouts, refs) -> None:  # noqa: ANN001
    emb = open_embedder(EncoderSettings(model=layouts["single-file"], device="cpu",
                                        representation="eos", use_cache=False))
    got = emb.embed(TAGS[:2])
    for text, row in zip(TAGS[:2], got):
        n = len(_ids(text))
        want = []
        with torch.no_grad():
            for part, pad in (("l", EOS_ID), ("g", 0)):
                seq = [BOS_ID, *_ids(text), EOS_ID] + [pad] * (75 - n)
                hs = refs[part](torch.tensor([seq]), output_hidden_states=True).hidden_states
                want.append(hs[-2][0, 1 + n].numpy())
        np.testing.assert_allclose(row, np.concatenate(want), atol=TOL, rtol=0)


def test_hub_download_fetches_both_encoders_only(weights, tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from tagsmith.model.hub import SECOND_ENCODER, resolve_hub

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    remote = xl.save_diffusers_folder(weights, tmp_path / "remote")
    files = ["model_index.json", "unet/diffusion_pytorch_model.fp16.safetensors",
             "text_encoder/config.json", "text_encoder/model.safetensors",
             "text_encoder_2/config.json", "text_encoder_2/model.safetensors"]
    fetched: list[str] = []

    def fetch(repo_id: str, filename: str, cache_dir: Path) -> Path:
        fetched.append(filename)
        target = tmp_path / "dl" / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((remote / filename).read_bytes())
        return target

    found = resolve_hub("org/xl", fetch=fetch, list_files=lambda r: files,
                        layouts=SECOND_ENCODER, required=False)
    assert found is not None and found[1].parent.name == "text_encoder_2"
    assert fetched == ["text_encoder_2/config.json", "text_encoder_2/model.safetensors"]
    sd15 = [f for f in files if not f.startswith("text_encoder_2/")]
    assert resolve_hub("org/sd15", fetch=fetch, list_files=lambda r: sd15,
                       layouts=SECOND_ENCODER, required=False) is None


def test_balanced_vectors_are_the_same_read_from_the_cache(layouts, tmp_path: Path) -> None:  # noqa: ANN001
    """score reads a resumed run's vectors through ``cached``: with --combine balanced they
    must be scaled as ``embed`` scales them (they were once given unscaled, so a warm rerun
    scored concat cosines against a balanced baseline)."""
    from tagsmith.analysis.score import embed_in_chunks

    base = dict(model=layouts["single-file"], device="cpu", cache_dir=tmp_path)
    cold = open_embedder(EncoderSettings(**base, combine="balanced", use_cache=False)).embed(TAGS)
    open_embedder(EncoderSettings(**base)).embed(TAGS[:2])  # a concat run fills the cache
    warm = open_embedder(EncoderSettings(**base, combine="balanced"))
    assert set(warm.cached(TAGS)) == set(TAGS[:2])
    got = embed_in_chunks(warm, TAGS, cache_progress=lambda done, total: None)
    np.testing.assert_allclose(got, cold, atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.stack([warm.cached(TAGS)[t] for t in TAGS]), cold,
                               atol=1e-6, rtol=0)


def test_a_unet_only_lora_naming_no_family_is_not_refused_on_sdxl(layouts, tmp_path) -> None:  # noqa: ANN001
    """Diffusers' SDXL LoRAs are often UNet-only, with no metadata: nothing says SD1.5, and
    they cannot change the encoder, so the numbers are the base model's (with the notice)."""
    from safetensors.torch import save_file

    from tagsmith.model.lora import LoraSpec

    lora = tmp_path / "unet_only.safetensors"
    key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
    save_file({f"{key}.lora_A.weight": torch.zeros(4, 2048),
               f"{key}.lora_B.weight": torch.zeros(640, 4)}, str(lora))
    base = dict(model=layouts["single-file"], device="cpu", use_cache=False)
    plain = open_embedder(EncoderSettings(**base)).embed(TAGS)
    with open_embedder(EncoderSettings(**base, loras=(LoraSpec(lora),))) as emb:
        np.testing.assert_array_equal(emb.embed(TAGS), plain)
        assert any("no text-encoder keys" in n or "only through the UNet" in n
                   for n in emb.notes)
