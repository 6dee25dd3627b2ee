"""The model baseline: centred cosine recovers planted structure that raw cosine hides,
percentiles of random pairs are uniform, nothing calibrated moves when every state shifts by
one vector, and the words that read the numbers out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fake_embedder import BagOfTokensEmbedder, random_table
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import kstest, spearmanr

from tagsmith.analysis.suggest import SuggestOptions, suggest
from tagsmith.model.calibration import (
    build_baseline,
    common_tags,
    model_baseline,
    ordinal,
    percentile_label,
    top_share,
    vocabulary_reference,
)

N_TAGS, LATENT, DIM = 600, 24, 64


class PlantedEmbedder:
    """Tag i's state = planted vector z_i + a large offset shared by every state + one rogue
    dimension (big value, small spread): the anisotropy real encoder states show."""

    def __init__(self, seed: int = 0, shift: np.ndarray | None = None) -> None:
        rng = np.random.default_rng(seed)
        centres = rng.standard_normal((12, LATENT)) * 1.5
        z = centres[rng.integers(0, 12, N_TAGS)] + rng.standard_normal((N_TAGS, LATENT))
        self.planted = np.zeros((N_TAGS, DIM))
        self.planted[:, :LATENT] = z
        offset = rng.standard_normal(DIM)
        offset *= 60.0 / np.linalg.norm(offset)
        states = self.planted + offset
        states[:, DIM - 1] += 120.0 + 0.3 * rng.standard_normal(N_TAGS)  # the rogue dimension
        if shift is not None:
            states = states + shift
        self.states = states.astype(np.float32)
        self.texts = [f"tag{i}" for i in range(N_TAGS)]
        self.row = {t: i for i, t in enumerate(self.texts)}
        self.calls: list[list[str]] = []
        self.fingerprint = f"planted{seed}"

    def embed(self, texts, *, progress=None):  # noqa: ANN001, ANN201
        self.calls.append(list(texts))
        return self.states[[self.row[t] for t in texts]]


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _pairs(n: int, m: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, m)
    return i, (i + rng.integers(1, n, m)) % n


def test_centred_cosine_recovers_planted_order() -> None:
    emb = PlantedEmbedder()
    base = build_baseline(emb.states[:400])  # the reference: 400 of the 600 tags
    i, j = _pairs(N_TAGS, 3000, seed=5)
    raw = np.einsum("ij,ij->i", _unit(emb.states[i]), _unit(emb.states[j]))
    planted = np.einsum("ij,ij->i", _unit(emb.planted[i]), _unit(emb.planted[j]))
    centred = np.einsum("ij,ij->i", base.unit(emb.states[i]), base.unit(emb.states[j]))
    # Raw cosines all sit in a narrow band near 1 and hardly follow the planted order ...
    assert raw.min() > 0.95
    # ... the centred cosine recovers it.
    assert spearmanr(centred, planted).statistic > 0.9
    assert spearmanr(centred, planted).statistic > spearmanr(raw, planted).statistic


def test_percentiles_of_random_pairs_are_uniform() -> None:
    emb = PlantedEmbedder(seed=1)
    base = build_baseline(emb.states, pairs=20_000)
    # Fresh random pairs of the same tags, not the ones the baseline sampled.
    i, j = _pairs(N_TAGS, 4000, seed=99)
    sims = np.einsum("ij,ij->i", base.unit(emb.states[i]), base.unit(emb.states[j]))
    pct = base.percentile(sims)
    assert pct.min() >= 0 and pct.max() <= 100
    # Kolmogorov-Smirnov against uniform on [0, 100]: the statistic stays within what 4,000
    # draws and a 20,000-pair baseline allow (1% level of the two-sample bound).
    d = kstest(pct / 100.0, "uniform").statistic
    assert d < 1.63 * np.sqrt(1 / 4000 + 1 / 20_000)


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    scale=st.floats(0.0, 200.0),
)
def test_adding_one_vector_to_every_state_changes_nothing(seed: int, scale: float) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((80, 16)).astype(np.float32)
    q = rng.standard_normal((7, 16)).astype(np.float32)
    shift = (rng.standard_normal(16) * scale).astype(np.float32)
    a, b = build_baseline(x), build_baseline(x + shift)
    s_a = a.similarity(q, x[:9])
    s_b = b.similarity(q + shift, x[:9] + shift)
    # float32 sums of large shifted values lose a few bits; well inside any shown decimal.
    tol = 1e-5 * (1 + scale)
    np.testing.assert_allclose(s_a, s_b, atol=tol)
    np.testing.assert_allclose(a.pair_similarities, b.pair_similarities, atol=tol)
    assert a.tie == pytest.approx(b.tie, abs=tol)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1.5, 1.5), min_size=2, max_size=40), st.integers(0, 1000))
def test_percentiles_are_monotone(values: list[float], seed: int) -> None:
    x = np.random.default_rng(seed).standard_normal((30, 8))
    base = build_baseline(x)
    v = np.sort(np.asarray(values))
    p = base.percentile(v)
    assert np.all(np.diff(p) >= 0)
    assert p[0] >= 0 and p[-1] <= 100
    assert base.percentile(-2.0) == 0.0 and base.percentile(2.0) == 100.0


def test_suggest_is_unchanged_by_a_common_offset() -> None:
    """End to end: the same shift on every token (so on every tag vector) leaves every
    similarity, percentile, score and reason of suggest as it was; raw cosines do move."""
    table = random_table(32, seed=4)
    shift = np.random.default_rng(5).standard_normal(32).astype(np.float32) * 3
    opts = SuggestOptions(neighbors=["wine bottle", "water bottle"], candidates=["mayo jar"])
    plain = suggest("mayonnaise bottle", opts, embedder=BagOfTokensEmbedder(table))
    moved = suggest("mayonnaise bottle", opts, embedder=BagOfTokensEmbedder(table + shift))
    p = {c.form: c for c in plain.candidates}
    m = {c.form: c for c in moved.candidates}
    same = [f for f in p if f in m]  # substitutes come from the raw token table: may differ
    assert {"mayonnaise bottle", "mayonnaise-bottle", "mayonnaisebottle", "mayo jar"} <= set(same)
    assert sorted(same, key=lambda f: -p[f].score) == sorted(same, key=lambda f: -m[f].score)
    for a, b in ((p[f], m[f]) for f in same):
        assert a.similarity == pytest.approx(b.similarity, abs=1e-4)
        assert a.percentile == pytest.approx(b.percentile, abs=0.2)
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert a.reason == b.reason
    raw_gap = max(abs(a.raw_similarity[k] - b.raw_similarity[k])
                  for a, b in ((p[f], m[f]) for f in same) for k in a.raw_similarity)
    assert raw_gap > 0.05


# -- built once, cached, keyed ------------------------------------------------------------


def test_baseline_is_cached_and_keyed(tmp_path: Path) -> None:
    emb = PlantedEmbedder(seed=2)
    ref = emb.texts[:300]
    first = model_baseline(emb, ref, cache_dir=tmp_path)
    assert emb.calls == [ref]  # one embedding pass over the reference set
    again = model_baseline(emb, ref, cache_dir=tmp_path)
    assert len(emb.calls) == 1  # read from the cache
    np.testing.assert_array_equal(first.mean, again.mean)
    np.testing.assert_array_equal(first.pair_similarities, again.pair_similarities)
    assert list((tmp_path / "baselines").glob("*.npz"))
    # Another model, or another reference set, is another baseline.
    other = PlantedEmbedder(seed=3)
    model_baseline(other, ref, cache_dir=tmp_path)
    model_baseline(emb, emb.texts[:200], cache_dir=tmp_path)
    assert len(other.calls) == 1 and len(emb.calls) == 2
    assert len(list((tmp_path / "baselines").glob("*.npz"))) == 3
    # A damaged file is rebuilt, not trusted.
    for f in (tmp_path / "baselines").glob("*.npz"):
        f.write_bytes(b"not a baseline")
    model_baseline(emb, ref, cache_dir=tmp_path)
    assert len(emb.calls) == 3


def test_real_embedder_baseline_follows_clip_skip(tiny_model: Path) -> None:
    from tagsmith.model.embedding import EncoderSettings, open_embedder

    ref = common_tags()[:40]
    with open_embedder(EncoderSettings(model=str(tiny_model))) as e1, \
            open_embedder(EncoderSettings(model=str(tiny_model), clip_skip=2)) as e2:
        b1, b2 = model_baseline(e1, ref), model_baseline(e2, ref)
        v = e1.embed(ref)
        assert e1.cache_dir is not None
    np.testing.assert_allclose(b1.mean, v.mean(axis=0), atol=1e-6)
    assert not np.allclose(b1.mean, b2.mean)
    assert len(list((e1.cache_dir / "baselines").glob("*.npz"))) == 2


def test_per_encoder_baselines_for_concatenated_vectors() -> None:
    """SDXL-style vectors (two encoders side by side) also get one baseline per encoder."""
    rng = np.random.default_rng(0)
    x = np.hstack([rng.standard_normal((50, 6)) + 5, rng.standard_normal((50, 10)) - 3])
    b = build_baseline(x, slices={"clip_l": (0, 6), "clip_g": (6, 16)})
    np.testing.assert_allclose(b.encoder("clip_l").mean, x[:, :6].mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(b.encoder("clip_g").mean, x[:, 6:].mean(axis=0), atol=1e-5)
    assert set(b.summary()["encoders"]) == {"clip_l", "clip_g"}


def test_per_encoder_baselines_are_cached_too(tmp_path: Path) -> None:
    class TwoEncoders(PlantedEmbedder):
        def similarity_parts(self):  # noqa: ANN202 - as TagEmbedder names SDXL's parts
            return {"clip_l": slice(0, 24), "clip_g": slice(24, DIM)}

    emb = TwoEncoders(seed=4)
    built = model_baseline(emb, emb.texts[:100], cache_dir=tmp_path)
    read = model_baseline(emb, emb.texts[:100], cache_dir=tmp_path)
    assert len(emb.calls) == 1 and set(read.encoders) == {"clip_l", "clip_g"}
    assert read.slices == {"clip_l": (0, 24), "clip_g": (24, DIM)}
    for k in ("clip_l", "clip_g"):
        np.testing.assert_array_equal(built.encoder(k).mean, read.encoder(k).mean)
        np.testing.assert_array_equal(built.encoder(k).pair_similarities,
                                      read.encoder(k).pair_similarities)


def test_vocabulary_reference_is_the_most_frequent_tags() -> None:
    texts = [f"t{i}" for i in range(30)]
    counts = np.arange(30)
    assert vocabulary_reference(texts, counts, n=3) == ["t29", "t28", "t27"]
    assert vocabulary_reference(texts, -np.ones(30)) == common_tags()  # no counts
    assert vocabulary_reference(texts[:5], counts[:5]) == common_tags()  # too few


# -- words --------------------------------------------------------------------------------


class _TwinEmbedder(BagOfTokensEmbedder):
    """The hyphenated form lands (almost) exactly where the tag itself does."""

    def embed(self, texts, *, progress=None):  # noqa: ANN001, ANN201
        out = super().embed(texts)
        same = super().embed(["mayonnaise bottle"])[0]
        for i, t in enumerate(texts):
            if t == "mayonnaise-bottle":
                out[i] = same * (1 + 1e-4)
        return out


def test_reasons_call_no_change_a_tie() -> None:
    emb = _TwinEmbedder(random_table(32, seed=8))
    result = suggest("mayonnaise bottle", SuggestOptions(neighbors=["wine bottle"]),
                     embedder=emb)
    hyphen = next(c for c in result.candidates if c.form == "mayonnaise-bottle")
    assert "ties the tag on" in hyphen.reason
    for c in result.candidates:
        assert "0.00 less like" not in c.reason and "0.00 more like" not in c.reason
        assert "top 0%" not in c.reason
        # A form only keeps or drops words the tag has; a substitution says what it swaps.
        if c.candidate.replacement:
            assert f"swaps '{c.candidate.replaced}' for '{c.candidate.replacement}'" in c.reason
        assert "keeps" not in c.reason


@pytest.mark.parametrize(("n", "word"), [
    (1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"), (13, "13th"),
    (21, "21st"), (22, "22nd"), (23, "23rd"), (81, "81st"), (92, "92nd"), (111, "111th"),
    (0, "0th"),
])
def test_ordinals(n: int, word: str) -> None:
    assert ordinal(n) == word


def test_percentile_words_never_say_top_zero() -> None:
    assert percentile_label(81.4) == "81st pct"
    assert percentile_label(None) == ""
    assert top_share(99.99) == "above every random pair"
    assert top_share(99.6) == "top 0.4% of random pairs"
    assert top_share(97.2, short=True) == "top 3%"
    assert top_share(20.0) == "below the median pair"
    for p in np.linspace(0, 100, 1001):
        assert "top 0%" not in top_share(float(p)) and "top 0.0%" not in top_share(float(p))


# -- the plot and explore read the calibrated numbers -----------------------------------------


def test_plot_colours_by_role_around_the_baseline(tmp_path: Path) -> None:
    from tagsmith.analysis.plot import plot_similarity, role_signed

    m = np.array([[0.8, 0.8, 0.8], [-0.1, -0.1, np.nan]])
    good = role_signed(m, ["keep", "leak", "avoid"], centre=-0.1)
    # High on keep helps (green, > 0); high on leak or avoid hurts (red, < 0); the typical
    # random pair is the neutral middle.
    assert good[0, 0] == pytest.approx(0.9) and good[0, 1] == pytest.approx(-0.9)
    assert good[0, 2] == pytest.approx(-0.9) and good[1, 0] == 0 and good[1, 1] == 0
    assert np.isnan(good[1, 2])
    out = plot_similarity(tmp_path / "m.png", ["a", "b"], ["k", "l", "v"], m, title="t",
                          col_roles=["keep", "leak", "avoid"], row_scores=[0.5, None],
                          centre=-0.1)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_explore_filters_on_percentiles(tmp_path: Path) -> None:
    from tagsmith.analysis.score import score_vocabulary
    from tagsmith.text.vocab import read_vocabulary
    from tagsmith.tui.loaders import score_table
    from tagsmith.tui.table import filter_mask, parse_filter

    vocab = tmp_path / "v.csv"
    vocab.write_text("".join(f"{t},0,{1000 - i},\n" for i, t in enumerate(
        ["bottle", "wine_bottle", "water_bottle", "holding_bottle", "long_hair", "short_hair",
         "hair_ribbon", "red_hair", "blue_eyes", "red_eyes", "cross_tattoo", "tattoo"])),
        encoding="utf-8")
    rows = score_vocabulary(read_vocabulary(vocab), BagOfTokensEmbedder(random_table(16, 2)),
                            k=2).rows
    table = score_table(rows, "v.csv")
    assert {"leak_percentile", "nearest_percentile"} <= {c.key for c in table.columns}
    f = parse_filter("leakpct>50", table)
    assert not f.errors and not f.lookalikes and f.conditions
    mask = filter_mask(f, table, lambda: np.zeros(len(rows), dtype=bool))
    want = {r.text for r in rows if r.leak_percentile is not None and r.leak_percentile > 50}
    got = {t for t, keep in zip(table.values["tag"], mask) if keep}
    assert got == want and want


def test_each_encoder_similarity_is_centred_on_its_own_baseline() -> None:
    class TwoPart(BagOfTokensEmbedder):
        def similarity_parts(self):  # noqa: ANN202 - as TagEmbedder names SDXL's parts
            return {"l": slice(0, 12), "g": slice(12, 32)}

    table = random_table(32, seed=6) + 2.0  # a common offset, so centring matters
    emb = TwoPart(table)
    result = suggest("mayonnaise bottle", SuggestOptions(neighbors=["wine bottle"]), embedder=emb)
    rc = next(c for c in result.candidates if c.form == "mayonnaise bottle")
    ref = emb.embed(common_tags())
    a, b = emb.embed(["mayonnaise bottle", "wine bottle"])
    for enc, sl in (("l", slice(0, 12)), ("g", slice(12, 32))):
        mean = ref[:, sl].mean(axis=0)
        x, y = a[sl] - mean, b[sl] - mean
        want = float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))
        assert rc.similarity_by_encoder[enc]["wine bottle"] == pytest.approx(want, abs=1e-5)


# -- an adapter's baseline: estimated from the control tags, the base model as control --------


class AdaptedEmbedder(PlantedEmbedder):
    """A "LoRA" over a PlantedEmbedder: every state goes through ``change`` (a LoRA moves the
    whole space a little and some concepts a lot); ``adapter_base()`` is the model without it."""

    def __init__(self, base: PlantedEmbedder, change) -> None:  # noqa: ANN001
        self.base = base
        self.states = change(base.states).astype(np.float32)
        self.texts, self.row = base.texts, base.row
        self.calls = []
        self.fingerprint = base.fingerprint + "+lora"

    def adapter_base(self) -> PlantedEmbedder:
        return self.base


def _lora_like(seed: int, strength: float):  # noqa: ANN202
    """A low-rank change of every state plus a strong pull of one planted cluster."""
    rng = np.random.default_rng(seed)
    up, down = rng.standard_normal((DIM, 4)), rng.standard_normal((4, DIM))
    delta = strength * (up @ down) / DIM
    pull = strength * 3.0 * rng.standard_normal(DIM)

    def change(x: np.ndarray) -> np.ndarray:
        out = x + x @ delta.T
        out[x[:, 0] > 1.5] += pull  # the concept the LoRA was trained on
        return out

    return change


def _errors(est, exact, states: np.ndarray) -> tuple[float, float]:  # noqa: ANN001
    """(worst percentile error at the exact 50/90/99% quantiles, mean centred-cosine error of
    random pairs) of ``est`` against ``exact``."""
    probe = np.quantile(exact.pair_similarities, [0.5, 0.9, 0.99])
    pct = float(np.abs(est.percentile(probe) - exact.percentile(probe)).max())
    i, j = _pairs(len(states), 4000, seed=9)
    sim = np.einsum("ij,ij->i", est.unit(states[i]), est.unit(states[j]))
    want = np.einsum("ij,ij->i", exact.unit(states[i]), exact.unit(states[j]))
    return pct, float(np.abs(sim - want).mean())


@pytest.mark.parametrize("strength", [0.3, 1.0])
def test_adapter_baseline_estimates_the_full_pass_from_the_control_tags(strength: float) -> None:
    from tagsmith.model.calibration import CONTROL_TAGS

    base = PlantedEmbedder(seed=6)
    lora = AdaptedEmbedder(base, _lora_like(1, strength))
    ref = base.texts[:500]
    est = model_baseline(lora, ref)
    assert [len(c) for c in lora.calls] == [CONTROL_TAGS]  # never a pass over all 500
    assert base.calls == [ref]  # the base's own baseline: one full pass
    assert est.estimated_from == CONTROL_TAGS and est.n_reference == 500
    assert "estimated with the LoRA from 96 of them" in est.describe()
    assert est.summary()["estimated_from"] == CONTROL_TAGS
    exact = build_baseline(lora.states[:500])
    pct, sim = _errors(est, exact, lora.states)
    assert pct < 2.0 and sim < exact.tie / 3
    # Far better than reading the LoRA's numbers against the base's baseline: the estimate
    # really follows what the LoRA changed.
    naive_pct, naive_sim = _errors(build_baseline(base.states[:500]), exact, lora.states)
    assert sim < naive_sim / 3


def test_adapter_baseline_is_exact_when_nothing_or_everything_moves_alike() -> None:
    base = PlantedEmbedder(seed=7)
    ref = base.texts[:300]
    same = model_baseline(AdaptedEmbedder(base, lambda x: x), ref)
    plain = model_baseline(base, ref)
    np.testing.assert_allclose(same.mean, plain.mean, atol=1e-5)
    np.testing.assert_allclose(same.pair_similarities, plain.pair_similarities, atol=1e-6)
    # Every state shifted by one vector: the centred space is the base's, exactly.
    c = np.linspace(-30, 30, DIM).astype(np.float32)
    shifted = model_baseline(AdaptedEmbedder(base, lambda x: x + c), ref)
    np.testing.assert_allclose(shifted.mean, plain.mean + c, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(shifted.pair_similarities, plain.pair_similarities, atol=1e-5)


def test_adapter_baseline_is_cached_under_its_own_key(tmp_path: Path) -> None:
    class TwoEncoders(AdaptedEmbedder):
        def similarity_parts(self):  # noqa: ANN202
            return {"clip_l": slice(0, 12), "clip_g": slice(12, DIM)}

    class TwoEncoderBase(PlantedEmbedder):
        def similarity_parts(self):  # noqa: ANN202
            return {"clip_l": slice(0, 12), "clip_g": slice(12, DIM)}

    base = TwoEncoderBase(seed=8)
    lora = TwoEncoders(base, _lora_like(2, 0.5))
    ref = base.texts[:400]
    built = model_baseline(lora, ref, cache_dir=tmp_path)
    assert len(list((tmp_path / "baselines").glob("*.npz"))) == 2  # the base's and the LoRA's
    again = model_baseline(TwoEncoders(base, _lora_like(2, 0.5)), ref, cache_dir=tmp_path)
    assert len(base.calls) == 1 and len(lora.calls) == 1  # both read back
    assert again.estimated_from == built.estimated_from > 0
    np.testing.assert_array_equal(again.pair_similarities, built.pair_similarities)
    for k in ("clip_l", "clip_g"):  # each encoder's baseline is estimated as well
        exact = build_baseline(lora.states[:400, slice(*built.slices[k])])
        pct, sim = _errors(again.encoder(k), exact, lora.states[:, slice(*built.slices[k])])
        assert again.encoder(k).estimated_from > 0 and pct < 3.0 and sim < exact.tie / 2


def test_a_real_lora_embedder_estimates_its_baseline(tmp_path: Path, tiny_models) -> None:  # noqa: ANN001
    from lora_fixtures import build_lora, save_lora_file

    from tagsmith.model.calibration import CONTROL_TAGS
    from tagsmith.model.embedding import EncoderSettings, open_embedder
    from tagsmith.model.lora import LoraSpec

    model = tiny_models.single_file()
    lora = save_lora_file(tmp_path / "l.safetensors", build_lora("lora", tiny_models.weights,
                                                                 seed=3, rank=4))
    ref = common_tags()
    settings = EncoderSettings(model=str(model), cache_dir=tmp_path / "cache", device="cpu",
                               loras=(LoraSpec(lora, 2.0),))
    with open_embedder(settings) as emb:
        est = model_baseline(emb, ref)
        assert emb.adapter_base() is emb.adapter_base()  # one base model, shared
        base = model_baseline(emb.adapter_base(), ref)  # cached by the estimate
        exact = build_baseline(emb.embed(ref))
        states = emb.embed(ref)
        base_states = emb.adapter_base().embed(ref)
    assert est.estimated_from == CONTROL_TAGS and base.estimated_from == 0
    assert np.abs(states - base_states).max() > 1e-3  # the LoRA moves the vectors
    pct, sim = _errors(est, exact, states)
    naive_pct, naive_sim = _errors(base, exact, states)
    assert pct < 3.0 and sim < exact.tie / 3 and sim < naive_sim
