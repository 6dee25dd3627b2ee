"""Raw vs calibrated similarities, and what the baseline costs.

1. Spread of nearest-neighbour similarities over the Danbooru list, raw cosine vs centred
   cosine (tagsmith.model.calibration), on the tiny random test encoder (every tag of the list)
   and on the full-size ViT-L/14 text encoder with random weights (the N most frequent tags;
   the CPU cannot embed all 140k here in minutes). The baseline is the default one: the mean
   over the list's 1,000 most frequent tags.
2. The baseline over the full-size model's 20,000 most frequent tags: the embedding pass (cold
   cache, part 1), the baseline from the embedding cache, and from its own cached file.
3. Warm `suggest` in one process: the whole call and the baseline read inside it.
4. Warm `tagsmith suggest "mayonnaise bottle" --vocab danbooru.csv` on the full-size model,
   fresh processes: this checkout against ``--before`` (a checkout without calibration, such as
   the main branch before it landed), runs interleaved in one process, median of N.
5. An adapter's baseline on the full-size model with a rank-32 LoRA on all 72 layers, at
   weight 1 and 6: the estimate from the control tags (what tagsmith uses) against a full pass
   over the 1,000 reference tags in base + LoRA. Its cost, and its errors: percentiles at the
   exact random-pair quantiles 50/90/99/99.9, and centred cosines of 5,000 random reference
   pairs (against the tie, a tenth of the random-pair spread).

    python benchmarks/calibration.py [--vocab ../shared/data/danbooru.csv] [--full-tags 20000]
        [--before /path/to/older/checkout] [--runs 5] [--skip tiny full inproc warm adapter]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append(str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
from score import full_size_model  # noqa: E402  (same random ViT-L/14 folder, built once)


def _load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def _nn_similarities(unit: np.ndarray) -> np.ndarray:
    from tagsmith.analysis.neighbors import nearest_neighbors

    return nearest_neighbors(unit, 1, normalized=True).similarities[:, 0]


def _describe(x: np.ndarray) -> str:
    p5, p25, p50, p75, p95 = np.percentile(x, [5, 25, 50, 75, 95])
    return (f"median {p50:6.3f}  IQR {p75 - p25:5.3f}  5-95% {p5:6.3f}..{p95:6.3f} "
            f"(width {p95 - p5:5.3f})")


def spread(name: str, embedder, texts: list[str], counts: np.ndarray) -> None:  # noqa: ANN001
    from tagsmith.analysis.score import embed_in_chunks
    from tagsmith.model.calibration import model_baseline, vocabulary_reference

    t = time.perf_counter()
    vectors = embed_in_chunks(embedder, texts)
    t_embed = time.perf_counter() - t
    base = model_baseline(embedder, vocabulary_reference(texts, counts))
    raw = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    nn_raw = _nn_similarities(raw)
    nn_cal = _nn_similarities(base.unit(vectors))
    pct = base.percentile(nn_cal)
    rng = np.random.default_rng(0)
    i = rng.integers(0, len(texts), 20_000)
    j = (i + rng.integers(1, len(texts), 20_000)) % len(texts)
    pairs_raw = np.einsum("ij,ij->i", raw[i], raw[j])
    print(f"\n{name}: {len(texts):,} tags (embedded in {t_embed:.0f} s, load {_load()})")
    print(f"  nearest neighbour, raw cosine    : {_describe(nn_raw)}")
    print(f"  nearest neighbour, centred cosine: {_describe(nn_cal)}")
    print(f"  nearest neighbour, percentile    : {_describe(pct)}")
    print(f"  random pairs, raw cosine         : {_describe(pairs_raw)}")
    print(f"  random pairs, centred cosine     : {_describe(base.pair_similarities)}")
    print(f"  spread ratio (5-95% width, centred / raw): "
          f"{np.ptp(np.percentile(nn_cal, [5, 95])) / np.ptp(np.percentile(nn_raw, [5, 95])):.1f}x")


def baseline_cost(embedder, texts: list[str]) -> None:  # noqa: ANN001
    """After ``spread`` embedded ``texts`` with a cold cache (its time is the embedding pass):
    the baseline over all of them, from the embedding cache, then from its own file."""
    from tagsmith.model.calibration import model_baseline

    t = time.perf_counter()
    model_baseline(embedder, texts)  # vectors from the embedding cache, then built and saved
    t_cached_vectors = time.perf_counter() - t
    t = time.perf_counter()
    model_baseline(embedder, texts)  # its own .npz
    t_file = time.perf_counter() - t
    print(f"\nbaseline over all {len(texts):,} tags, full-size model (load {_load()})")
    print("  embedding pass, cold cache       : see 'embedded in' above")
    print(f"  model_baseline, vectors cached   : {t_cached_vectors:8.3f} s")
    print(f"  model_baseline, baseline cached  : {t_file:8.3f} s")


def warm_in_process(model: Path, vocab: Path, runs: int, workdir: Path) -> None:
    """Warm suggest in one process: the whole call, and the part calibration adds (reading the
    model's baseline), each the median of ``runs``; less noisy than fresh processes on a
    shared machine."""
    from tagsmith.analysis.concepts import baseline_for
    from tagsmith.analysis.suggest import SuggestOptions, suggest
    from tagsmith.model.embedding import EncoderSettings, open_embedder
    from tagsmith.text.vocab_index import load_vocab_index

    cache = workdir / "cache-inproc"
    opts = SuggestOptions(vocab_path=vocab, cache_dir=cache)
    with open_embedder(EncoderSettings(model=str(model), device="cpu", cache_dir=cache)) as emb:
        suggest("mayonnaise bottle", opts, embedder=emb)  # fills every cache
        index = load_vocab_index(vocab, cache_dir=cache)
        whole, step = [], []
        for _ in range(runs):
            t = time.perf_counter()
            suggest("mayonnaise bottle", opts, embedder=emb)
            whole.append(time.perf_counter() - t)
            t = time.perf_counter()
            baseline_for(emb, index)
            step.append(time.perf_counter() - t)
    w, b = statistics.median(whole), statistics.median(step)
    print(f"\nwarm suggest in one process, full-size model, median of {runs} (load {_load()})")
    print(f"  suggest() with the baseline read : {w * 1000:8.1f} ms")
    print(f"  of which reading the baseline    : {b * 1000:8.1f} ms ({100 * b / w:.1f}%)")


def _cli(checkout: Path, args: list[str], cache: Path) -> float:
    env = dict(os.environ, TAGSMITH_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(checkout))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tagsmith", *args], env=env, cwd=checkout,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"tagsmith in {checkout} failed: {proc.stderr}")
    return elapsed


def warm_suggest(model: Path, vocab: Path, before: Path, runs: int, workdir: Path) -> None:
    args = ["suggest", "mayonnaise bottle", "--vocab", str(vocab), "--model", str(model),
            "--json"]
    sides = {"before (no calibration)": before, "this checkout": ROOT}
    caches = {k: Path(tempfile.mkdtemp(prefix="warm", dir=workdir)) for k in sides}
    first = {}
    for k, checkout in sides.items():
        # First run: vocabulary index, fingerprint, vectors and (this checkout) the baseline.
        first[k] = _cli(checkout, args, caches[k])
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(runs):
        for k, checkout in sides.items():
            times[k].append(_cli(checkout, args, caches[k]))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\nwarm suggest, full-size model, median of {runs} interleaved runs (load {_load()})")
    for k, v in med.items():
        print(f"  {k:24s}: {v:6.2f} s   (runs: {', '.join(f'{x:.2f}' for x in times[k])})")
    print("  first run (nothing cached): " + ", ".join(f"{k} {v:.2f} s" for k, v in first.items()))
    ratio = med["this checkout"] / med["before (no calibration)"]
    print(f"  ratio                   : {ratio:6.3f} (target <= 1.10)")


def adapter_estimate(model: Path, texts: list[str], counts: np.ndarray, workdir: Path) -> None:
    from lora import rank32_lora

    from tagsmith.model.calibration import (
        CONTROL_TAGS,
        build_baseline,
        model_baseline,
        vocabulary_reference,
    )
    from tagsmith.model.embedding import EncoderSettings, open_embedder
    from tagsmith.model.lora import LoraSpec

    ref = vocabulary_reference(texts, counts)
    lora = rank32_lora(workdir)
    rng = np.random.default_rng(1)
    i = rng.integers(0, len(ref), 5000)
    j = (i + rng.integers(1, len(ref), 5000)) % len(ref)

    def pair_cos(x: np.ndarray, mean: np.ndarray) -> np.ndarray:
        c = x - mean
        c /= np.linalg.norm(c, axis=1, keepdims=True)
        return np.einsum("ij,ij->i", c[i], c[j])

    print(f"\nadapter baseline: {CONTROL_TAGS} control tags of {len(ref):,}, {lora.name}, "
          f"load {_load()}")
    base_vecs = None
    for weight in (1.0, 6.0):
        settings = EncoderSettings(model=str(model), device="cpu", use_cache=False,
                                   loras=(LoraSpec(lora, weight),))
        with open_embedder(settings) as emb:
            base = emb.adapter_base()
            if base_vecs is None:
                base_vecs = base.embed(ref)
            model_baseline(base, ref)  # the base's own (a full pass; once per model)
            t = time.perf_counter()
            exact_vecs = emb.embed(ref)
            full_s = time.perf_counter() - t
            t = time.perf_counter()
            est = model_baseline(emb, ref)
            est_s = time.perf_counter() - t
        exact = build_baseline(exact_vecs)
        b = base_vecs - base_vecs.mean(0)
        m = exact_vecs - exact.mean
        moved = float(np.mean(np.sum(b * m, 1) / np.linalg.norm(b, axis=1)
                              / np.linalg.norm(m, axis=1)))
        probe = np.quantile(exact.pair_similarities, [0.5, 0.9, 0.99, 0.999])
        pct = np.abs(est.percentile(probe) - exact.percentile(probe))
        sim_err = np.abs(pair_cos(exact_vecs, est.mean) - pair_cos(exact_vecs, exact.mean))
        print(f"  weight {weight:g}: reference tags moved to centred cosine {moved:.3f} of the "
              f"base's")
        print(f"    cost: estimate {est_s:5.2f} s, full pass {full_s:5.2f} s "
              f"({full_s / est_s:.1f}x)")
        print("    percentile error at 50/90/99/99.9%: "
              + " / ".join(f"{x:.2f}" for x in pct) + " points")
        print(f"    centred-cosine error: mean {sim_err.mean():.4f}, max {sim_err.max():.4f} "
              f"(tie {exact.tie:.4f}: mean {sim_err.mean() / exact.tie:.2f} of a tie)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=Path, default=ROOT.parent / "shared" / "data" / "danbooru.csv")
    ap.add_argument("--full-tags", type=int, default=20_000)
    ap.add_argument("--tiny-tags", type=int, default=None, help="default: the whole list")
    ap.add_argument("--before", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip", nargs="*", default=(), choices=("tiny", "full", "inproc", "warm",
                                                                 "adapter"))
    ap.add_argument("--workdir", type=Path,
                    default=Path(tempfile.gettempdir()) / "tagsmith-bench")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    from tagsmith.model.embedding import EncoderSettings, open_embedder
    from tagsmith.text.tokenizer import load_tokenizer
    from tagsmith.text.vocab import read_vocabulary

    vocab = read_vocabulary(a.vocab)
    order = sorted(range(len(vocab.entries)), key=lambda r: -(vocab.entries[r].count or 0))
    texts_all = [vocab.entries[r].text for r in order]
    counts_all = np.array([vocab.entries[r].count or 0 for r in order])
    tok_ok = [bool(ids) for ids in load_tokenizer().encode_batch(texts_all)]
    texts_all = [t for t, ok in zip(texts_all, tok_ok) if ok]
    counts_all = counts_all[np.asarray(tok_ok)]
    print(f"vocabulary {a.vocab.name}: {len(texts_all):,} tags with tokens; CPU "
          f"{os.cpu_count()} cores, load {_load()}")

    if "tiny" not in a.skip:
        from tiny_models import TinyModelFiles

        tiny = TinyModelFiles(a.workdir / "tiny").single_file()
        n = a.tiny_tags or len(texts_all)
        with open_embedder(EncoderSettings(model=str(tiny), device="cpu",
                                           cache_dir=a.workdir / "cache-tiny")) as emb:
            spread("tiny random test encoder (128 wide, 3 layers)", emb, texts_all[:n],
                   counts_all[:n])
    model = full_size_model(a.workdir)
    if "full" not in a.skip:
        n = a.full_tags
        cache = Path(tempfile.mkdtemp(prefix="cache-full", dir=a.workdir))  # cold
        with open_embedder(EncoderSettings(model=str(model), device="cpu",
                                           cache_dir=cache)) as emb:
            spread("full-size ViT-L/14 text encoder (random weights)", emb, texts_all[:n],
                   counts_all[:n])
            baseline_cost(emb, texts_all[:n])
    if "inproc" not in a.skip:
        warm_in_process(model, a.vocab, max(a.runs, 5), a.workdir)
    if "adapter" not in a.skip:
        adapter_estimate(model, texts_all, counts_all, a.workdir)
    if "warm" not in a.skip:
        if a.before is None:
            print("\nwarm suggest skipped: give --before PATH (an older checkout) to compare")
        else:
            warm_suggest(model, a.vocab, a.before, a.runs, a.workdir)


if __name__ == "__main__":
    main()
