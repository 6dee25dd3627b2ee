"""`tagsmith score`: the library, the score file formats, and the command."""

from __future__ import annotations

import builtins
import json
import math
from pathlib import Path

import numpy as np
import pytest
from fake_embedder import BagOfTokensEmbedder, random_table

from tagsmith.analysis.score import (
    COLUMNS,
    ScoreNeighbor,
    ScoreRow,
    _shares_token,
    dominance,
    embed_in_chunks,
    head_token_index,
    parse_categories,
    riskiest,
    score_vocabulary,
    select_entries,
)
from tagsmith.analysis.score_io import (
    format_for_path,
    read_score_file,
    read_score_metadata,
    write_scores,
)
from tagsmith.cli import run
from tagsmith.errors import FileFormatError, InputError, UsageError
from tagsmith.model.calibration import common_tags
from tagsmith.text.tokenizer import load_tokenizer
from tagsmith.text.vocab import Vocabulary, read_vocabulary

VOCAB = (
    "bottle,0,71684,bottles\n"
    "wine_bottle,0,6727,\n"
    "holding_bottle,0,20214,\n"
    "mayonnaise,0,526,\n"
    "mayonnaise_bottle,0,144,\n"
    "cross_tattoo,0,396,\n"
    "tattoo,0,200000,\n"
    "hijikata_toushirou_\\(gintama\\),4,571,\n"
    "toushirou,4,30,\n"
    ":),0,5000,\n"
    "long_hair,0,4350743,\n"
    "mayonnaise_bottle,0,12,\n"  # duplicate: merged, higher count kept
    "jar,x,5,\n"  # bad row
)


@pytest.fixture
def vocab_path(tmp_path: Path) -> Path:
    p = tmp_path / "tags.csv"
    p.write_text(VOCAB, encoding="utf-8")
    return p


@pytest.fixture
def vocab(vocab_path: Path):  # noqa: ANN201
    return read_vocabulary(vocab_path)


@pytest.fixture(scope="module")
def fake() -> BagOfTokensEmbedder:
    return BagOfTokensEmbedder(random_table(32, seed=3))


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


# -- head tokens and partners -------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "head"),
    [
        ("mayonnaise bottle", "bottle</w>"),
        ("bottle", "bottle</w>"),
        ("mayonnaise", "onnaise</w>"),
        ("hijikata toushirou (gintama)", "rou</w>"),
        ("long hair", "hair</w>"),
        (":)", ":)</w>"),
        ("year 2020", "year</w>"),
        ("^_^", "^_^</w>"),
        ("(cosplay)", "cosplay</w>"),
        ("cross-arm", "arm</w>"),
    ],
)
def test_head_token(tag: str, head: str) -> None:
    tt = load_tokenizer().analyze(tag)
    pos = head_token_index(tt.words, tt.n_tokens)
    assert pos is not None and tt.tokens[pos] == head


def test_head_token_of_empty_and_numbers() -> None:
    assert head_token_index((), 0) is None
    tt = load_tokenizer().analyze("2021")
    assert head_token_index(tt.words, tt.n_tokens) is None


def test_shares_token_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    n = 300
    ids = [list(rng.integers(0, 12, rng.integers(1, 5))) for _ in range(n)]
    counts = rng.integers(-1, 20, n)  # -1: unknown, many ties
    n_tok = np.array([len(i) for i in ids])
    rows = list(rng.choice(n, 80, replace=False))
    heads = np.array([ids[r][-1] for r in rows])
    got = _shares_token(heads, ids, counts, n_tok, rows)
    for j, r in enumerate(rows):
        others = [o for o in range(n) if o != r and heads[j] in ids[o]]
        best = min(others, key=lambda o: (-counts[o], n_tok[o], o)) if others else -1
        assert got[j] == best


# -- scoring ------------------------------------------------------------------------------


