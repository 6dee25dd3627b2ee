"""The encoder computes what SD computes: checked against transformers' CLIPTextModel.

transformers is imported once per session (it costs seconds); the reference model runs eager
attention on the same tiny weights, padded to 77 as A1111 and diffusers do.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tagsmith.errors import (
    InputError,
    ModelError,
    UnsafeCheckpointError,
    UnsupportedModelError,
    UsageError,
)
from tagsmith.model.embedding import EncoderSettings, open_embedder
from tagsmith.model.encoder import (
    ClipTextEncoder,
    inspect_pickle,
    load_text_encoder,
    select_device,
    select_dtype,
    torch_load_checkpoint,
)
from tagsmith.model.sources import resolve_source
from tagsmith.text.tokenizer import BOS_ID, EOS_ID, load_tokenizer

TAGS = [
    "mayonnaise bottle", "mayonnaise container", "mayonnaise-container", "bottle", "wine bottle",
    "1girl", "solo", "long hair", "cross-arm", "crossarm", "sks", "ohwx",
    "hijikata toushirou (gintama)", "looking at viewer", "a", "^_^", "breasts",
    "very long hair with a red ribbon and a blue bow", "thighhighs", "black thighhighs",
]


@pytest.fixture(autouse=True)
def _one_torch_thread():  # noqa: ANN202
    # Tiny models on a shared 2-core machine: thread hand-offs, not arithmetic, dominate.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def reference(tiny_models):  # noqa: ANN001, ANN201
    import tiny_models as tm

    return tm.reference_model(tiny_models.weights)


def _padded77(ids: list[int]) -> list[int]:
    # What A1111/diffusers feed the encoder: BOS, tokens, EOS, EOS padding to 77.
    return [BOS_ID, *ids, EOS_ID] + [EOS_ID] * (75 - len(ids))


def _reference_states(reference, tags: list[str], clip_skip: int = 1, context: str = ""):  # noqa: ANN001, ANN202
    tok = load_tokenizer()
    prefix = tok.encode(context) if context else []
    rows, spans = [], []
    for ids in tok.encode_batch(tags):
        rows.append(_padded77(prefix + ids))
        spans.append((1 + len(prefix), 1 + len(prefix) + len(ids)))
    with torch.no_grad():
        out = reference(torch.tensor(rows), output_hidden_states=True)
        states = reference.final_layer_norm(out.hidden_states[-clip_skip])
    return states, spans, out


def _embed(model: Path, tags: list[str], **kw) -> np.ndarray:  # noqa: ANN003
    with open_embedder(EncoderSettings(model=str(model), use_cache=False, **kw)) as emb:
        return emb.embed(tags)


# -- the forward pass ---------------------------------------------------------------------------


def test_lean_forward_matches_transformers(tiny_models, reference) -> None:  # noqa: ANN001
    enc = ClipTextEncoder(reference_config(), dict(tiny_models.weights))
    tok = load_tokenizer()
    ids = torch.tensor([_padded77(x) for x in tok.encode_batch(TAGS[:8])])
    with torch.no_grad():
        out = reference(ids, output_hidden_states=True)
    ours = enc.hidden_states(ids)
    assert len(ours) == len(out.hidden_states) == 4
    for a, b in zip(ours, out.hidden_states):
        assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert (enc.forward(ids) - out.last_hidden_state).abs().max() <= 1e-5


def reference_config():  # noqa: ANN201
    import tiny_models as tm

    return tm.TINY


@pytest.mark.parametrize("clip_skip", [2, 3])
def test_clip_skip_is_final_norm_of_earlier_hidden_state(tiny_models, reference, clip_skip) -> None:  # noqa: ANN001
    enc = ClipTextEncoder(reference_config(), dict(tiny_models.weights))
    ids = torch.tensor([_padded77(load_tokenizer().encode("mayonnaise bottle"))])
    with torch.no_grad():
        hidden = reference(ids, output_hidden_states=True).hidden_states
        # A1111: hidden_states[-N], then the final layer norm, written out by hand
        h = hidden[-clip_skip]
        ln = reference.final_layer_norm
        mu = h.mean(-1, keepdim=True)
        var = ((h - mu) ** 2).mean(-1, keepdim=True)
        by_hand = (h - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias
    ours = enc.forward(ids, clip_skip=clip_skip)
    assert (ours - by_hand).abs().max() <= 1e-5
    assert (ours - enc.forward(ids, clip_skip=1)).abs().max() > 1e-2  # it changes something
    with pytest.raises(UsageError, match="between 1 and 3"):
        enc.forward(ids, clip_skip=4)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("clip_skip", [1, 2])
@pytest.mark.parametrize("context", ["", "1girl, solo, "])
def test_tag_vectors_match_padded_to_77(tiny_models, reference, clip_skip, context, backend):  # noqa: ANN001, ANN201
    """Prefix trees, the shared prefix and skipping EOS/padding change no number (<= 1e-5),
    in the torch encoder and in its numpy copy."""
    states, spans, _ = _reference_states(reference, TAGS, clip_skip, context)
    expected = np.stack([states[i, a:b].mean(0).numpy() for i, (a, b) in enumerate(spans)])
    settings = EncoderSettings(
        model=str(tiny_models.single_file()), clip_skip=clip_skip, use_cache=False,
        context=(context + "{}") if context else None,
    )
    with open_embedder(settings) as emb:
        enc = emb.encoder(backend=backend)
        got = emb.embed(TAGS)
        assert emb.encoder() is enc  # small jobs stay on the encoder they have
        # a tiny budget forces many small trees
        small = np.zeros_like(got)
        seqs = emb._sequences(TAGS)
        prefix = [BOS_ID, *load_tokenizer().encode(context)] if context else [BOS_ID]
        for idx, vecs in enc.encode(seqs, prefix=prefix, clip_skip=clip_skip, token_budget=8):
            small[idx] = vecs
    assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(small - expected).max() <= 1e-5


def test_eos_vector_is_the_pooled_output(tiny_models, reference) -> None:  # noqa: ANN001
    _, _, out = _reference_states(reference, TAGS)
    got = _embed(tiny_models.single_file(), TAGS, representation="eos")
    # transformers pools the first EOS (eos_token_id 49407 in this config)
    assert np.abs(got - out.pooler_output.numpy()).max() <= 1e-4


def test_text_after_the_tag_changes_eos_but_not_the_tag(tiny_models) -> None:  # noqa: ANN001
    model = tiny_models.single_file()
    a = _embed(model, TAGS[:4], context="{}")
    b = _embed(model, TAGS[:4], context="{}, masterpiece, best quality")
    assert np.array_equal(a, b)
    ea = _embed(model, TAGS[:4], context="{}", representation="eos")
    eb = _embed(model, TAGS[:4], context="{}, masterpiece", representation="eos")
    assert np.abs(ea - eb).max() > 1e-3


def test_token_states_are_what_cross_attention_reads(tiny_models, reference) -> None:  # noqa: ANN001
    states, spans, _ = _reference_states(reference, TAGS[:5])
    with open_embedder(EncoderSettings(model=str(tiny_models.single_file()), use_cache=False)) as e:
        per_token = e.token_states(TAGS[:5])
    for i, (a, b) in enumerate(spans):
        assert per_token[i].shape == (b - a, 128)
        assert np.abs(per_token[i] - states[i, a:b].numpy()).max() <= 1e-4


def test_long_tags_are_cut_where_sd_cuts_them(tiny_models, reference) -> None:  # noqa: ANN001
    long_tag = " ".join(["red"] * 90)
    with open_embedder(EncoderSettings(model=str(tiny_models.single_file()), use_cache=False)) as e:
        got = e.embed([long_tag])
        assert any("exceeds the 75-token chunk" in n for n in e.notes)
    ids = torch.tensor([[BOS_ID] + [load_tokenizer().encode("red")[0]] * 75 + [EOS_ID]])
    with torch.no_grad():
        ref = reference(ids).last_hidden_state[0, 1:76].mean(0).numpy()
    assert np.abs(got[0] - ref).max() <= 1e-4
    with pytest.raises(InputError, match="no tokens"):
        _embed(tiny_models.single_file(), ["   "])


# -- every layout, same numbers ---------------------------------------------------------------


@pytest.mark.parametrize(
    "maker",
    [
        lambda t: t.single_file(layout="old"),
        lambda t: t.single_file(dtype="fp16"),
        lambda t: t.single_file(dtype="bf16"),
        lambda t: t.single_file(pos_ids="corrupt"),
        lambda t: t.hf_folder(),
        lambda t: t.hf_folder(clip_model=True),
        lambda t: t.diffusers_folder(),
        lambda t: t.ckpt(),
        lambda t: t.ckpt(layout="old", dtype="fp16"),
        lambda t: t.ckpt(legacy=True),
    ],
    ids=["a1111-old", "fp16", "bf16", "bad-position-ids", "hf", "clipmodel", "diffusers", "ckpt",
         "ckpt-old-fp16", "ckpt-legacy"],
)
def test_every_layout_gives_identical_embeddings(tiny_models, maker) -> None:  # noqa: ANN001
    expected = _embed(tiny_models.single_file(), TAGS, dtype="fp32")
    got = _embed(maker(tiny_models), TAGS, dtype="fp32")
    assert np.array_equal(got, expected)


def test_hub_cache_layout_gives_identical_embeddings(
    tiny_models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    import tiny_models as tm

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    tm.build_hf_cache(tiny_models.weights, tmp_path / "hf", "stable-diffusion-v1-5/"
                      "stable-diffusion-v1-5")
    expected = _embed(tiny_models.single_file(), TAGS[:5], dtype="fp32")
    with open_embedder(EncoderSettings(use_cache=False, dtype="fp32")) as emb:  # default model
        assert np.array_equal(emb.embed(TAGS[:5]), expected)


def test_ckpt_inspection_matches_safetensors(tiny_models) -> None:  # noqa: ANN001
    from tagsmith.model.fingerprint import safetensors_fingerprint

    ins = inspect_pickle(resolve_source(str(tiny_models.ckpt())))
    assert ins.source.config == reference_config()
    single = resolve_source(str(tiny_models.single_file()))
    assert ins.fingerprint == safetensors_fingerprint(single)
    assert "weights_only=True" in ins.source.description


# -- pickles that would run code ----------------------------------------------------------------


def test_malicious_ckpt_is_refused_and_nothing_runs(tiny_models, tmp_path: Path) -> None:  # noqa: ANN001
    import tiny_models as tm

    marker = tmp_path / "pwned"
    evil = tm.save_malicious_ckpt(tiny_models.weights, tmp_path / "model.ckpt", marker)
    bare = tm.save_malicious_plain_pickle(tmp_path / "bare.pt", marker)
    for path in (evil, bare):
        with pytest.raises(UnsafeCheckpointError) as err:
            open_embedder(EncoderSettings(model=str(path)))
        assert "could run arbitrary code" in err.value.message
        assert re.search(r"references (builtins\.)?exec\b", err.value.message)
        with pytest.raises(UnsafeCheckpointError):
            torch_load_checkpoint(path)
    assert not marker.exists()

    # The control: fully unpickling the same file does run its code, so the trap is armed.
    torch.load(str(evil), weights_only=False)
    assert marker.read_text() == "code ran"


@pytest.mark.parametrize("what", ["truncated", "random"])
def test_damaged_ckpt_is_named(tiny_models, tmp_path: Path, what: str) -> None:  # noqa: ANN001
    import tiny_models as tm

    if what == "truncated":
        path = tm.save_truncated(tiny_models.ckpt(), tmp_path / "cut.ckpt", 0.6)
    else:
        path = tmp_path / "noise.ckpt"
        path.write_bytes(b"\x80\x04" + os.urandom(500))  # looks like a pickle, is not one
    with pytest.raises(UnsupportedModelError) as err:
        open_embedder(EncoderSettings(model=str(path)))
    assert "damaged" in err.value.message and str(path) in err.value.message


def test_ckpt_of_another_model_gets_the_same_sentences(tmp_path: Path) -> None:
    sd2 = {"state_dict": {"cond_stage_model.model.token_embedding.weight": torch.zeros(4, 1024)}}
    torch.save(sd2, tmp_path / "sd2.ckpt")
    with pytest.raises(UnsupportedModelError, match="SD 2.x checkpoint"):
        open_embedder(EncoderSettings(model=str(tmp_path / "sd2.ckpt")))


# -- device, dtype, laziness ----------------------------------------------------------------------


def test_device_and_dtype_selection() -> None:
    cpu = torch.device("cpu")
    assert select_dtype("auto", cpu) == torch.float32
    assert select_dtype("auto", torch.device("cuda")) == torch.float16
    assert select_dtype("bf16", cpu) == torch.bfloat16
    assert select_device("cpu") == cpu
    if not torch.cuda.is_available():
        assert select_device("auto").type in ("cpu", "mps")
        with pytest.raises(ModelError, match="sees no CUDA GPU"):
            select_device("cuda")
    with pytest.raises(UsageError):
        select_dtype("fp8", cpu)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_half_precision_on_cpu_is_close(tiny_models, dtype: str) -> None:  # noqa: ANN001
    full = _embed(tiny_models.single_file(), TAGS[:6], dtype="fp32")
    half = _embed(tiny_models.single_file(), TAGS[:6], dtype=dtype)
    cos = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cos.min() > 0.999


def test_token_embedding_table(tiny_models) -> None:  # noqa: ANN001
    want = tiny_models.weights["embeddings.token_embedding.weight"].numpy()
    for path in (tiny_models.single_file(dtype="bf16"), tiny_models.ckpt()):
        with open_embedder(EncoderSettings(model=str(path), use_cache=False)) as emb:
            table = emb.token_embedding_table()
            assert table.shape == (49408, 128) and table.dtype == np.float32
            assert np.array_equal(table, want)
    # An fp16 file's table stays fp16 (exactly the stored values; callers widen the rows).
    with open_embedder(EncoderSettings(model=str(tiny_models.single_file(dtype="fp16")),
                                       use_cache=False)) as emb:
        table = emb.token_embedding_table()
        assert table.dtype == np.float16
        assert np.array_equal(table, want.astype(np.float16))
    enc = load_text_encoder(resolve_source(str(tiny_models.single_file())), device="cpu")
    assert torch.equal(enc.token_embedding, torch.from_numpy(want))


def test_opening_a_model_does_not_import_torch(tiny_models) -> None:  # noqa: ANN001
    code = (
        "import sys; from tagsmith.model.embedding import EncoderSettings, open_embedder\n"
        f"e = open_embedder(EncoderSettings(model={str(tiny_models.single_file())!r}))\n"
        "t = e.token_embedding_table()\n"
        "print(e.fingerprint, e.dim, t.shape, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False", out.stdout


# -- batching ---------------------------------------------------------------------------------


def test_prefix_trees_hold_each_distinct_prefix_once() -> None:
    """Every sequence is exactly the tokens on its path; a batch has one node per distinct
    prefix of its sequences and at most ``budget`` nodes unless one sequence alone is longer."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from tagsmith.model.prefix_tree import prefix_trees

    seq = st.lists(st.integers(0, 5), min_size=1, max_size=8)  # few ids: many shared prefixes

    @settings(max_examples=300, deadline=None)
    @given(st.lists(seq, min_size=1, max_size=60), st.integers(1, 40))
    def check(sequences: list[list[int]], budget: int) -> None:
        seen: list[int] = []
        for tree in prefix_trees(sequences, budget):
            seen += tree.order
            members = [tuple(sequences[i]) for i in tree.order]
            distinct = {s[:n] for s in members for n in range(1, len(s) + 1)}
            assert len(tree.tokens) == len(distinct)
            assert len(tree.tokens) <= budget or len(tree.order) == 1
            for row, i in enumerate(tree.order):
                path = tree.path(row)
                assert tree.tokens[path].tolist() == sequences[i]
                assert tree.depths[path].tolist() == list(range(1, len(sequences[i]) + 1))
                assert tree.lengths[row] == len(sequences[i])
        assert sorted(seen) == list(range(len(sequences)))

    check()


