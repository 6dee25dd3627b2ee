"""What --lora costs, on the full-size SD1.5 text encoder (ViT-L/14 text model, random weights).

1. `tagsmith suggest "mayonnaise bottle" --vocab danbooru.csv` in a fresh process, embedding
   cache empty, then the same with a rank-32 kohya LoRA on all 72 text-encoder layers, whose
   vectors are all new to the cache (target: the LoRA adds < 1 s). The base numbers --lora
   shows beside come from the cache the first run filled, as they do for a user.
2. `tagsmith lora FILE --model BASE --vocab danbooru.csv --vocab-top N` with the base model's
   vectors already cached, against one embedding pass over the same tags (target <= 1.2x).

    python benchmarks/lora.py [--vocab ../shared/data/danbooru.csv] [--tags 20000] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
from score import _load, full_size_model  # noqa: E402


def rank32_lora(folder: Path) -> Path:
    """A kohya LoRA (fp16, rank 32, alpha 16) on every q/k/v/out/fc1/fc2 of the 12 layers."""
    target = folder / "rank32-te.safetensors"
    if target.is_file():
        return target
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    shapes = {"self_attn_q_proj": (768, 768), "self_attn_k_proj": (768, 768),
              "self_attn_v_proj": (768, 768), "self_attn_out_proj": (768, 768),
              "mlp_fc1": (3072, 768), "mlp_fc2": (768, 3072)}
    tensors = {}
    for n in range(12):
        for name, (out, inp) in shapes.items():
            key = f"lora_te_text_model_encoder_layers_{n}_{name}"
            tensors[f"{key}.lora_down.weight"] = (torch.randn(32, inp, generator=g) * 0.02).half()
            tensors[f"{key}.lora_up.weight"] = (torch.randn(out, 32, generator=g) * 0.02).half()
            tensors[f"{key}.alpha"] = torch.tensor(16.0).half()
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": "32",
            "ss_network_alpha": "16", "ss_base_model_version": "sd_v1",
            "ss_tag_frequency": json.dumps({"10_mayobottle": {"mayobottle": 40, "1girl": 30,
                                                              "bottle": 20}}),
            "ss_dataset_dirs": json.dumps({"10_mayobottle": {"n_repeats": 10, "img_count": 40}})}
    save_file(tensors, str(target), metadata=meta)
    return target


def run_cli(args: list[str], cache: Path) -> float:
    env = dict(os.environ, TAGSMITH_CACHE_DIR=str(cache), HF_HUB_OFFLINE="1")
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tagsmith", *args], env=env,
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"tagsmith failed: {proc.stderr}")
    return elapsed


def embedding_pass(model: Path, texts: list[str], cache: Path) -> float:
    """One pass over ``texts`` in a fresh process: open the model, embed, no cache hits."""
    code = f"""
import json, sys, time
t = time.perf_counter()
from tagsmith.model.embedding import EncoderSettings, open_embedder
texts = json.load(open({str(cache / 'texts.json')!r}))
with open_embedder(EncoderSettings(model={str(model)!r}, use_cache=False, device="cpu")) as e:
    e.expect_positions(10 ** 9)
    e.embed(texts)
"""
    (cache / "texts.json").write_text(json.dumps(texts))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, env=dict(os.environ,
                   HF_HUB_OFFLINE="1"))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vocab", type=Path, default=ROOT.parent / "shared" / "data" / "danbooru.csv")
    ap.add_argument("--tags", type=int, default=20_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "tagsmith-bench")
    a = ap.parse_args()
    a.workdir.mkdir(parents=True, exist_ok=True)
    model = full_size_model(a.workdir)
    lora = rank32_lora(a.workdir)
    print(f"load before: {_load()}", flush=True)

    suggest = ["suggest", "mayonnaise bottle", "--vocab", str(a.vocab), "--model", str(model),
               "--json", "--device", "cpu"]
    plain, with_lora = [], []
    for i in range(a.runs):
        cache = Path(tempfile.mkdtemp(prefix="cache", dir=a.workdir))
        run_cli(suggest, cache)  # vocabulary index and fingerprint memo, as a user has them
        shutil.rmtree(cache / "embeddings")
        plain.append(run_cli(suggest, cache))
        # As a user runs it: the same suggest again with the LoRA. Its forms are new to the
        # cache (another fingerprint); the base numbers shown beside come from the cache the
        # plain run filled, and the nearest-tag pool is the base's.
        with_lora.append(run_cli([*suggest, "--lora", str(lora)], cache))
        shutil.rmtree(cache, ignore_errors=True)
        print(f"run {i + 1}: suggest {plain[-1]:.2f} s, with --lora {with_lora[-1]:.2f} s",
              flush=True)

    from tagsmith.analysis.lora_report import lora_info
    from tagsmith.text.vocab import read_vocabulary

    voc = read_vocabulary(a.vocab)
    top = [e.text for e in sorted(voc.entries, key=lambda e: -(e.count or 0))[: a.tags]]
    caption = [t.tag for t in lora_info(lora).tags]
    texts = list(dict.fromkeys([*caption, *top]))
    cache = Path(tempfile.mkdtemp(prefix="cache", dir=a.workdir))
    lora_args = ["lora", str(lora), "--model", str(model), "--vocab", str(a.vocab),
                 "--vocab-top", str(a.tags), "--json", "--device", "cpu", "--clip-skip", "1"]
    run_cli(["embed", "x", "--model", str(model), "--device", "cpu"], cache)  # fingerprint memo
    base_fp = _base_fingerprint(model, cache)
    passes, reports = [], []
    for i in range(a.runs):
        passes.append(embedding_pass(model, texts, a.workdir))
        if i == 0:  # fills the base model's cache (and the LoRA's, removed below)
            run_cli(lora_args, cache)
        for entry in (cache / "embeddings").iterdir():  # keep only the base model's vectors
            if base_fp not in entry.name:
                entry.unlink()
        reports.append(run_cli(lora_args, cache))
        print(f"run {i + 1}: one pass {passes[-1]:.2f} s, lora --model {reports[-1]:.2f} s",
              flush=True)
    shutil.rmtree(cache, ignore_errors=True)

    med = statistics.median
    print()
    print(f"full-size ViT-L/14 text encoder (random weights), CPU, median of {a.runs}; "
          f"load after: {_load()}")
    print(f"suggest cold                    {med(plain):7.2f} s")
    added = med([w - p for w, p in zip(with_lora, plain)])  # each run's pair, side by side
    print(f"suggest cold --lora (rank 32)   {med(with_lora):7.2f} s   "
          f"+{added:.2f} s, median of the runs' differences (target < 1 s)")
    print(f"one embedding pass, {len(texts):,} tags {med(passes):7.2f} s")
    print(f"lora --model, base cached       {med(reports):7.2f} s   "
          f"{med(reports) / med(passes):.2f}x (target <= 1.2x)")


def _base_fingerprint(model: Path, cache: Path) -> str:
    from tagsmith.model.embedding import EncoderSettings, open_embedder

    with open_embedder(EncoderSettings(model=str(model), cache_dir=cache)) as e:
        return e.fingerprint


if __name__ == "__main__":
    main()
