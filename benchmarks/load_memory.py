"""Peak memory for loading SD1.5's text encoder from a ~2 GB single-file checkpoint.

Writes a checkpoint shaped like SD1.5's fp16 ``.safetensors`` (text encoder under
``cond_stage_model.transformer.text_model.``, plus UNet and VAE filler to ~2 GB; random data)
into a temp dir, then measures each way of loading in a fresh process, by peak RSS
(``VmHWM``):

- floor: ``import torch`` and tagsmith, nothing loaded;
- baselines: read the whole file and ``safetensors.torch.load`` it (A1111's non-mmap path and
  older loaders), and ``safetensors.torch.load_file`` (memory-mapped state dict), each keeping
  the encoder in fp32;
- tagsmith: ``open_embedder`` + load on CPU in fp32 + embed one tag (reads only the encoder's
  tensors).

    .venv/bin/python benchmarks/load_memory.py [--size-gb 2.0] [--encoder-dtype fp16]
"""

from __future__ import annotations

import sys
from pathlib import Path

# Running `python benchmarks/load_memory.py` puts benchmarks/ first on sys.path, where
# benchmarks/tokenize.py would shadow the standard library's tokenize.
if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path.pop(0)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from tagsmith.model.config import EncoderConfig, expected_shapes

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "cond_stage_model.transformer.text_model."


def write_checkpoint(path: Path, size_gb: float, encoder_dtype: str) -> int:
    """Stream a safetensors file to disk without holding it in memory; returns its size."""
    code, item = {"fp16": ("F16", 2), "fp32": ("F32", 4), "bf16": ("BF16", 2)}[encoder_dtype]
    tensors: list[tuple[str, str, tuple[int, ...], int]] = []
    for name, shape in expected_shapes(EncoderConfig()).items():
        tensors.append((PREFIX + name, code, shape, item))
    tensors.append((PREFIX + "embeddings.position_ids", "I64", (1, 77), 8))
    enc_bytes = sum(int(np.prod(s)) * n for _, _, s, n in tensors)
    filler = max(0, int(size_gb * 1e9) - enc_bytes)
    block = 1280 * 1280 * 3 * 3  # a UNet-sized conv weight, fp16
    i = 0
    while filler > 0:
        n = min(block, filler // 2)
        tensors.append((f"model.diffusion_model.filler.{i}.weight", "F16", (n,), 2))
        filler -= 2 * n
        i += 1
        if n == 0:
            break
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dt, shape, n in tensors:
        size = int(np.prod(shape)) * n
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    noise = (rng.standard_normal(8 * 1024 * 1024) * 0.02).astype(np.float16).tobytes()
    with path.open("wb") as fh:
        fh.write(len(raw).to_bytes(8, "little"))
        fh.write(raw)
        for _name, dt, shape, n in tensors:
            size = int(np.prod(shape)) * n
            if dt == "I64":
                fh.write(np.arange(77, dtype="<i8").tobytes())
                continue
            if dt == "F32":
                vals = rng.standard_normal(int(np.prod(shape))).astype("<f4") * 0.02
                fh.write(vals.tobytes())
                continue
            while size > 0:  # fp16/bf16 noise; bf16 reads these bits as other small numbers
                chunk = noise[: min(size, len(noise))]
                fh.write(chunk)
                size -= len(chunk)
    return path.stat().st_size


# VmHWM, not ru_maxrss: Linux carries the spawning parent's peak into a child's ru_maxrss.
MEASURE = """
import sys, time
t = time.perf_counter()
{body}
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1]
print("RESULT", int(hwm) * 1024, time.perf_counter() - t)
"""

FLOOR = """
import torch
import tagsmith.model.embedding, tagsmith.model.encoder
"""
BASELINE_READ = """
import torch
from safetensors.torch import load
sd = load(open(sys.argv[1], "rb").read())
enc = {{k: v.float() for k, v in sd.items() if k.startswith("{prefix}")}}
del sd
total = sum(float(v.sum()) for v in enc.values())  # use the weights, as a forward pass would
"""
BASELINE_MMAP = """
import torch
from safetensors.torch import load_file
sd = load_file(sys.argv[1])
enc = {{k: v.float() for k, v in sd.items() if k.startswith("{prefix}")}}
del sd
total = sum(float(v.sum()) for v in enc.values())  # use the weights, as a forward pass would
"""
TAGSMITH = """
import torch
from tagsmith.model.embedding import EncoderSettings, open_embedder
e = open_embedder(EncoderSettings(model=sys.argv[1], device="cpu", dtype="fp32", use_cache=False))
v = e.embed(["mayonnaise bottle"])
assert e.encoder().dtype == torch.float32
"""


def measure(body: str, checkpoint: Path) -> tuple[int, float]:
    code = MEASURE.format(body=body.format(prefix=PREFIX))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, str(checkpoint)], capture_output=True,
                         text=True, env=env, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    _, rss, seconds = line.split()
    return int(rss), float(seconds)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-gb", type=float, default=2.0)
    ap.add_argument("--encoder-dtype", default="fp16", choices=["fp16", "fp32", "bf16"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="tagsmith-mem-") as tmp:
        ckpt = Path(tmp) / "sd15-like.safetensors"
        t = time.perf_counter()
        size = write_checkpoint(ckpt, args.size_gb, args.encoder_dtype)
        print(f"checkpoint: {size / 1e9:.2f} GB ({args.encoder_dtype} encoder + UNet/VAE filler), "
              f"written in {time.perf_counter() - t:.1f} s")
        rows = [
            ("floor: import torch + tagsmith", FLOOR),
            ("baseline: read whole file, load(), keep encoder fp32", BASELINE_READ),
            ("baseline: load_file() (mmap), keep encoder fp32", BASELINE_MMAP),
            ("tagsmith: open_embedder + load fp32 + embed 1 tag", TAGSMITH),
        ]
        results = {}
        for name, body in rows:
            rss, seconds = measure(body, ckpt)
            results[name] = rss
            print(f"  {name:52s} peak RSS {rss / 1e9:5.2f} GB   {seconds:6.2f} s")
        base = results[rows[1][0]]
        ours = results[rows[3][0]]
        floor = results[rows[0][0]]
        print(f"  read-all baseline / tagsmith peak RSS = {base / ours:.2f}x; tagsmith above the "
              "floor: "
              f"{(ours - floor) / 1e9:.2f} GB (fp32 encoder weights: "
              f"{123_060_480 * 4 / 1e9:.2f} GB); target < 1.2 GB total")


if __name__ == "__main__":
    main()