def test_prefix_tree_shares_what_sorted_neighbours_share() -> None:
    from tagsmith.model.prefix_tree import prefix_trees

    # hand count: a; a b; a b c; a d; e  -> a, ab, abc, ad, e = 5 nodes for 11 tokens
    seqs = [[1, 2, 3], [5], [1, 2], [1, 4], [1], [1, 2, 3]]
    (tree,) = prefix_trees(seqs, 100)
    assert len(tree.tokens) == 5
    assert tree.starts == [0, 2, 4, 5]  # depth 1: a, e; depth 2: ab, ad; depth 3: abc
    with pytest.raises(ValueError, match="empty"):
        list(prefix_trees([[1], []], 10))


@pytest.mark.shared_data
def test_danbooru_sample_matches_padded_to_77(tiny_models, reference, danbooru_csv) -> None:  # noqa: ANN001
    import csv
    import random

    from tagsmith.text.tokenizer import normalize_tag

    with danbooru_csv.open(encoding="utf-8", newline="") as fh:
        rows = [r[0] for r in csv.reader(fh) if r]
    tags = [normalize_tag(t) for t in random.Random(3).sample(rows, 300)]
    tags += [normalize_tag(r) for r in rows if not r.isascii()][:10]  # ftfy-cleaned ones too
    states, spans, _ = _reference_states(reference, tags)
    expected = np.stack([states[i, a:b].mean(0).numpy() for i, (a, b) in enumerate(spans)])
    assert np.abs(_embed(tiny_models.single_file(), tags) - expected).max() <= 1e-4


