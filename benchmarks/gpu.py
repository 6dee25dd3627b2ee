"""GPU benchmark: encode, suggest and the full `score` on one GPU, baseline beside tagsmith.

Run through ``benchmarks/gpu.sh`` (which bounds the wall time). Parts, each printing baseline,
tagsmith and the ratio:

1. encode: ``TagEmbedder.embed`` (fp16, prefix trees, depth-bucketed attention, pooling on
   the device) over Danbooru tags vs transformers' ``CLIPTextModel`` in fp16 padded to 77;
   tagsmith's executed TFLOP/s against an fp16 matmul measured in the same run and against
   the GPU's nominal dense fp16 peak (``--peak-tflops``; H200: 989);
2. precision: fp16 on the GPU vs fp32 (GPU, and CPU on a sample): largest vector difference,
   lowest cosine, and how many of each tag's 10 nearest tags agree;
3. suggest: one-shot ``tagsmith suggest`` cold and warm vs a fresh process that loads
   CLIPTextModel on the GPU and encodes the same texts padded to 77;
4. score: the whole vocabulary end to end (``tagsmith score``, empty cache; target < 60 s on
   SD1.5) vs CLIPTextModel padded to 77 plus fp32 all-pairs neighbours on the GPU.

``--smoke`` runs every part on the CPU with a tiny random model and a few hundred tags (a
check that the script works, not a measurement).

    bash benchmarks/gpu.sh            # on a GPU machine, < 8 minutes
    bash benchmarks/gpu.sh --smoke    # anywhere, < 1 minute
"""

from __future__ import annotations

import sys
from pathlib import Path

# benchmarks/tokenize.py would shadow the standard library's tokenize (torch imports it).
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse  # noqa: E402
import csv  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
# After the standard library, so benchmarks/tokenize.py cannot shadow it.
sys.path.append(str(Path(__file__).resolve().parent))
DANBOORU = ROOT.parent / "shared" / "data" / "danbooru.csv"


def build_model(workdir: Path, smoke: bool) -> Path:
    """A CLIPTextModel folder with random weights: full-size ViT-L/14 (fp16, as SD1.5 stores
    it; the same folder benchmarks/suggest.py builds) or, for --smoke, the tests' tiny model."""
    if smoke:
        import tiny_models as tm

        folder = workdir / "tiny"
        if (folder / "model.safetensors").is_file():
            return folder
        return tm.save_hf_folder(tm.tiny_weights(seed=0, config=tm.TINY), folder)
    # suggest.py holds the fp16 copy and re-exports score.py's full-size builder.
    from suggest import fp16_copy, full_size_model

    return fp16_copy(full_size_model(workdir), workdir)


def danbooru_texts(n: int | None) -> list[str]:
    from tagsmith.text.tokenizer import normalize_tag

    with DANBOORU.open(encoding="utf-8", newline="") as fh:
        tags = [normalize_tag(r[0]) for r in csv.reader(fh) if r]
    tags = list(dict.fromkeys(t for t in tags if t))
    return tags if n is None else tags[:n]


def reference_model(model: Path, device: str, dtype):  # noqa: ANN001, ANN201
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(str(model), torch_dtype=dtype).to(device).eval()