def test_score_rows_against_hand_computation(vocab, fake: BagOfTokensEmbedder) -> None:
    res = score_vocabulary(vocab, fake, k=3)
    rows = {r.text: r for r in res.rows}
    assert len(res.rows) == 11 and res.summary.n_tags == 11
    assert res.summary.duplicates_removed == 1 and res.summary.bad_rows == 1
    assert [p.line for p in res.problems] == [13]

    may = rows["mayonnaise bottle"]
    assert may.tag == "mayonnaise_bottle" and may.count == 144 and may.category == 0
    assert may.tokens == ("may", "onnaise</w>", "bottle</w>") and may.n_tokens == 3
    assert may.known_words == ("bottle",) and may.unknown_words == ("mayonnaise",)
    assert may.head_token == "bottle</w>"
    assert may.shares_token_with == "bottle" and may.shares_token_count == 71684

    # Independent numbers: the fake encoder's vectors less their mean over the reference set
    # (this vocabulary's tags: fewer than REFERENCE_TAGS), cosine in float64.
    raw = {t: fake.embed([t])[0].astype(np.float64) for t in rows}
    mean = np.mean(list(raw.values()), axis=0)
    vec = {t: v - mean for t, v in raw.items()}
    leak = float(unit(vec["mayonnaise bottle"]) @ unit(vec["bottle"]))
    assert may.leak_similarity == pytest.approx(leak, abs=1e-4)
    assert may.leak_similarity_raw == pytest.approx(
        float(unit(raw["mayonnaise bottle"]) @ unit(raw["bottle"])), abs=1e-4)
    dom = math.log10(71684 / 144) / 3
    assert may.leak_risk == pytest.approx(max(leak, 0) * dom, abs=2e-4)
    assert may.dominance == pytest.approx(dom)

    texts = list(rows)
    m = unit(np.stack([vec[t] for t in texts]))
    sims = m @ m.T
    np.fill_diagonal(sims, -np.inf)
    i = texts.index("mayonnaise bottle")
    order = np.argsort(-sims[i])[:3]
    assert [n.tag for n in may.neighbors] == [res.rows[j].tag for j in order]
    assert [n.similarity for n in may.neighbors] == pytest.approx(sims[i, order], abs=1e-4)
    assert may.distinctiveness == pytest.approx(1 - sims[i, order].mean(), abs=1e-4)
    # Percentiles: the share of the baseline's random reference pairs below the similarity.
    pairs = [float(unit(vec[a]) @ unit(vec[b])) for k, a in enumerate(texts) for b in texts[k + 1:]]
    assert may.leak_percentile == pytest.approx(100 * np.mean(np.array(pairs) < leak), abs=0.01)
    # (within one pair: the nearest pair is itself one of the pairs, equal up to rounding)
    assert may.nearest_percentile == pytest.approx(
        100 * np.mean(np.array(pairs) < sims[i, order[0]]), abs=100 / len(pairs) + 0.01)

    # Partners: the most frequent other tag with the head token; "bottle" itself has the
    # token alone, so its partner is the next most frequent, holding_bottle.
    assert rows["bottle"].shares_token_with == "holding_bottle"
    assert rows["bottle"].leak_risk == 0.0  # the partner is less frequent
    assert rows["hijikata toushirou (gintama)"].head_token == "rou</w>"
    assert rows["hijikata toushirou (gintama)"].shares_token_with == "toushirou"
    assert rows["cross tattoo"].shares_token_with == "tattoo"
    assert rows["long hair"].shares_token_with is None and rows["long hair"].leak_risk is None
    assert res.summary.n_split == sum(1 for r in res.rows if r.unknown_words)
    assert res.summary.model["fingerprint"] == "fake0000"
    assert set(res.summary.timings) == {"tokenize", "encode", "neighbors"}


def test_riskiest_orders_by_risk(vocab, fake: BagOfTokensEmbedder) -> None:
    res = score_vocabulary(vocab, fake, k=2)
    risks = [r.leak_risk for r in res.summary.riskiest]
    assert risks == sorted(risks, reverse=True) and all(r > 0 for r in risks)
    assert "mayonnaise_bottle" in [r.tag for r in res.summary.riskiest]
    assert riskiest(res.rows, 1) == res.summary.riskiest[:1]


def test_without_model_token_columns_only(vocab) -> None:
    res = score_vocabulary(vocab, None, k=3)
    may = next(r for r in res.rows if r.text == "mayonnaise bottle")
    assert may.neighbors == () and may.leak_similarity is None
    assert may.distinctiveness is None and may.leak_risk is None
    assert may.shares_token_with == "bottle"  # token-only: no model needed
    assert res.summary.model is None and res.summary.k == 0
    assert "encode" not in res.summary.timings
    # Without similarities the summary ranks by how dominated a tag is.
    # cross tattoo: 200000 / 396 = 505x; mayonnaise bottle: 71684 / 144 = 498x.
    assert [r.tag for r in res.summary.riskiest[:2]] == ["cross_tattoo", "mayonnaise_bottle"]