# -- the numpy forward pass (small CPU jobs, no torch import) ----------------------------------


def test_numpy_encoder_token_states_and_info(tiny_models, reference) -> None:  # noqa: ANN001
    from tagsmith.model.encoder_np import NumpyTextEncoder

    states, spans, _ = _reference_states(reference, TAGS[:6])
    with open_embedder(EncoderSettings(model=str(tiny_models.single_file()),
                                       use_cache=False)) as emb:
        assert isinstance(emb.encoder(backend="numpy"), NumpyTextEncoder)
        per_token = emb.token_states(TAGS[:6])
        assert emb.model_info()["device"] == "cpu" and emb.model_info()["dtype"] == "fp32"
    for i, (a, b) in enumerate(spans):
        assert np.abs(per_token[i] - states[i, a:b].numpy()).max() <= 1e-5


def test_numpy_encoder_eos_and_fp16_weights(tiny_models, reference) -> None:  # noqa: ANN001
    _, _, out = _reference_states(reference, TAGS)
    with open_embedder(EncoderSettings(model=str(tiny_models.single_file()), use_cache=False,
                                       representation="eos")) as emb:
        emb.encoder(backend="numpy")
        got = emb.embed(TAGS)
    assert np.abs(got - out.pooler_output.numpy()).max() <= 1e-5
    # fp16 weights are widened to fp32: the same numbers the torch encoder computes from them
    half = str(tiny_models.hf_folder(dtype="fp16"))
    with open_embedder(EncoderSettings(model=half, use_cache=False)) as a:
        a.encoder(backend="numpy")
        np_vecs = a.embed(TAGS)
    with open_embedder(EncoderSettings(model=half, use_cache=False, device="cpu")) as b:
        b.encoder(backend="torch")
        torch_vecs = b.embed(TAGS)
    assert np.abs(np_vecs - torch_vecs).max() <= 1e-5


