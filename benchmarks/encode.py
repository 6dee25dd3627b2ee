"""Encoder speed: tagsmith vs the padded-to-77 baseline, the matmul roofline, the cache, start-up.

Runs on SD1.5's full-size text architecture (CLIP ViT-L/14: 12 layers, width 768, 12 heads,
MLP 3072) with random weights, which cost exactly what real ones do, over tags drawn from
../shared/data/danbooru.csv. Everything is measured in one run, baseline and tagsmith side by
side:

1. throughput: tags/s of ``TagEmbedder.embed`` (no cache) vs transformers' CLIPTextModel on
   inputs padded to 77 (what A1111 and diffusers run), and vs tagsmith's own forward pass on the
   same padded inputs (to separate the algorithm from the implementation);
2. efficiency: achieved GFLOP/s vs a plain fp32 matmul measured in the same run;
3. cache: a second run over the same 10k tags vs the first;
4. start-up: wall time of a one-shot `tagsmith embed` (lean torch forward pass) vs the same job
   done with transformers' CLIPTextModel, each in a fresh process.

    .venv/bin/python benchmarks/encode.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benchmarks/encode.py --quick    # smaller sizes
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running `python benchmarks/encode.py` puts benchmarks/ first on sys.path, where
# benchmarks/tokenize.py would shadow the standard library's tokenize (torch imports it).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse  # noqa: E402
import csv  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DANBOORU = ROOT.parent / "shared" / "data" / "danbooru.csv"
D, LAYERS, MLP = 768, 12, 3072


def full_size_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random ViT-L/14 text weights (canonical CLIPTextModel names)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    from tagsmith.model.config import EncoderConfig, expected_shapes

    w = {}
    for name, shape in expected_shapes(EncoderConfig()).items():  # SD1.5's ViT-L/14 text model
        if name.startswith("final_layer_norm."):
            w[name] = torch.ones(shape) if name.endswith("weight") else torch.zeros(shape)
        elif ".layer_norm" in name and name.endswith("weight"):
            w[name] = 1 + rnd(*shape)
        else:
            w[name] = rnd(*shape)
    return w


def save_checkpoint(weights: dict[str, torch.Tensor], path: Path) -> Path:
    """An A1111-layout single-file checkpoint holding the encoder (fp32)."""
    from safetensors.torch import save_file

    prefix = "cond_stage_model.transformer.text_model."
    tensors = {prefix + k: v.contiguous() for k, v in weights.items()}
    tensors[prefix + "embeddings.position_ids"] = torch.arange(77)[None]
    save_file(tensors, str(path))
    return path


def danbooru_tags(n: int, seed: int) -> list[str]:
    from tagsmith.text.tokenizer import normalize_tag

    with DANBOORU.open(encoding="utf-8", newline="") as fh:
        rows = [r[0] for r in csv.reader(fh) if r]
    rng = random.Random(seed)
    return [normalize_tag(t) for t in rng.sample(rows, n)]


def matmul_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:  # noqa: ANN001
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def padded77(tok, tags: list[str]) -> torch.Tensor:  # noqa: ANN001
    rows = []
    for ids in tok.encode_batch(tags):
        ids = ids[:75]
        rows.append([49406, *ids, 49407] + [49407] * (75 - len(ids)))
    return torch.tensor(rows)


def bench_throughput(args, model_path: Path, weights, tags: list[str]) -> dict:  # noqa: ANN001
    from tagsmith.model.embedding import EncoderSettings, open_embedder
    from tagsmith.text.tokenizer import load_tokenizer

    tok = load_tokenizer()
    emb = open_embedder(EncoderSettings(model=str(model_path), use_cache=False,
                                        device=args.device, dtype=args.dtype))
    emb.embed(tags[:32])  # load the weights, warm the allocator
    enc = emb.encoder()
    before = enc.positions_run
    seconds = _timed(lambda: emb.embed(tags))
    positions = enc.positions_run - before
    # GEMM work per position (qkv, out, fc1, fc2); attention over <= 77 keys is ~1% of it
    executed = LAYERS * 24 * D * D * positions
    useful = LAYERS * 24 * D * D * sum(len(ids) for ids in tok.encode_batch(tags))
    out = {
        "tagsmith_tags_s": len(tags) / seconds,
        "executed_gflops": executed / seconds / 1e9,
        "useful_gflops": useful / seconds / 1e9,
        "positions_run": positions,
        "tag_tokens": sum(len(ids) for ids in tok.encode_batch(tags)),
        "mean_tokens": statistics.mean(len(i) for i in tok.encode_batch(tags)),
    }

    # tagsmith's forward pass on the padded-to-77 inputs (same kernels, no dynamic padding)
    sub = tags[: args.baseline_tags]
    ids = padded77(tok, sub)
    bs = args.baseline_batch
    enc.forward(ids[:4])
    t = _timed(lambda: [enc.forward(ids[i:i + bs]) for i in range(0, len(sub), bs)])
    out["lean77_tags_s"] = len(sub) / t

    # the baseline: transformers' CLIPTextModel, padded to 77, as A1111/diffusers run it
    t0 = time.perf_counter()
    from transformers import CLIPTextConfig, CLIPTextModel

    out["transformers_import_s"] = time.perf_counter() - t0
    cfg = CLIPTextConfig(hidden_size=D, intermediate_size=MLP, num_hidden_layers=LAYERS,
                         num_attention_heads=12, max_position_embeddings=77,
                         hidden_act="quick_gelu", eos_token_id=49407)
    ref = CLIPTextModel(cfg).eval()
    ref.load_state_dict(weights, strict=False)
    dev = enc.device
    ref = ref.to(device=dev, dtype=enc.dtype)
    with torch.inference_mode():
        ref(ids[:4].to(dev))
        t = _timed(lambda: [ref(ids[i:i + bs].to(dev)).last_hidden_state
                            for i in range(0, len(sub), bs)])
        if dev.type == "cuda":
            torch.cuda.synchronize()
    out["baseline_tags_s"] = len(sub) / t
    # the same numbers either way
    with torch.inference_mode():
        states = ref(ids[:16].to(dev)).last_hidden_state.float().cpu()
    lens = [min(75, len(i)) for i in tok.encode_batch(sub[:16])]
    ref_vec = np.stack([states[r, 1:1 + n].mean(0).numpy() for r, n in enumerate(lens)])
    out["max_abs_diff"] = float(np.abs(emb.embed(sub[:16]) - ref_vec).max())
    emb.close()
    return out


def bench_cache(args, model_path: Path, tags: list[str], cache_dir: Path) -> dict:  # noqa: ANN001
    from tagsmith.model.embedding import EncoderSettings, open_embedder

    settings = EncoderSettings(model=str(model_path), cache_dir=cache_dir, device=args.device,
                               dtype=args.dtype)
    t = time.perf_counter()
    with open_embedder(settings) as emb:
        first_vectors = emb.embed(tags)
    first = time.perf_counter() - t
    t = time.perf_counter()
    with open_embedder(settings) as emb:
        second_vectors = emb.embed(tags)
        loaded = emb.loaded
    second = time.perf_counter() - t
    assert np.array_equal(first_vectors, second_vectors) and not loaded
    return {"first_s": first, "second_s": second, "n": len(tags)}


def bench_startup(args, model_path: Path, cache_dir: Path) -> dict:  # noqa: ANN001
    env = {**os.environ, "TAGSMITH_CACHE_DIR": str(cache_dir), "PYTHONPATH": str(ROOT)}
    py = sys.executable
    lean = [py, "-m", "tagsmith", "embed", "mayonnaise bottle", "-m", str(model_path), "--json",
            "--no-cache", "--device", args.device]
    cached = [py, "-m", "tagsmith", "embed", "mayonnaise bottle", "-m", str(model_path),
              "--json"]
    hf_script = f"""
