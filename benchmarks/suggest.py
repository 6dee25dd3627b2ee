"""Wall time of `tagsmith suggest "mayonnaise bottle" --vocab danbooru.csv` on the full-size
SD1.5 text encoder (ViT-L/14 text model, random weights: the same cost as the real ones).

Each run is a fresh process, as a user types it. Printed side by side:

- first run ever: nothing cached (vocabulary parsed and tokenized, model fingerprinted);
- cold: embedding cache empty; the vocabulary index (built once per file) and the model's
  fingerprint memo are kept (target < 5 s);
- warm: embedding cache filled by the cold run (target < 2.5 s);
- baseline: the same question answered the naive way in one process (load the vocabulary with
  csv, import transformers' CLIPTextModel, encode every form and neighbour padded to 77).

    python benchmarks/suggest.py [--vocab ../shared/data/danbooru.csv] [--runs 3]
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
# The script's folder comes first on sys.path, where benchmarks/tokenize.py would shadow the
# standard library's tokenize module (which torch imports): drop it.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(ROOT / "tests"))
# After the standard library, so benchmarks/tokenize.py cannot shadow it.
sys.path.append(str(Path(__file__).resolve().parent))
from score import full_size_model  # noqa: E402  (same random ViT-L/14 folder, built once)


def run_cli(args: list[str], cache: Path) -> float:
    env = dict(os.environ, TAGSMITH_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tagsmith", *args], env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"tagsmith failed: {proc.stderr}")
    return elapsed


def baseline(model: Path, vocab: Path, forms: list[str], neighbours: list[str]) -> float:
    """Naive: csv + transformers' CLIPTextModel, padded to 77, no caches (one process)."""
    code = f"""
import csv, time, torch
t = time.perf_counter()
from transformers import CLIPTextModel, CLIPTokenizerFast
rows = [r for r in csv.reader(open({str(vocab)!r}, encoding='utf-8'))]
model = CLIPTextModel.from_pretrained({str(model)!r}).eval()
from tagsmith.text.tokenizer import load_tokenizer
tok = load_tokenizer()
texts = {forms + neighbours!r}
ids = [[49406] + tok.encode(x)[:75] + [49407] for x in texts]
ids = torch.tensor([i + [49407] * (77 - len(i)) for i in ids])
with torch.no_grad():
    out = model(input_ids=ids).last_hidden_state
print(time.perf_counter() - t)
"""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                   env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=Path, default=ROOT.parent / "shared" / "data" / "danbooru.csv")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tagsmith-bench")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    model = full_size_model(a.workdir)
    args = ["suggest", "mayonnaise bottle", "--vocab", str(a.vocab), "--model", str(model),
            "--json"]
    first, cold, warm = [], [], []
    for i in range(a.runs):
        cache = Path(tempfile.mkdtemp(prefix="cache", dir=a.workdir))
        first.append(run_cli(args, cache))  # builds the vocab index and fills the cache
        import shutil

        # Cold = nothing in the embedding cache; the parsed vocabulary and the model's
        # fingerprint memo (a stat() away on a second run) stay, as they would for a user.
        shutil.rmtree(cache / "embeddings")
        cold.append(run_cli(args, cache))
        warm.append(run_cli(args, cache))
        shutil.rmtree(cache, ignore_errors=True)
        print(f"run {i + 1}: first {first[-1]:.2f} s, cold {cold[-1]:.2f} s, "
              f"warm {warm[-1]:.2f} s", flush=True)

    import json

    env = dict(os.environ, TAGSMITH_CACHE_DIR=str(a.workdir / "probe"), HF_HUB_OFFLINE="1")
    out = json.loads(subprocess.run([sys.executable, "-m", "tagsmith", *args], env=env,
                                    capture_output=True, text=True, check=True).stdout)
    forms = [c["text"] for c in out["candidates"]]
    neighbours = [n["tag"] for n in out["neighbors"]]
    base = [baseline(model, a.vocab, forms, neighbours) for _ in range(a.runs)]

    med = statistics.median
    print()
    print(f"full-size ViT-L/14 text encoder (random weights), {len(forms)} forms x "
          f"{len(neighbours)} neighbours, vocabulary {a.vocab.name}, median of {a.runs}")
    print(f"{'':34s}{'wall s':>10s}")
    print(f"{'baseline (transformers, pad 77)':34s}{med(base):10.2f}")
    print(f"{'tagsmith first run ever':34s}{med(first):10.2f}")
    print(f"{'tagsmith cold (target < 5 s)':34s}{med(cold):10.2f}   "
          f"{med(base) / med(cold):.1f}x faster than baseline")
    print(f"{'tagsmith warm (target < 2.5 s)':34s}{med(warm):10.2f}   "
          f"{med(base) / med(warm):.1f}x faster than baseline")


if __name__ == "__main__":
    main()
