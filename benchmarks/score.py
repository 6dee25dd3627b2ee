"""`tagsmith score` speed and memory on the full-size SD1.5 text encoder (random weights).

The ViT-L/14 text model with random weights costs exactly what the real one costs. Each side
runs in its own process (so peak RSS is its own) with an empty embedding cache.

1. Subset (default): a seeded random sample of ``--subset`` Danbooru tags (2,000), scored by
   - a naive baseline: transformers' ``CLIPTextModel``, every tag padded to 77 tokens, batches
     of 64, then a per-tag Python loop for neighbours (``X @ x`` and ``argsort`` per tag);
   - tagsmith: ``score_vocabulary`` (prefix-tree batches that run shared starts once, exact
     blocked top-k), and scikit-learn's brute-force ``NearestNeighbors`` on the same vectors;
   printed side by side per phase with the ratio, agreement of the neighbour lists, peak RSS.
2. ``--neighbors-only N``: tagsmith's numpy and torch backends and scikit-learn on N x 768
   unit vectors (the neighbour phase does not depend on the model), with peak RSS.
3. ``--full``: ``tagsmith score`` on the whole list as a user runs it (one subprocess), time per
   phase from the run's own summary, wall time and peak RSS.

    python benchmarks/score.py [--vocab ../shared/data/danbooru.csv] [--subset 2000]
    python benchmarks/score.py --neighbors-only 20000
    python benchmarks/score.py --full
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# benchmarks/ holds scripts named like stdlib modules (tokenize.py): keep it after the standard
# library on the path (at the end, where the scripts that import this one still find theirs).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append(str(Path(__file__).resolve().parent))
BENCH = ROOT / ".bench"
DEFAULT_VOCAB = ROOT.parent / "shared" / "data" / "danbooru.csv"


def full_size_model(folder: Path) -> Path:
    """A CLIPTextModel folder with random ViT-L/14 text weights (~490 MB), built once."""
    target = folder / "vit-l-14-random"
    if (target / "model.safetensors").is_file():
        return target
    from safetensors.torch import save_file
    from tiny_models import position_ids, tiny_weights

    from tagsmith.model.config import EncoderConfig

    cfg = EncoderConfig()
    w = tiny_weights(seed=0, config=cfg)
    tensors = {f"text_model.{k}": v.contiguous() for k, v in w.items()}
    tensors["text_model.embeddings.position_ids"] = position_ids(cfg)
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps({
        "architectures": ["CLIPTextModel"], "model_type": "clip_text_model",
        "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
        "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
        "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5, "torch_dtype": "float32",
    }))
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def _load() -> str:
    """The machine is shared: other people's work slows every number printed here."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def subset_texts(vocab: Path, n: int, seed: int = 0) -> list[int]:
    import numpy as np

    from tagsmith.text.vocab import read_vocabulary

    total = len(read_vocabulary(vocab))
    return sorted(np.random.default_rng(seed).choice(total, size=min(n, total),
                                                     replace=False).tolist())


# -- workers (each in its own process) ------------------------------------------------------


def worker_tagsmith(args: argparse.Namespace) -> dict:
    import numpy as np

    from tagsmith.analysis.score import score_vocabulary
    from tagsmith.model.embedding import EncoderSettings, open_embedder
    from tagsmith.text.vocab import Vocabulary, read_vocabulary

    t0 = time.perf_counter()
    full = read_vocabulary(args.vocab)
    rows = json.loads(Path(args.rows).read_text())
    vocab = Vocabulary([full.entries[i] for i in rows], full.format, full.path, [], 0)
    t_read = time.perf_counter() - t0
    emb = open_embedder(EncoderSettings(model=str(args.model), cache_dir=Path(args.cache)))
    res = score_vocabulary(vocab, emb, k=args.k)
    wall = time.perf_counter() - t0
    # Vectors (now cached) for the comparison with the baseline and scikit-learn.
    vecs = emb.embed([e.text for e in vocab.entries])
    np.save(args.out_vectors, vecs)
    neighbours = [[n.tag for n in r.neighbors] for r in res.rows]
    return {"phases": {"read": t_read, **res.summary.timings}, "wall": wall,
            "rss_mb": peak_rss_mb(), "neighbors": neighbours,
            "tags": [r.tag for r in res.rows]}