def test_filters_and_partners_from_whole_vocabulary(vocab, fake: BagOfTokensEmbedder) -> None:
    res = score_vocabulary(vocab, fake, k=2, categories={0}, min_count=300, limit=4)
    assert [r.tag for r in res.rows] == ["bottle", "wine_bottle", "holding_bottle", "mayonnaise"]
    assert res.summary.filtered_out == 7
    # The partner (144 posts) lies outside the selection and is still embedded.
    may = res.rows[3]
    assert may.shares_token_with == "mayonnaise_bottle" and may.shares_token_count == 144
    mean = fake.embed([e.text for e in vocab.entries]).mean(axis=0)  # the reference: all tags
    leak = float(unit(fake.embed(["mayonnaise"])[0] - mean)
                 @ unit(fake.embed(["mayonnaise bottle"])[0] - mean))
    assert may.leak_similarity == pytest.approx(leak, abs=1e-4)
    assert may.leak_risk == 0.0  # the partner is rarer
    # Neighbours come from the selection only.
    assert {n.tag for n in may.neighbors} <= {"bottle", "wine_bottle", "holding_bottle"}


def test_nothing_selected(vocab) -> None:
    with pytest.raises(InputError, match=r"^No tags left to score: all 11 tags"):
        score_vocabulary(vocab, None, min_count=10**9)


def test_select_entries_keeps_unknown_counts(tmp_path: Path) -> None:
    p = tmp_path / "plain.txt"
    p.write_text("a tag\nother tag\n")
    v = read_vocabulary(p)
    assert select_entries(v, min_count=5) == [0, 1]
    assert select_entries(v, categories={0}) == []


def test_parse_categories() -> None:
    assert parse_categories(["general", "4", "artist,copyright"]) == {0, 1, 3, 4}
    with pytest.raises(UsageError, match=r"^Unknown category 'species'"):
        parse_categories(["species"])


def test_dominance() -> None:
    assert dominance(144, 71684) == pytest.approx(math.log10(71684 / 144) / 3)
    assert dominance(10, 10_000_000) == 1.0
    assert dominance(500, 100) == 0.0 and dominance(5, 0) == 0.0
    assert dominance(None, 5) is None and dominance(5, None) is None


def test_embed_in_chunks_keeps_order_and_reports(fake: BagOfTokensEmbedder) -> None:
    texts = ["long hair", "bottle", "hijikata toushirou (gintama)", "a", "wine bottle"] * 3
    seen: list[tuple[int, int]] = []
    before = len(fake.calls)
    out = embed_in_chunks(fake, texts, chunk_size=4, progress=lambda d, t: seen.append((d, t)))
    np.testing.assert_allclose(out, fake.embed(texts), atol=1e-6)
    calls = fake.calls[before:-1]
    assert len(calls) == 4 and all(len(c) <= 4 for c in calls)
    # Each call holds tags that start alike: the calls, one after another, are the texts in
    # the order of their token ids, so the encoder's prefix trees share the common starts.
    tok = load_tokenizer()
    flat = [tuple(tok.encode(t)) for c in calls for t in c]
    assert flat == sorted(flat)
    assert sorted(t for c in calls for t in c) == sorted(texts)
    assert seen[-1] == (15, 15) and [d for d, _ in seen] == sorted(d for d, _ in seen)


# -- files --------------------------------------------------------------------------------


@pytest.fixture
def scored(vocab, fake: BagOfTokensEmbedder):  # noqa: ANN201
    return score_vocabulary(vocab, fake, k=3)


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_round_trip(tmp_path: Path, scored, ext: str) -> None:
    path = write_scores(scored.rows, tmp_path / f"out.{ext}", summary=scored.summary)
    back = read_score_file(path)
    assert back == scored.rows
    assert isinstance(back[0].neighbors[0], ScoreNeighbor)
    assert [f for f in COLUMNS][:3] == ["tag", "text", "count"]


@pytest.mark.parametrize("ext", ["csv", "jsonl", "parquet"])
def test_round_trip_without_model(tmp_path: Path, vocab, ext: str) -> None:
    res = score_vocabulary(vocab, None)
    back = read_score_file(write_scores(res.rows, tmp_path / f"out.{ext}"))
    assert back == res.rows