def test_large_job_moves_from_numpy_to_torch(tiny_models, monkeypatch) -> None:  # noqa: ANN001
    import tagsmith.model.encoder_np as enp

    with open_embedder(EncoderSettings(model=str(tiny_models.single_file()),
                                       use_cache=False)) as emb:
        emb.encoder(backend="numpy")
        small = emb.embed(TAGS[:3])
        monkeypatch.setattr(enp, "SMALL_JOB_POSITIONS", 4)
        big = emb.embed(TAGS)
        assert isinstance(emb.encoder(), ClipTextEncoder)
    np.testing.assert_allclose(big[:3], small, atol=1e-5)


def test_numpy_encoder_refuses_what_it_cannot_run(tiny_models) -> None:  # noqa: ANN001
    settings = EncoderSettings(model=str(tiny_models.ckpt()), use_cache=False)
    with open_embedder(settings) as emb, pytest.raises(UsageError, match="numpy encoder"):
        emb.encoder(backend="numpy")  # a pickle's tensors come from torch.load
    with open_embedder(EncoderSettings(model=str(tiny_models.single_file()), use_cache=False,
                                       dtype="fp16")) as emb:
        assert not emb._numpy_possible()


def test_small_cpu_job_never_imports_torch(tiny_models, tmp_path) -> None:  # noqa: ANN001
    """A one-off embed on the CPU runs the numpy forward pass: torch is never imported."""
    model = tiny_models.single_file()
    code = (
        "import sys\n"
        "from tagsmith.model.embedding import EncoderSettings, open_embedder\n"
        f"s = EncoderSettings(model={str(model)!r}, device='cpu', cache_dir={str(tmp_path)!r})\n"
        "with open_embedder(s) as e:\n"
        "    v = e.embed(['mayonnaise bottle', 'wine bottle'])\n"
        "print(v.shape, 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "False", out.stdout + out.stderr


def test_a_job_announced_as_large_starts_on_torch(tiny_models, monkeypatch) -> None:  # noqa: ANN001
    import tagsmith.model.encoder_np as enp

    monkeypatch.delitem(sys.modules, "torch")  # as in a fresh CLI process (restored after)
    with open_embedder(EncoderSettings(model=str(tiny_models.single_file()),
                                       use_cache=False, device="cpu")) as emb:
        assert emb._backend_for(emb._job_positions([[1, 2]]), None, False) == "numpy"
        emb.expect_positions(enp.SMALL_JOB_POSITIONS + 1)  # what score does before its chunks
        assert emb._backend_for(emb._job_positions([[1, 2]]), None, False) == "torch"


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_encode_refuses_what_does_not_fit(tiny_models, backend) -> None:  # noqa: ANN001
    with open_embedder(EncoderSettings(model=str(tiny_models.single_file()),
                                       use_cache=False)) as emb:
        enc = emb.encoder(backend=backend)
        red = load_tokenizer().encode("red")[0]
        prefix = [BOS_ID] + [red] * 70
        assert len(list(enc.encode([[red] * 6], prefix=prefix))) == 1  # 77 positions: fits
        with pytest.raises(UsageError, match="78 positions does not fit"):
            list(enc.encode([[red] * 7], prefix=prefix))
        with pytest.raises(ValueError, match="unknown pool"):
            list(enc.encode([[red]], prefix=[BOS_ID], pool="max"))


def test_small_gemms_run_on_one_blas_thread() -> None:
    from threadpoolctl import threadpool_info

    from tagsmith.model.encoder_np import ONE_THREAD_ROWS, blas_threads

    def blas_threads_now() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    before = blas_threads_now()
    with blas_threads(ONE_THREAD_ROWS - 1):
        assert blas_threads_now() == {1}
    assert blas_threads_now() == before
    with blas_threads(ONE_THREAD_ROWS):
        assert blas_threads_now() == before


# -- the GPU path's batching, run on the CPU ---------------------------------------------------


@pytest.mark.parametrize("clip_skip", [1, 2])
@pytest.mark.parametrize("context", ["", "1girl, solo, "])
def test_depth_buckets_and_device_pooling_match_clip(tiny_models, reference, clip_skip, context):  # noqa: ANN001, ANN201
    """What a GPU runs (attention over power-of-two depth buckets with masks, pooling on the
    device, trees pipelined) gives CLIPTextModel's numbers: tag means, EOS and token states."""
    long_tag = " ".join(["tiny", "red", "bow", "on", "a", "long", "braid"] * 5)  # ~35 tokens
    tags = [*TAGS, long_tag]
    states, spans, out = _reference_states(reference, tags, clip_skip, context)
    expected = np.stack([states[i, a:b].mean(0).numpy() for i, (a, b) in enumerate(spans)])
    settings = EncoderSettings(
        model=str(tiny_models.single_file()), clip_skip=clip_skip, use_cache=False,
        context=(context + "{}") if context else None, device="cpu",
    )
    with open_embedder(settings) as emb:
        enc = emb.encoder(backend="torch")
        enc.bucket_depths = enc.pool_on_device = True
        plan = enc._attention_plan(next(iter(_trees(emb, tags))), 1)
        assert len(plan) == 7 and any(m is not None for *_, m in plan)  # 1,2,4,8,16,32,64
        got = emb.embed(tags)
        per_token = emb.token_states(tags)
        seqs = emb._sequences(tags)
        prefix = [BOS_ID, *load_tokenizer().encode(context)] if context else [BOS_ID]
        small = np.zeros_like(got)
        for idx, vecs in enc.encode(seqs, prefix=prefix, clip_skip=clip_skip, token_budget=16):
            small[idx] = vecs  # many trees: the pipeline hands each back once
    assert np.abs(got - expected).max() <= 1e-5
    assert np.abs(small - expected).max() <= 1e-5
    for i, (a, b) in enumerate(spans):
        assert np.abs(per_token[i] - states[i, a:b].numpy()).max() <= 1e-5
    if not context and clip_skip == 1:
        eos = EncoderSettings(model=str(tiny_models.single_file()), use_cache=False,
                              device="cpu", representation="eos")
        with open_embedder(eos) as emb:
            enc = emb.encoder(backend="torch")
            enc.bucket_depths = enc.pool_on_device = True
            assert np.abs(emb.embed(tags) - out.pooler_output.numpy()).max() <= 1e-4


def _trees(emb, tags):  # noqa: ANN001, ANN202
    from tagsmith.model.prefix_tree import prefix_trees

    return prefix_trees(emb._sequences(tags), 10_000)