def padded77_vectors(ref, texts: list[str], device: str, batch: int) -> np.ndarray:  # noqa: ANN001
    """The baseline: every text padded to 77, mean over its own tokens."""
    import torch

    from tagsmith.text.tokenizer import load_tokenizer

    tok = load_tokenizer()
    out = []
    with torch.inference_mode():
        for i in range(0, len(texts), batch):
            ids = [x[:75] for x in tok.encode_batch(texts[i:i + batch])]
            rows = torch.tensor([[49406, *x, 49407] + [49407] * (75 - len(x)) for x in ids],
                                device=device)
            states = ref(input_ids=rows).last_hidden_state
            lens = torch.tensor([len(x) for x in ids], device=device)
            mask = (torch.arange(77, device=device)[None, :] >= 1) & (
                torch.arange(77, device=device)[None, :] <= lens[:, None])
            pooled = (states * mask[..., None]).sum(1) / lens[:, None]
            out.append(pooled.float().cpu().numpy())
    return np.concatenate(out)


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def part_encode(a: argparse.Namespace, model: Path) -> None:
    import torch

    from tagsmith.model.embedding import EncoderSettings, open_embedder

    texts = danbooru_texts(a.encode_tags)
    dtype = "fp32" if a.smoke else "fp16"
    with open_embedder(EncoderSettings(model=str(model), device=a.device, dtype=dtype,
                                       use_cache=False)) as emb:
        emb.embed(texts[:256])  # load, warm the kernels
        enc = emb.encoder()
        before = enc.positions_run
        sync(a.device)
        t = time.perf_counter()
        emb.embed(texts)
        sync(a.device)
        ours = time.perf_counter() - t
        positions = enc.positions_run - before
    cfg_width, layers = (128, 3) if a.smoke else (768, 12)
    flop = layers * 24 * cfg_width * cfg_width * positions
    n = 8192 if not a.smoke else 256
    x = torch.randn(n, n, device=a.device, dtype=torch.float16 if not a.smoke else torch.float32)
    x @ x
    sync(a.device)
    t = time.perf_counter()
    for _ in range(5):
        x @ x
    sync(a.device)
    mm_tflops = 5 * 2 * n**3 / (time.perf_counter() - t) / 1e12
    del x
    ref = reference_model(model, a.device, torch.float16 if not a.smoke else torch.float32)
    base_texts = texts[: a.baseline_tags]
    padded77_vectors(ref, base_texts[:64], a.device, 64)
    sync(a.device)
    t = time.perf_counter()
    padded77_vectors(ref, base_texts, a.device, 512)
    sync(a.device)
    base = time.perf_counter() - t
    del ref
    ours_rate, base_rate = len(texts) / ours, len(base_texts) / base
    tflops = flop / ours / 1e12
    print(f"\n== encode: {len(texts)} Danbooru tags, {dtype} on {a.device} ==")
    print(f"  baseline  CLIPTextModel padded to 77, batch 512: {base_rate:10.0f} tags/s "
          f"({len(base_texts)} tags)")
    print(f"  tagsmith  TagEmbedder.embed:                     {ours_rate:10.0f} tags/s "
          f"({positions} positions, {ours:.2f} s)")
    print(f"  ratio     {ours_rate / base_rate:.1f}x")
    print(f"  tagsmith  {tflops:.1f} TFLOP/s executed = {100 * tflops / mm_tflops:.0f}% of the "
          f"{mm_tflops:.0f} TFLOP/s {n}^3 matmul measured here, "
          f"{100 * tflops / a.peak_tflops:.1f}% of the nominal {a.peak_tflops:.0f} TFLOP/s peak")


def part_precision(a: argparse.Namespace, model: Path) -> None:
    from tagsmith.analysis.neighbors import nearest_neighbors
    from tagsmith.model.embedding import EncoderSettings, open_embedder

    texts = danbooru_texts(a.precision_tags)

    def vectors(device: str, dtype: str, sample: list[str]) -> np.ndarray:
        with open_embedder(EncoderSettings(model=str(model), device=device, dtype=dtype,
                                           use_cache=False)) as emb:
            return emb.embed(sample)

    low_dtype = "fp32" if a.smoke else "fp16"
    low = vectors(a.device, low_dtype, texts)
    full = vectors(a.device, "fp32", texts)
    cpu_n = min(len(texts), a.cpu_tags)
    cpu = vectors("cpu", "fp32", texts[:cpu_n])

    def cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)

    k = 10
    n_low = nearest_neighbors(low, k, backend="torch", device=a.device)
    n_full = nearest_neighbors(full, k, backend="torch", device=a.device, products="fp32")
    overlap = np.mean([len(set(x) & set(y)) / k
                       for x, y in zip(n_low.indices.tolist(), n_full.indices.tolist())])
    print(f"\n== precision: {len(texts)} tags, {low_dtype} on {a.device} vs fp32 ==")
    print(f"  vs fp32 on {a.device}: max |diff| {np.abs(low - full).max():.2e}, "
          f"lowest cosine {cosines(low, full).min():.6f}; "
          f"top-{k} neighbours shared {100 * overlap:.1f}%")
    print(f"  vs fp32 on the CPU ({cpu_n} tags): max |diff| "
          f"{np.abs(low[:cpu_n] - cpu).max():.2e}, lowest cosine "
          f"{cosines(low[:cpu_n], cpu).min():.6f}; fp32 {a.device} vs CPU max |diff| "
          f"{np.abs(full[:cpu_n] - cpu).max():.2e}")


def run_cli(args: list[str], cache: Path) -> float:
    env = dict(os.environ, TAGSMITH_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tagsmith", *args], env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"tagsmith {args[0]} failed: {proc.stderr[-2000:]}")
    return time.perf_counter() - t


BASELINE = """
import sys, time, json, torch
sys.path[:0] = {paths!r}
from gpu import padded77_vectors, reference_model
texts = json.load(open({texts!r}))
ref = reference_model({model!r}, {device!r}, {dtype})
padded77_vectors(ref, texts, {device!r}, 512)
"""


def baseline_process(a: argparse.Namespace, model: Path, texts: list[str], work: Path) -> float:
    path = work / "baseline-texts.json"
    path.write_text(json.dumps(texts))
    code = BASELINE.format(paths=[str(ROOT / "benchmarks"), str(ROOT / "tests")],
                           texts=str(path), model=str(model), device=a.device,
                           dtype="torch.float32" if a.smoke else "torch.float16")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ,
                   HF_HUB_OFFLINE="1"))
    return time.perf_counter() - t


