"""suggest and trigger ranking on hand-built geometry (bag-of-tokens embedder: milliseconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fake_embedder import BagOfTokensEmbedder

from tagsmith.analysis.ranking import ScoreWeights, cosine_matrix
from tagsmith.analysis.suggest import SuggestOptions, suggest
from tagsmith.analysis.trigger import TriggerOptions, rank_triggers
from tagsmith.model.calibration import common_tags
from tagsmith.text.tokenizer import load_tokenizer

DIM = 64


def _unit(*pairs: tuple[int, float]) -> np.ndarray:
    v = np.zeros(DIM, dtype=np.float32)
    for i, x in pairs:
        v[i] = x
    return v / np.linalg.norm(v)


@pytest.fixture(scope="module")
def geometry_table() -> np.ndarray:
    """Tokens the tests talk about live in dims 0-7; every other token is random in dims 8+,
    so it is orthogonal to them and can never be the nearest known word by accident."""
    rng = np.random.default_rng(0)
    table = np.zeros((49408, DIM), dtype=np.float32)
    table[:, 8:] = rng.standard_normal((49408, DIM - 8)).astype(np.float32)
    tok = load_tokenizer()

    def put(piece: str, vec: np.ndarray) -> None:
        table[tok.token_to_id(piece)] = vec

    mayo = _unit((0, 1.0))
    bottle = _unit((1, 1.0))
    put("may", mayo)
    put("onnaise</w>", mayo)
    put("bottle</w>", bottle)
    put("wine</w>", _unit((1, 1.0), (2, 0.3)))  # "wine" reads as bottle: wine bottle ~ bottle
    put("water</w>", _unit((1, 1.0), (3, 0.3)))
    put("holding</w>", _unit((1, 0.6), (4, 1.0)))
    # container: the known word nearest to bottle in the token table, but its own thing.
    put("container</w>", _unit((1, 0.5), (5, 0.87)))
    put("-</w>", _unit((6, 1.0)))
    put("_</w>", _unit((7, 1.0)))
    return table


@pytest.fixture
def vocab_file(tmp_path):
    f = tmp_path / "danbooru.csv"
    f.write_text(
        "bottle,0,71684,\n"
        "holding_bottle,0,20214,\n"
        "water_bottle,0,11505,\n"
        "wine_bottle,0,6727,\"winebottle\"\n"
        "mayonnaise,0,526,\n"
        "mayonnaise_bottle,0,144,\n"
        "in_container,0,12022,\n",
        encoding="utf-8",
    )
    return f


def test_prefers_form_that_drops_bottle_and_keeps_mayonnaise(geometry_table, vocab_file):
    emb = BagOfTokensEmbedder(geometry_table)
    result = suggest("mayonnaise_bottle", SuggestOptions(vocab_path=vocab_file), embedder=emb)
    best = result.candidates[0]
    assert best.form == "mayonnaise container"
    assert "bottle" not in best.form and "mayonnaise" in best.form
    # The reason is built from the numbers: it names what was dropped and what it bought.
    baseline = next(c for c in result.candidates if c.form == "mayonnaise bottle")
    gain = baseline.similarity["bottle"] - best.similarity["bottle"]
    # A substitution swaps a word: it never "keeps" a word that was not in the tag.
    assert best.reason.startswith("swaps 'bottle' for 'container':")
    assert "keeps" not in best.reason
    assert f"{gain:.2f} less like 'bottle'" in best.reason
    # Hand computation of the headline numbers: tag vector = mean of token vectors; the
    # similarity is the cosine after subtracting the mean vector of the reference tags (the
    # shipped common tags: this vocabulary is too small to be a reference).
    t = geometry_table
    tok = load_tokenizer()
    ref_mean = np.mean([t[tok.encode(x)].mean(axis=0) for x in common_tags()], axis=0)
    ids = {p: tok.token_to_id(p) for p in ("may", "onnaise</w>", "bottle</w>", "container</w>")}
    mb = (t[ids["may"]] + t[ids["onnaise</w>"]] + t[ids["bottle</w>"]]) / 3 - ref_mean
    mc = (t[ids["may"]] + t[ids["onnaise</w>"]] + t[ids["container</w>"]]) / 3 - ref_mean
    bottle = t[ids["bottle</w>"]] - ref_mean
    assert baseline.similarity["bottle"] == pytest.approx(
        float(cosine_matrix(mb[None], bottle[None])[0, 0]), abs=1e-5)
    assert best.similarity["bottle"] == pytest.approx(
        float(cosine_matrix(mc[None], bottle[None])[0, 0]), abs=1e-5)
    # ... and the plain cosine rides along as raw.
    assert best.raw_similarity["bottle"] == pytest.approx(
        float(cosine_matrix((mc + ref_mean)[None], (bottle + ref_mean)[None])[0, 0]), abs=1e-5)
    # Score = fidelity - leakage + 0.05 * reuse - 0.01 * tokens (default weights).
    d = best.detail
    assert best.score == pytest.approx(d.fidelity - d.leakage + 0.05 * d.reuse - 0.01 * 3)


def test_neighbours_roles_sources_and_counts(geometry_table, vocab_file):
    emb = BagOfTokensEmbedder(geometry_table)
    result = suggest("mayonnaise bottle",
                     SuggestOptions(vocab_path=vocab_file, avoid=["hijikata toushirou"],
                                    neighbors=["glass bottle"], nearest=0),
                     embedder=emb)
    by_tag = {n.tag: n for n in result.neighbors}
    assert by_tag["mayonnaise"].role == "keep" and by_tag["mayonnaise"].source == "part"
    assert by_tag["mayonnaise"].count == 526
    assert by_tag["bottle"].role == "leak" and by_tag["bottle"].count == 71684
    assert by_tag["hijikata toushirou"].role == "avoid"
    assert by_tag["glass bottle"].source == "user"
    # Tags sharing the known word "bottle", most posts first (3 per token by default).
    vocab_tags = [n.tag for n in result.neighbors if n.source == "vocab"]
    assert vocab_tags[:3] == ["holding bottle", "water bottle", "wine bottle"]
    # "container" (from the substitution) brings its own most frequent tag.
    assert "in container" in vocab_tags


def test_nearest_vocabulary_tags_found_by_encoder(geometry_table, vocab_file):
    emb = BagOfTokensEmbedder(geometry_table)
    result = suggest("mayonnaise bottle", SuggestOptions(vocab_path=vocab_file,
                                                         vocab_per_token=0, nearest=2),
                     embedder=emb)
    nearest = [n.tag for n in result.neighbors if n.source == "nearest"]
    assert len(nearest) == 2
    # Both are bottle tags (they share bottle's direction); the tag itself is excluded.
    assert all("bottle" in t for t in nearest) and "mayonnaise bottle" not in nearest


def test_avoid_collision_lowers_score(geometry_table):
    emb = BagOfTokensEmbedder(geometry_table)
    plain = suggest("mayonnaise bottle", SuggestOptions(nearest=0), embedder=emb)
    avoided = suggest("mayonnaise bottle", SuggestOptions(nearest=0, avoid=["wine bottle"]),
                      embedder=emb)
    p = {c.form: c for c in plain.candidates}
    a = {c.form: c for c in avoided.candidates}
    form = "mayonnaise bottle"
    assert a[form].detail.avoid == pytest.approx(a[form].similarity["wine bottle"])
    assert a[form].score == pytest.approx(p[form].score - a[form].detail.avoid, abs=1e-5)


def test_weights_change_ranking(geometry_table):
    emb = BagOfTokensEmbedder(geometry_table)
    no_leak = suggest("mayonnaise bottle",
                      SuggestOptions(nearest=0, weights=ScoreWeights(leakage=0.0, tokens=0.0,
                                                                     reuse=0.0)),
                      embedder=emb)
    # Without the leakage term, fidelity to "mayonnaise" alone decides: spaced forms tie at the
    # top (same mayo share), hyphen/underscore forms dilute it with the '-' or '_' token.
    top = no_leak.candidates[0]
    assert top.detail.fidelity == pytest.approx(max(c.detail.fidelity
                                                    for c in no_leak.candidates))


def test_json_contract(geometry_table, vocab_file):
    emb = BagOfTokensEmbedder(geometry_table)
    d = suggest("mayonnaise bottle", SuggestOptions(vocab_path=vocab_file, nearest=1),
                embedder=emb).to_dict()
    json.dumps(d)  # serialisable
    assert d["tag"] == "mayonnaise bottle"
    assert d["model"]["fingerprint"] == "fake0000"
    assert {"tag", "source", "count"} <= set(d["neighbors"][0])
    assert {n["source"] for n in d["neighbors"]} <= {"part", "vocab", "user", "nearest"}
    c = d["candidates"][0]
    assert {"form", "tokens", "n_tokens", "known", "score", "similarity", "reason"} <= set(c)
    assert set(c["similarity"]) == {n["tag"] for n in d["neighbors"]}
    scores = [c["score"] for c in d["candidates"]]
    assert scores == sorted(scores, reverse=True)


def test_without_model_candidates_and_tokens_only():
    result = suggest("mayonnaise_bottle", SuggestOptions(), notices=["no model"])
    assert result.model is None and result.recommended is None
    forms = [c.form for c in result.candidates]
    assert forms == ["mayonnaise bottle", "mayonnaise-bottle", "mayonnaise_bottle",
                     "mayonnaisebottle"]
    under = result.candidates[2].candidate
    assert under.tokens == ("may", "onnaise</w>", "_</w>", "bottle</w>")  # `_` kept literally
    assert all(c.score is None for c in result.candidates)
    assert "splits mayonnaise into may+onnaise" in result.candidates[0].reason
    assert result.to_dict()["model"] is None


def test_trigger_family_separation_and_held_out(geometry_table):
    emb = BagOfTokensEmbedder(geometry_table)
    result = rank_triggers("cross tattoo", TriggerOptions(parts=["arm", "chest", "legs"],
                                                         held_out="back", rare=2),
                           embedder=emb)
    fam = next(f for f in result.families if f.stem == "cross")
    assert [m.form for m in fam.members] == ["cross-arm", "cross-chest", "cross-legs"]
    assert fam.held_out is not None and fam.held_out.form == "cross-back"
    # Centred on the shipped common tags (no vocabulary given).
    vecs = emb.embed([m.candidate.text for m in fam.members]) - emb.embed(common_tags()).mean(0)
    sim = cosine_matrix(vecs, vecs)
    np.fill_diagonal(sim, -1)
    assert fam.separation == pytest.approx(1 - sim.max(), abs=1e-5)
    held = emb.embed(["cross-back"]) - emb.embed(common_tags()).mean(0)
    assert fam.held_out_similarity == pytest.approx(
        float(cosine_matrix(held, vecs.mean(axis=0)[None])[0, 0]), abs=1e-5)
    assert "members" in fam.reason and "held-out 'cross-back'" in fam.reason
    assert any(f.kind == "rare token" for f in result.families)


def test_trigger_penalises_avoid_collision(geometry_table):
    # A concept whose candidate "bottle" family collides with the avoided "wine bottle".
    emb = BagOfTokensEmbedder(geometry_table)
    result = rank_triggers("mayonnaise bottle", TriggerOptions(avoid=["wine bottle"], rare=0),
                           embedder=emb)
    scores = {f.stem: f for f in result.families}
    assert scores["bottle"].members[0].detail.avoid > 0.9
    assert result.families[0].stem != "bottle"


def test_nearest_shortlist_pool_is_cached_per_model(geometry_table, vocab_file, tmp_path):
    import tagsmith.analysis.concepts as concepts
    from tagsmith.analysis.concepts import nearest_shortlist, static_vectors
    from tagsmith.text.vocab_index import load_vocab_index

    index = load_vocab_index(vocab_file, cache_dir=tmp_path)
    assert index.cache_file is not None
    first = nearest_shortlist("mayonnaise bottle", index, geometry_table, exclude=set(),
                              fingerprint="abc123")
    (pool,) = index.cache_file.parent.glob("*.pool-abc123-*.npy")
    order = np.argsort(-index.counts, kind="stable")[: len(index)]
    want = static_vectors(index, order, geometry_table)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(np.load(pool), want, rtol=1e-5, atol=1e-6)
    # in the same process a repeat is answered from the ranked rows, without the pool
    pool.unlink()
    longer = nearest_shortlist("mayonnaise bottle", index, geometry_table, exclude={
        index.texts[first[0]]}, fingerprint="abc123", size=len(first))
    assert longer[: len(first) - 1] == first[1:] and not pool.exists()
    # a new process reads the file: the same shortlist, and a damaged file is recomputed
    concepts._RANKED.clear()
    assert nearest_shortlist("mayonnaise bottle", index, geometry_table, exclude=set(),
                             fingerprint="abc123") == first
    concepts._RANKED.clear()
    pool.write_bytes(b"not numpy")
    assert nearest_shortlist("mayonnaise bottle", index, geometry_table, exclude=set(),
                             fingerprint="abc123") == first
    assert np.load(pool).shape[0] == len(order)


def test_trigger_nearest_tags_in_one_encoder_pass(geometry_table, vocab_file, monkeypatch):
    """trigger embeds its members, every family's shortlist and the neighbours in one pass:
    the same neighbours and scores as asking family by family."""
    import tagsmith.analysis.concepts as concepts

    def ranked():
        emb = BagOfTokensEmbedder(geometry_table)
        res = rank_triggers("mayonnaise bottle", TriggerOptions(vocab_path=vocab_file, rare=2,
                                                               nearest=2), embedder=emb)
        return res, emb.calls

    res, calls = ranked()
    assert len(calls) == 2  # the model's baseline (its reference tags), then everything else

    class OneByOne:  # the old behaviour: every ask is its own encoder pass
        def __init__(self, embedder, texts):  # noqa: ANN001
            self.embed, self.fingerprint = embedder.embed, None

    monkeypatch.setattr(concepts, "PrefetchedVectors", OneByOne)
    old, old_calls = ranked()
    assert len(old_calls) > 3
    assert [(n.tag, n.source, n.role) for n in res.neighbors] == [
        (n.tag, n.source, n.role) for n in old.neighbors]
    assert any(n.source == "nearest" for n in res.neighbors)
    assert [f.to_dict() for f in res.families] == [f.to_dict() for f in old.families]