import torch
from transformers import CLIPTextConfig, CLIPTextModel
from safetensors.torch import load_file
from tagsmith.text.tokenizer import load_tokenizer
sd = load_file({str(model_path)!r})
prefix = "cond_stage_model.transformer.text_model."
sd = {{k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}}
cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, hidden_act="quick_gelu", eos_token_id=49407)
m = CLIPTextModel(cfg).eval()
m.load_state_dict(sd, strict=False)
ids = load_tokenizer().encode("mayonnaise bottle")
with torch.inference_mode():
    out = m(torch.tensor([[49406, *ids, 49407] + [49407] * (75 - len(ids))])).last_hidden_state
print(out[0, 1:1 + len(ids)].mean(0)[:4])
"""
    runs = {
        "import torch": [py, "-c", "import torch"],
        "import transformers CLIPTextModel": [py, "-c", "from transformers import CLIPTextModel"],
        "one-shot, transformers CLIPTextModel": [py, "-c", hf_script],
        "one-shot, tagsmith embed --no-cache": lean,
        "one-shot, tagsmith embed (cached)": cached,
    }
    subprocess.run(cached, env=env, capture_output=True, check=True)  # fill the cache
    out = {}
    for name, cmd in runs.items():
        times = []
        for _ in range(args.startup_repeats):
            t = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, check=True)
            times.append(time.perf_counter() - t)
        out[name] = min(times)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tags", type=int, default=2048, help="tags for the throughput run")
    ap.add_argument("--baseline-tags", type=int, default=128,
                    help="tags for the (slow) padded-to-77 baselines")
    ap.add_argument("--baseline-batch", type=int, default=64)
    ap.add_argument("--cache-tags", type=int, default=10_000)
    ap.add_argument("--startup-repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--quick", action="store_true", help="512 tags, 2k cache tags, 1 repeat")
    ap.add_argument("--skip", nargs="*", default=[], choices=["throughput", "cache", "startup"])
    args = ap.parse_args()
    if args.quick:
        args.tags, args.cache_tags, args.startup_repeats, args.baseline_tags = 512, 2000, 1, 64
    if not DANBOORU.is_file():
        sys.exit(f"{DANBOORU} is missing; this benchmark draws its tags from it.")
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(ROOT))

    print(f"torch {torch.__version__}, {args.threads} threads, device {args.device}, "
          f"CPU: {_cpu_name()}")
    with tempfile.TemporaryDirectory(prefix="tagsmith-bench-") as tmp:
        tmp_path = Path(tmp)
        weights = full_size_weights()
        model = save_checkpoint(weights, tmp_path / "vit-l14-random.safetensors")
        all_tags = danbooru_tags(max(args.tags, args.cache_tags), seed=0)

        if "throughput" not in args.skip:
            mm_before = matmul_gflops(args.threads)
            r = bench_throughput(args, model, weights, all_tags[: args.tags])
            mm = max(mm_before, matmul_gflops(args.threads))
            print(f"\n== throughput: {args.tags} Danbooru tags (mean {r['mean_tokens']:.2f} "
                  f"tokens), ViT-L/14 text model, fp32 ==")
            print(f"  baseline  transformers CLIPTextModel, padded to 77, batch "
                  f"{args.baseline_batch}: {r['baseline_tags_s']:8.1f} tags/s")
            print(f"            tagsmith forward, padded to 77, batch {args.baseline_batch}:"
                  f"        {r['lean77_tags_s']:8.1f} tags/s")
            print(f"  tagsmith  TagEmbedder.embed (prefix tree, shared BOS, no EOS):  "
                  f"{r['tagsmith_tags_s']:8.1f} tags/s   ({r['positions_run']} positions run "
                  f"for {r['tag_tokens']} tag tokens)")
            ratio = r["tagsmith_tags_s"] / r["baseline_tags_s"]
            print(f"  ratio     tagsmith / baseline = {ratio:.1f}x   (target >= 15x)")
            print(f"  matmul    fp32 2048^3 in this run: {mm:.1f} GFLOP/s")
            print(f"  tagsmith  executed {r['executed_gflops']:.1f} GFLOP/s = "
                  f"{100 * r['executed_gflops'] / mm:.0f}% of matmul (target >= 60%); "
                  f"tag tokens as if each ran on its own {r['useful_gflops']:.1f} GFLOP/s "
                  f"= {100 * r['useful_gflops'] / mm:.0f}%")
            print(f"  check     max |tagsmith - CLIPTextModel padded 77| = {r['max_abs_diff']:.2e}")

        if "cache" not in args.skip:
            c = bench_cache(args, model, all_tags[: args.cache_tags], tmp_path / "cache")
            print(f"\n== cache: {c['n']} tags, first run then second run ==")
            print(f"  first (encode + write): {c['first_s']:8.2f} s")
            print(f"  second (all hits):      {c['second_s']:8.2f} s")
            print(f"  ratio                   {c['first_s'] / c['second_s']:8.1f}x   "
                  "(target >= 50x)")

        if "startup" not in args.skip:
            s = bench_startup(args, model, tmp_path / "cache-startup")
            print(f"\n== start-up: wall time of a fresh process (best of "
                  f"{args.startup_repeats}) ==")
            for name, seconds in s.items():
                print(f"  {name:40s} {seconds:6.2f} s")
            base = s["one-shot, transformers CLIPTextModel"]
            lean = s["one-shot, tagsmith embed --no-cache"]
            print(f"  ratio     transformers / tagsmith one-shot = {base / lean:.2f}x")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" x{os.cpu_count()}"
    except OSError:
        pass
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