def part_suggest(a: argparse.Namespace, model: Path, work: Path) -> None:
    import shutil

    cache = Path(tempfile.mkdtemp(prefix="cache-suggest", dir=work))
    args = ["suggest", "mayonnaise bottle", "--vocab", str(a.vocab), "--model", str(model),
            "--device", a.device, "--json"]
    first = run_cli(args, cache)
    out = json.loads(subprocess.run(
        [sys.executable, "-m", "tagsmith", *args], capture_output=True, text=True, check=True,
        env=dict(os.environ, TAGSMITH_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")).stdout)
    texts = [c["text"] for c in out["candidates"]] + [n["tag"] for n in out["neighbors"]]
    shutil.rmtree(cache / "embeddings")
    cold = run_cli(args, cache)
    warm = run_cli(args, cache)
    base = baseline_process(a, model, texts, work)
    print(f"\n== suggest \"mayonnaise bottle\" on {a.device} ({len(texts)} texts) ==")
    print(f"  baseline  fresh process, CLIPTextModel on {a.device}, padded to 77: {base:6.2f} s")
    print(f"  tagsmith  first run {first:6.2f} s, cold {cold:6.2f} s, warm {warm:6.2f} s")
    print(f"  ratio     cold {base / cold:.1f}x, warm {base / warm:.1f}x; cold / warm "
          f"{cold / warm:.2f}x")


def part_score(a: argparse.Namespace, model: Path, work: Path) -> None:
    import torch

    vocab = a.vocab
    if a.score_tags is not None:
        vocab = work / "score-subset.csv"
        with a.vocab.open(encoding="utf-8") as src:
            vocab.write_text("".join(line for _, line in zip(range(a.score_tags), src)),
                             encoding="utf-8")
    cache = Path(tempfile.mkdtemp(prefix="cache-score", dir=work))
    out = work / "scores.csv"
    ours = run_cli(["score", str(vocab), "-o", str(out), "--model", str(model), "--device",
                    a.device], cache)
    n = sum(1 for _ in out.open(encoding="utf-8")) - 1
    texts = danbooru_texts(n)
    t = time.perf_counter()
    ref = reference_model(model, a.device, torch.float32 if a.smoke else torch.float16)
    vecs = padded77_vectors(ref, texts, a.device, 512)
    del ref
    x = torch.from_numpy(vecs).to(a.device)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    for s in range(0, len(x), 4096):
        sims = x[s:s + 4096] @ x.T
        torch.topk(sims, min(6, len(x)), dim=1)
    sync(a.device)
    base = time.perf_counter() - t
    print(f"\n== score: {n} tags, end to end on {a.device}, empty cache ==")
    print(f"  baseline  CLIPTextModel padded to 77 + fp32 all-pairs top-k (no tokens, no "
          f"file): {base:7.2f} s")
    print(f"  tagsmith  tagsmith score -o scores.csv:                                      "
          f"{ours:7.2f} s   (target < 60 s for all Danbooru tags)")
    print(f"  ratio     {base / ours:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny model, few tags")
    ap.add_argument("--device", default=None)
    ap.add_argument("--vocab", type=Path, default=DANBOORU)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tagsmith-gpu")
    ap.add_argument("--peak-tflops", type=float, default=989.0,
                    help="the GPU's nominal dense fp16 peak (H200 SXM: 989)")
    ap.add_argument("--parts", nargs="*", default=["encode", "precision", "suggest", "score"])
    a = ap.parse_args()
    a.device = a.device or ("cpu" if a.smoke else "cuda")
    a.encode_tags = 512 if a.smoke else None  # all Danbooru tags
    a.baseline_tags = 128 if a.smoke else 16384
    a.precision_tags = 256 if a.smoke else 8192
    a.cpu_tags = 64 if a.smoke else 512
    a.score_tags = 300 if a.smoke else None
    a.workdir.mkdir(parents=True, exist_ok=True)
    import torch

    where = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    print(f"torch {torch.__version__}, device {a.device} ({where}), load "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    model = build_model(a.workdir, a.smoke)
    for part in a.parts:
        t = time.perf_counter()
        if part == "encode":
            part_encode(a, model)
        elif part == "precision":
            part_precision(a, model)
        elif part == "suggest":
            part_suggest(a, model, a.workdir)
        elif part == "score":
            part_score(a, model, a.workdir)
        else:
            raise SystemExit(f"unknown part {part!r}")
        print(f"  ({part}: {time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