def worker_baseline(args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    t0 = time.perf_counter()
    from transformers import CLIPTextModel

    from tagsmith.text.tokenizer import BOS_ID, EOS_ID, load_tokenizer
    from tagsmith.text.vocab import read_vocabulary

    full = read_vocabulary(args.vocab)
    rows = json.loads(Path(args.rows).read_text())
    entries = [full.entries[i] for i in rows]
    model = CLIPTextModel.from_pretrained(str(args.model)).eval()
    t_load = time.perf_counter() - t0

    t0 = time.perf_counter()
    ids = load_tokenizer().encode_batch([e.text for e in entries])
    vecs = np.zeros((len(entries), 768), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(ids), 64):
            batch = ids[start : start + 64]
            x = torch.full((len(batch), 77), EOS_ID, dtype=torch.long)
            for r, seq in enumerate(batch):
                seq = [BOS_ID, *seq[:75], EOS_ID]
                x[r, : len(seq)] = torch.tensor(seq)
            states = model(input_ids=x).last_hidden_state
            for r, seq in enumerate(batch):
                n = min(len(seq), 75)
                vecs[start + r] = states[r, 1 : 1 + n].mean(dim=0).numpy()
    t_encode = time.perf_counter() - t0

    t0 = time.perf_counter()
    unit = vecs / np.linalg.norm(vecs, axis=1, keepdims=True)
    neighbours = []
    for i in range(len(unit)):
        sims = unit @ unit[i]
        sims[i] = -np.inf
        neighbours.append([entries[j].tag for j in np.argsort(-sims)[: args.k]])
    t_nn = time.perf_counter() - t0
    return {"phases": {"load": t_load, "encode": t_encode, "neighbors": t_nn},
            "wall": t_load + t_encode + t_nn, "rss_mb": peak_rss_mb(), "neighbors": neighbours}


def worker_neighbors(args: argparse.Namespace) -> dict:
    import numpy as np

    from tagsmith.analysis.neighbors import nearest_neighbors, normalize_rows

    rng = np.random.default_rng(0)
    n = args.n
    # Clustered like tag embeddings (many near neighbours), 768 dims.
    centres = rng.standard_normal((max(2, n // 50), 768)).astype(np.float32)
    x = normalize_rows(centres[rng.integers(0, len(centres), n)]
                       + 0.6 * rng.standard_normal((n, 768)).astype(np.float32))
    base_rss = peak_rss_mb()
    if args.which == "sklearn":
        from sklearn.neighbors import NearestNeighbors

        t0 = time.perf_counter()
        nn = NearestNeighbors(n_neighbors=args.k + 1, metric="cosine", algorithm="brute").fit(x)
        nn.kneighbors(x)
    else:
        if args.which == "torch":
            import torch  # noqa: F401 - the backend the CLI uses once the encoder ran
        t0 = time.perf_counter()
        nearest_neighbors(x, args.k, backend=args.which)
    return {"seconds": time.perf_counter() - t0, "rss_mb": peak_rss_mb(),
            "input_rss_mb": base_rss}


def run_worker(kind: str, **kw: object) -> dict:
    cmd = [sys.executable, __file__, "--_worker", kind]
    for k, v in kw.items():
        cmd += [f"--{k.replace('_', '-')}", str(v)]
    proc = subprocess.run(cmd, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"))
    if proc.returncode != 0:
        raise SystemExit(f"{kind} worker failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- the three benchmarks ---------------------------------------------------------------------


def bench_subset(args: argparse.Namespace) -> None:
    import numpy as np

    model = full_size_model(BENCH)
    rows = subset_texts(args.vocab, args.subset)
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = Path(tmp) / "rows.json"
        rows_file.write_text(json.dumps(rows))
        vec_file = Path(tmp) / "vectors.npy"
        common = {"vocab": args.vocab, "model": model, "rows": rows_file, "k": args.k}
        saved = BENCH / f"baseline-{len(rows)}-k{args.k}.json"
        if args.reuse_baseline and saved.is_file():
            base = json.loads(saved.read_text())
            print(f"(baseline numbers reused from {saved}, measured {base['when']})")
        else:
            base = run_worker("baseline", **common)
            base["when"] = time.strftime("%Y-%m-%d %H:%M")
            saved.write_text(json.dumps(base))
        print(f"baseline: {json.dumps(base['phases'])}", flush=True)
        ours = run_worker("tagsmith", **common, cache=Path(tmp) / "cache",
                          out_vectors=vec_file)
        print(f"tagsmith: {json.dumps(ours['phases'])}", flush=True)
        vecs = np.load(vec_file)
    from sklearn.neighbors import NearestNeighbors

    t0 = time.perf_counter()
    NearestNeighbors(n_neighbors=args.k + 1, metric="cosine", algorithm="brute").fit(
        vecs).kneighbors(vecs)
    t_sklearn = time.perf_counter() - t0

    n = len(rows)
    same = sum(len(set(a) & set(b)) for a, b in zip(base["neighbors"], ours["neighbors"]))
    print(f"\nSubset: {n:,} Danbooru tags (random sample, seed 0), k={args.k}, "
          f"full-size ViT-L/14 text encoder (random weights), empty cache, CPU x{os.cpu_count()}, "
          f"load average now {_load()}")
    print(f"{'phase':<28}{'naive baseline':>16}{'tagsmith':>12}{'ratio':>9}")
    pb, po = base["phases"], ours["phases"]
    lines = [
        ("read vocab + load model", pb["load"], po["read"]),
        ("tokenize", None, po.get("tokenize")),
        ("encode", pb["encode"], po.get("encode")),
        ("neighbours", pb["neighbors"], po.get("neighbors")),
        ("total (wall)", base["wall"], ours["wall"]),
    ]
    for name, b, o in lines:
        bs = f"{b:>15.2f}s" if b is not None else f"{'-':>16}"
        os_ = f"{o:>11.2f}s" if o is not None else f"{'-':>12}"
        ratio = f"{b / o:>8.1f}x" if b and o else f"{'':>9}"
        print(f"{name:<28}{bs}{os_}{ratio}")
    print(f"{'peak RSS':<28}{base['rss_mb']:>14.0f}MB{ours['rss_mb']:>10.0f}MB")
    print(f"encode rate: baseline {n / pb['encode']:.0f} tags/s, "
          f"tagsmith {n / po['encode']:.0f} tags/s")
    print(f"neighbours on the same vectors: scikit-learn brute {t_sklearn:.2f}s, "
          f"tagsmith {po['neighbors']:.2f}s")
    print(f"neighbour lists shared with the baseline: {same / (n * args.k):.1%} "
          "(any difference is float rounding: padded to 77 vs prefix trees)")


def bench_neighbors(args: argparse.Namespace) -> None:
    n = args.neighbors_only
    print(f"\nNeighbours only: {n:,} x 768 float32 unit vectors, k={args.k}, "
          f"CPU x{os.cpu_count()}, load average {_load()}")
    for which in args.backends.split(","):
        r = run_worker("neighbors", n=n, k=args.k, which=which)
        print(f"  {which:<8} {r['seconds']:>8.1f}s  peak RSS {r['rss_mb']:>6.0f} MB "
              f"(inputs alone {r['input_rss_mb']:.0f} MB)")


def bench_full(args: argparse.Namespace) -> None:
    from tagsmith.analysis.score_io import read_score_metadata

    model = full_size_model(BENCH)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "scores.parquet"
        env = dict(os.environ, TAGSMITH_CACHE_DIR=str(Path(tmp) / "cache"), HF_HUB_OFFLINE="1")
        cmd = [sys.executable, "-m", "tagsmith", "score", str(args.vocab), "-o", str(out),
               "--model", str(model), "-k", str(args.k)]
        if args.limit:
            cmd += ["--limit", str(args.limit)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"tagsmith score failed with exit code {proc.returncode}")
        meta = read_score_metadata(out)
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"\nFull run: {meta['n_tags']:,} tags, k={args.k}, CPU x{os.cpu_count()}, "
          f"load average now {_load()}")
    for phase, secs in meta["timings"].items():
        print(f"  {phase:<10} {secs:>8.1f}s")
    print(f"  wall       {wall:>8.1f}s   peak RSS {rss:,.0f} MB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=Path, default=DEFAULT_VOCAB)
    p.add_argument("--subset", type=int, default=2000)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--full", action="store_true")
    p.add_argument("--limit", type=int, default=None, help="with --full: only the first N tags")
    p.add_argument("--neighbors-only", type=int, default=0)
    p.add_argument("--backends", default="numpy,torch,sklearn",
                   help="with --neighbors-only: which to time (comma-separated)")
    p.add_argument("--reuse-baseline", action="store_true",
                   help="reuse the last baseline measured for this subset (it is slow)")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    for hidden in ("model", "rows", "cache", "out-vectors", "which"):
        p.add_argument(f"--{hidden}", default=None, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args._worker:
        worker = {"tagsmith": worker_tagsmith, "baseline": worker_baseline,
                  "neighbors": worker_neighbors}[args._worker]
        print(json.dumps(worker(args)))
        return
    if args.neighbors_only:
        bench_neighbors(args)
    elif args.full:
        bench_full(args)
    else:
        bench_subset(args)


if __name__ == "__main__":
    main()