def test_round_trip_awkward_tags(tmp_path: Path) -> None:
    rows = [
        ScoreRow("a,\"b\"\n", "a,\"b\"", None, None, None, ("a</w>",), 1, ("a",), (), None, None,
                 None, (ScoreNeighbor(":|", 0.5), ScoreNeighbor("x, y", -0.25)), 0.1, None, 0.0),
        ScoreRow("•_•", "•_•", 3, 5, "species", (), 0, (), (), None, None, None, (), None, None,
                 None),
    ]
    for ext in ("csv", "jsonl", "parquet"):
        assert read_score_file(write_scores(rows, tmp_path / f"x.{ext}")) == rows


def test_csv_layout_is_readable(tmp_path: Path, scored) -> None:
    text = write_scores(scored.rows, tmp_path / "o.csv").read_text(encoding="utf-8")
    header, first = text.splitlines()[:2]
    assert header.split(",") == list(COLUMNS)
    assert first.startswith("bottle,bottle,71684,0,general,bottle</w>,1,bottle,,bottle</w>,")


def test_jsonl_layout(tmp_path: Path, scored) -> None:
    line = (write_scores(scored.rows, tmp_path / "o.jsonl").read_text().splitlines())[4]
    obj = json.loads(line)
    assert obj["tag"] == "mayonnaise_bottle" and obj["tokens"] == ["may", "onnaise</w>",
                                                                   "bottle</w>"]
    assert set(obj["neighbors"][0]) == {"tag", "similarity"}


def test_parquet_metadata(tmp_path: Path, scored) -> None:
    path = write_scores(scored.rows, tmp_path / "o.parquet", summary=scored.summary)
    meta = read_score_metadata(path)
    assert meta["n_tags"] == 11 and meta["model"]["fingerprint"] == "fake0000"
    assert read_score_metadata(write_scores(scored.rows, tmp_path / "o.csv")) is None


def test_format_for_path() -> None:
    assert format_for_path("x.CSV") == "csv" and format_for_path("x.ndjson") == "jsonl"
    assert format_for_path("x.txt", "parquet") == "parquet"
    with pytest.raises(UsageError, match="Cannot tell the output format from 'x.txt'"):
        format_for_path("x.txt")
    with pytest.raises(UsageError, match="Unknown format 'xlsx'"):
        format_for_path("x.csv", "xlsx")


def test_failed_write_keeps_old_file(tmp_path: Path, scored, monkeypatch) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text("old\n")

    class Boom(ScoreRow):
        def to_dict(self):  # noqa: ANN202
            raise RuntimeError("disk full")

    bad = list(scored.rows[:3]) + [Boom(**{c: getattr(scored.rows[3], c) for c in COLUMNS})]
    with pytest.raises(RuntimeError):
        write_scores(bad, out)
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl", "tags.csv"]


