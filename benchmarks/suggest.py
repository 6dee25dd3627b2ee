"""Wall time of `tagsmith suggest "mayonnaise bottle" --vocab danbooru.csv` on the full-size
SD1.5 text encoder (ViT-L/14 text model, random weights: the same cost as the real ones).

Each run is a fresh process, as a user types it. Printed side by side:

- first run ever: nothing cached (vocabulary parsed and tokenized, model fingerprinted);
- cold: embedding cache empty; the vocabulary index (built once per file) and the model's
  fingerprint memo are kept (target < 5 s);
- warm: embedding cache filled by the cold run (target < 2.5 s);
- baseline: the same question answered the naive way in one process (load the vocabulary with
  csv, import transformers' CLIPTextModel, encode every form and neighbour padded to 77).

- peak memory (VmHWM) of the cold and warm runs (target: cold < 600 MB), and the cold / warm
  ratio (target <= 1.6x), for `suggest` and for `trigger "cross tattoo" --part arm --part chest`.

The model's weights are stored in fp16 by default, as SD1.5 checkpoints hold them (`--weights
fp32` for an fp32 file). Cold runs keep the cache folder's fp32 weight copy, which the first run
ever writes (``tagsmith.model.weights_cache``).

    python benchmarks/suggest.py [--vocab ../shared/data/danbooru.csv] [--runs 3] [--weights fp16]
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

# Runs the CLI as `python -m tagsmith` does, then records the process's peak RSS (VmHWM, not
# ru_maxrss: Linux carries a parent's peak into its child's ru_maxrss).
_WITH_PEAK = """
import atexit, os, runpy, sys
def _peak():
    hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
    open(os.environ["TAGSMITH_BENCH_PEAK"], "w").write(hwm)
atexit.register(_peak)
sys.argv = ["tagsmith", *sys.argv[1:]]
runpy.run_module("tagsmith", run_name="__main__")
"""

PEAKS: dict[float, float] = {}  # wall time of a run -> its peak RSS in MB


def run_cli(args: list[str], cache: Path) -> float:
    peak = cache.parent / f"{cache.name}.peak"
    env = dict(os.environ, TAGSMITH_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1",
               TAGSMITH_BENCH_PEAK=str(peak))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _WITH_PEAK, *args], env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"tagsmith failed: {proc.stderr}")
    PEAKS[elapsed] = int(peak.read_text()) / 1024
    return elapsed


def fp16_copy(model: Path, workdir: Path) -> Path:
    """The random ViT-L/14 folder with its weights stored in fp16, as SD1.5 files hold them."""
    target = workdir / "vit-l-14-random-fp16"
    if (target / "model.safetensors").is_file():
        return target
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    target.mkdir(parents=True, exist_ok=True)
    shutil.copy(model / "config.json", target / "config.json")
    tensors = {k: v if v.dtype == torch.int64 else v.half()
               for k, v in load_file(str(model / "model.safetensors")).items()}
    save_file(tensors, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def measure(args: list[str], workdir: Path, runs: int, label: str) -> dict[str, list]:
    """first / cold / warm wall times and peak RSS of ``runs`` rounds in fresh cache folders."""
    import shutil

    out: dict[str, list] = {"first": [], "cold": [], "warm": [], "cold_mb": [], "warm_mb": []}
    for i in range(runs):
        cache = Path(tempfile.mkdtemp(prefix="cache", dir=workdir))
        out["first"].append(run_cli(args, cache))  # vocab index, fingerprint, weight copy
        # Cold = nothing in the embedding cache; the parsed vocabulary, the model's fingerprint
        # memo and its fp32 weight copy stay, as they would for a user.
        shutil.rmtree(cache / "embeddings")
        out["cold"].append(run_cli(args, cache))
        out["cold_mb"].append(PEAKS[out["cold"][-1]])
        out["warm"].append(run_cli(args, cache))
        out["warm_mb"].append(PEAKS[out["warm"][-1]])
        shutil.rmtree(cache, ignore_errors=True)
        print(f"{label} run {i + 1}: first {out['first'][-1]:.2f} s, cold {out['cold'][-1]:.2f} s "
              f"({out['cold_mb'][-1]:.0f} MB), warm {out['warm'][-1]:.2f} s "
              f"({out['warm_mb'][-1]:.0f} MB)   load {os.getloadavg()[0]:.1f}", flush=True)
    return out


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
    ap.add_argument("--weights", choices=["fp16", "fp32"], default="fp16")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tagsmith-bench")
    ap.add_argument("--skip-baseline", action="store_true")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    model = full_size_model(a.workdir)
    if a.weights == "fp16":
        model = fp16_copy(model, a.workdir)
    print(f"load average at start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    args = ["suggest", "mayonnaise bottle", "--vocab", str(a.vocab), "--model", str(model),
            "--json"]
    trigger = ["trigger", "cross tattoo", "--part", "arm", "--part", "chest", "--vocab",
               str(a.vocab), "--model", str(model), "--json"]
    sug = measure(args, a.workdir, a.runs, "suggest")
    trg = measure(trigger, a.workdir, a.runs, "trigger")

    import json

    med = statistics.median
    base = None
    if not a.skip_baseline:
        env = dict(os.environ, TAGSMITH_CACHE_DIR=str(a.workdir / "probe"), HF_HUB_OFFLINE="1")
        out = json.loads(subprocess.run([sys.executable, "-m", "tagsmith", *args], env=env,
                                        capture_output=True, text=True, check=True).stdout)
        forms = [c["text"] for c in out["candidates"]]
        neighbours = [n["tag"] for n in out["neighbors"]]
        base = med([baseline(model, a.vocab, forms, neighbours) for _ in range(a.runs)])

    print()
    print(f"full-size ViT-L/14 text encoder (random weights, stored {a.weights}), vocabulary "
          f"{a.vocab.name}, median of {a.runs}; load average now "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if base is not None:
        print(f"{'baseline (transformers, pad 77)':34s}{base:8.2f} s")
    for name, r in (("suggest", sug), ("trigger", trg)):
        cold, warm = med(r["cold"]), med(r["warm"])
        print(f"{name:8s} first run ever {med(r['first']):6.2f} s | cold {cold:6.2f} s, peak "
              f"{med(r['cold_mb']):5.0f} MB | warm {warm:6.2f} s, peak {med(r['warm_mb']):5.0f} MB"
              f" | cold / warm {cold / warm:.2f}x (target <= 1.6x, cold peak < 600 MB)")
    if base is not None:
        cold, warm = med(sug["cold"]), med(sug["warm"])
        print(f"suggest cold is {base / cold:.1f}x, warm {base / warm:.1f}x faster than the "
              "baseline")


if __name__ == "__main__":
    main()