def test_parquet_without_pyarrow(tmp_path: Path, scored, monkeypatch) -> None:
    real_import = builtins.__import__

    def no_pyarrow(name, *a, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(InputError, match=r"Parquet needs pyarrow: .*tagsmith\[parquet\]"):
        write_scores(scored.rows, tmp_path / "o.parquet")
    assert not (tmp_path / "o.parquet").exists()


def test_read_score_file_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_score_file(tmp_path / "nope.csv")
    with pytest.raises(InputError, match="is a directory"):
        read_score_file(tmp_path)
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(FileFormatError, match="is empty"):
        read_score_file(tmp_path / "e.csv")
    (tmp_path / "v.csv").write_text(VOCAB)
    with pytest.raises(FileFormatError, match="not a tagsmith score file"):
        read_score_file(tmp_path / "v.csv")
    (tmp_path / "b.jsonl").write_text('{"tag": "a", "n_tokens": 1}\n{"tag": \n')
    with pytest.raises(FileFormatError, match=r"not a tagsmith score file \(line 2"):
        read_score_file(tmp_path / "b.jsonl")
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(FileFormatError, match="not UTF-8"):
        read_score_file(tmp_path / "bin.csv")
    (tmp_path / "p.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(FileFormatError, match="not a readable parquet file"):
        read_score_file(tmp_path / "p.parquet")


# -- the real list ------------------------------------------------------------------------


@pytest.mark.shared_data
def test_danbooru_token_columns(danbooru_csv: Path) -> None:
    full = read_vocabulary(danbooru_csv)
    # The tags with >= 2,000 posts stand in for the whole list (tokenizing all 140k is slow).
    v = Vocabulary([e for e in full if (e.count or 0) >= 2_000], full.format, full.path, [], 0)
    res = score_vocabulary(v, None, categories={0}, min_count=20_000)
    rows = {r.text: r for r in res.rows}
    assert res.summary.filtered_out == len(v) - len(res.rows)
    assert len(res.rows) == sum(1 for e in full if e.category == 0 and e.count >= 20_000)
    assert rows["long hair"].shares_token_with == "short_hair"  # 'long hair' itself is first
    assert rows["holding bottle"].shares_token_with == "bottle"
    assert rows["holding bottle"].shares_token_count == 71_684


# -- with the real encoder (tiny random weights) ------------------------------------------


def tiny_embedder(model: Path):  # noqa: ANN201
    from tagsmith.model.embedding import EncoderSettings, open_embedder

    return open_embedder(EncoderSettings(model=str(model)))


def test_real_encoder_numbers(vocab, tiny_model: Path) -> None:
    from sklearn.neighbors import NearestNeighbors

    res = score_vocabulary(vocab, tiny_embedder(tiny_model), k=4, chunk_size=3)
    texts = [r.text for r in res.rows]
    # Vectors from a fresh embedder, one call, no chunking: the reference.
    ref = tiny_embedder(tiny_model).embed(texts + ["mayonnaise bottle"])
    ref = ref - ref[:-1].mean(axis=0)  # centred on the reference set (every tag here)
    nn = NearestNeighbors(n_neighbors=5, metric="cosine", algorithm="brute").fit(ref[:-1])
    dist, idx = nn.kneighbors(ref[:-1])
    for j, r in enumerate(res.rows):
        others = [(int(i), 1 - d) for i, d in zip(idx[j], dist[j]) if i != j][:4]
        assert [n.similarity for n in r.neighbors] == pytest.approx(
            [s for _, s in others], abs=2e-4)
        assert {n.tag for n in r.neighbors} == {res.rows[i].tag for i, _ in others}
    may = next(r for r in res.rows if r.text == "mayonnaise bottle")
    leak = float(unit(ref[texts.index("mayonnaise bottle")]) @ unit(ref[texts.index("bottle")]))
    assert may.leak_similarity == pytest.approx(leak, abs=2e-4)


# -- the command --------------------------------------------------------------------------


def test_cli_with_model(vocab_path: Path, tmp_path: Path, tiny_model: Path, capsys) -> None:
    out = tmp_path / "scores.csv"
    code = run(["score", str(vocab_path), "-o", str(out), "--model", str(tiny_model), "-k", "3"])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    rows = read_score_file(out)
    assert len(rows) == 11 and all(len(r.neighbors) == 3 for r in rows)
    assert "11 tags from tags.csv (tagcomplete), 1 duplicate merged, 1 bad row skipped." in cap.err
    assert "skipped line 13: category 'x' is not a whole number" in cap.err
    assert f"Scored 11 tags -> {out}" in cap.out
    # The summary lists the tags of the file with a positive risk, riskiest first (which ones
    # depends on the random weights; raw cosines near 1 used to put every tag there).
    risky = sorted((r for r in rows if r.leak_risk), key=lambda r: -r.leak_risk)
    assert risky and "Riskiest tags" in cap.out
    assert risky[0].text in cap.out.split("Riskiest tags", 1)[1]
    # Piped stderr gets a line only for a phase that lasts over a second; the summary on
    # stdout always gives each phase's time.
    time_line = next(line for line in cap.out.splitlines() if line.strip().startswith("time:"))
    for phase in ("tokenize", "encode", "neighbours"):
        assert phase in time_line


def test_cli_without_model(vocab_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "scores.jsonl"
    code = run(["score", str(vocab_path), "-o", str(out)])
    cap = capsys.readouterr()
    assert code == 0, cap.err
    notes = [line for line in cap.err.splitlines() if line.startswith("Note: ")]
    assert len(notes) == 1 and "similarity needs a text encoder" in notes[0]
    assert "Traceback" not in cap.err
    rows = read_score_file(out)
    assert len(rows) == 11 and all(r.neighbors == () and r.leak_similarity is None for r in rows)
    assert "no model: no similarity" in cap.out


def test_cli_filters_and_format(vocab_path: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "scores.data"
    code = run(["score", str(vocab_path), "-o", str(out), "--format", "parquet",
                "--category", "general", "--min-count", "1000", "--limit", "3"])
    assert code == 0, capsys.readouterr().err
    assert [r.tag for r in read_score_file(out)] == ["bottle", "wine_bottle", "holding_bottle"]
    assert "8 tags left out" in capsys.readouterr().out


def test_cli_vocab_from_environment(vocab_path: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TAGSMITH_VOCAB", str(vocab_path))
    assert run(["score", "-o", str(tmp_path / "o.csv")]) == 0
    monkeypatch.delenv("TAGSMITH_VOCAB")
    capsys.readouterr()
    assert run(["score", "-o", str(tmp_path / "o.csv")]) == 2
    assert "Give a vocabulary file, or set TAGSMITH_VOCAB" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["{missing}", "-o", "{tmp}/o.csv"], 1, "does not exist."),
        (["{vocab}", "-o", "{tmp}/o.txt"], 2, "Cannot tell the output format from 'o.txt'"),
        (["{vocab}", "-o", "{tmp}/nowhere/o.csv"], 2, "the folder"),
        (["{vocab}", "-o", "{tmp}"], 2, "is a folder"),
        (["{vocab}", "-o", "{tmp}/o.csv", "--category", "species"], 2, "Unknown category"),
        (["{vocab}", "-o", "{tmp}/o.csv", "--neighbors", "0"], 2, "--neighbors"),
        (["{vocab}"], 2, "--output"),
        (["{vocab}", "-o", "{tmp}/o.csv", "--model", "{tmp}/no-model"], 1, "Error: "),
        (["{vocab}", "-o", "{tmp}/o.csv", "--min-count", "999999999"], 1, "No tags left"),
        (["{tmp}/empty.csv", "-o", "{tmp}/o.csv"], 1, "is empty."),
    ],
)
def test_cli_bad_input(vocab_path: Path, tmp_path: Path, capsys, args, code, message) -> None:
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "o.csv").write_text("previous run\n")
    fill = {"vocab": str(vocab_path), "tmp": str(tmp_path), "missing": str(tmp_path / "x.csv")}
    assert run(["score", *[a.format(**fill) for a in args]]) == code
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (tmp_path / "o.csv").read_text() == "previous run\n"


def test_cli_parquet_without_pyarrow_fails_before_work(
    vocab_path: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    import tagsmith.analysis.score as score_mod
    import tagsmith.analysis.score_io as score_io

    def missing() -> None:
        raise InputError("Parquet needs pyarrow: pip install 'tagsmith[parquet]'.")

    monkeypatch.setattr(score_io, "_pyarrow", missing)
    monkeypatch.setattr(score_mod, "score_vocabulary", lambda *a, **k: pytest.fail("ran"))
    assert run(["score", str(vocab_path), "-o", str(tmp_path / "o.parquet")]) == 1
    assert "Parquet needs pyarrow" in capsys.readouterr().err


def test_cli_interrupt_then_resume(
    vocab_path: Path, tmp_path: Path, tiny_model: Path, monkeypatch, capsys
) -> None:
    import tagsmith.analysis.score as score_mod
    from tagsmith.model.embedding import TagEmbedder
    from tagsmith.model.encoder import ClipTextEncoder

    monkeypatch.setattr(score_mod, "EMBED_CHUNK", 4)
    encoded: list[int] = []
    real_encode = ClipTextEncoder.encode

    def counting_encode(self, sequences, **kw):  # noqa: ANN001, ANN003, ANN202
        encoded.append(len(sequences))
        return real_encode(self, sequences, **kw)

    monkeypatch.setattr(ClipTextEncoder, "encode", counting_encode)
    real_embed = TagEmbedder.embed
    calls = {"n": 0}

    def interrupted_embed(self, texts, **kw):  # noqa: ANN001, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_embed(self, texts, **kw)

    monkeypatch.setattr(TagEmbedder, "embed", interrupted_embed)
    out = tmp_path / "scores.csv"
    out.write_text("previous run\n")
    args = ["score", str(vocab_path), "-o", str(out), "--model", str(tiny_model)]
    assert run(args) == 130
    err = capsys.readouterr().err
    assert "Stopped. Vectors already computed are in the embedding cache" in err
    assert "Interrupted." in err and "Traceback" not in err
    assert out.read_text() == "previous run\n"
    # Chunks of 4, 4 and 3 tags: the first two were done before Ctrl-C.
    assert sum(encoded) == 8

    monkeypatch.setattr(TagEmbedder, "embed", real_embed)
    encoded.clear()
    assert run(args) == 0
    # All partners are scored tags here: 11 texts, 8 came from the cache.
    assert sum(encoded) == 3
    assert len(read_score_file(out)) == 11


def test_tag_without_tokens_is_not_embedded(tmp_path: Path) -> None:
    # ftfy drops control characters: the tag survives the reader but has no tokens, and the
    # real encoder refuses to embed nothing.
    p = tmp_path / "t.csv"
    p.write_text("bottle,0,10,\n\x01\x02,0,5,\nwine_bottle,0,3,\njar,0,2,\n", encoding="utf-8")
    fake = BagOfTokensEmbedder(random_table(16, seed=1))
    res = score_vocabulary(read_vocabulary(p), fake, k=3)
    empty = res.rows[1]
    assert empty.n_tokens == 0 and empty.neighbors == () and empty.head_token is None
    assert all("\x01\x02" not in call for call in fake.calls)
    assert all(n.tag != "\x01\x02" for r in res.rows for n in r.neighbors)
    assert [len(r.neighbors) for r in res.rows] == [2, 0, 2, 2]
    wine = res.rows[2]
    # Four tags are too few to be a reference: the shipped common tags are.
    mean = fake.embed(common_tags()).mean(axis=0)
    leak = float(unit(fake.embed(["wine bottle"])[0] - mean)
                 @ unit(fake.embed(["bottle"])[0] - mean))
    assert wine.leak_similarity == pytest.approx(leak, abs=1e-4)


def test_cli_passes_on_encoder_notes(tmp_path: Path, tiny_model: Path, capsys) -> None:
    p = tmp_path / "t.csv"
    p.write_text("bottle,0,10,\n" + "_".join(["word"] * 80) + ",0,5,\njar,0,2,\n")
    code = run(["score", str(p), "-o", str(tmp_path / "o.csv"), "--model", str(tiny_model)])
    err = capsys.readouterr().err
    assert code == 0, err
    flat = " ".join(err.split())
    # Once, in one short sentence that names the tag without repeating all of it.
    assert flat.count("exceeds the 75-token chunk SD1.5 reads") == 1
    assert "(80 tokens) exceeds the 75-token chunk SD1.5 reads; only the first 75 tokens" in flat
    assert " ".join(["word"] * 80) not in flat


def test_token_ids_from_the_vocabulary_index_tokenize_nothing(
    vocab_path: Path, tmp_path: Path, monkeypatch
) -> None:  # noqa: ANN001
    """score reads every tag's ids from the cached vocabulary index (suggest's): a second run
    tokenizes nothing, here or in the embedder, and scores exactly as tokenizing does."""
    from tagsmith.text.tokenizer import ClipTokenizer
    from tagsmith.text.vocab_index import vocabulary_token_ids

    vocab = read_vocabulary(vocab_path)
    fake = BagOfTokensEmbedder(random_table(32, seed=3))
    want = score_vocabulary(vocab, fake, k=3)
    first = vocabulary_token_ids(vocab, cache_dir=tmp_path)  # builds and caches the index
    tok = load_tokenizer()
    assert first == [list(i) for i in tok.encode_batch(vocab.texts)]

    calls: list[int] = []
    real = ClipTokenizer._ids_cleaned
    monkeypatch.setattr(ClipTokenizer, "_ids_cleaned",
                        lambda self, cleaned: calls.append(len(cleaned)) or real(self, cleaned))
    again = vocabulary_token_ids(read_vocabulary(vocab_path), cache_dir=tmp_path)
    assert again == first and calls == []
    from tagsmith.model.calibration import model_baseline, vocabulary_reference

    counts = np.array([-1 if e.count is None else e.count for e in vocab.entries])
    base = model_baseline(fake, vocabulary_reference(vocab.texts, counts), label="test")
    want = score_vocabulary(vocab, fake, k=3, baseline=base)
    calls.clear()
    got = score_vocabulary(vocab, fake, k=3, token_ids=again, baseline=base)
    assert calls == []  # neither score nor the embedder tokenized a vocabulary row
    assert got.rows == want.rows
