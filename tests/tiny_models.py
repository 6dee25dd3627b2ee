"""Tiny random CLIP text encoders saved in every layout users keep SD1.5's encoder in.

The architecture is SD1.5's in miniature: CLIP's 49,408-token vocabulary and 77 positions (so
real tokenizer ids work), quick_gelu, but width 128, 2 heads of 64 (CLIP's head width, which is
what a single-file checkpoint without config.json implies), 3 layers.

Weights are random multiples of 2**-10 below 1/8 (norm weights near 1 in steps of 2**-7), so
they are exactly representable in fp16 and bf16: the same encoder saved as fp32, fp16 and bf16
must give bit-identical embeddings when computed in fp32.

Files are written with the key names real files have. transformers 5's ``save_pretrained``
drops the ``text_model.`` prefix that SD1.5's ``text_encoder/model.safetensors`` and
openai/clip-vit-large-patch14 use, so it is not used here.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file

from tagsmith.model.config import EncoderConfig

TINY = EncoderConfig(
    vocab_size=49408, hidden_size=128, num_layers=3, num_heads=2, intermediate_size=256,
    max_positions=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)
A1111_PREFIX = "cond_stage_model.transformer.text_model."
A1111_OLD_PREFIX = "cond_stage_model.transformer."
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _grid(gen: torch.Generator, shape: tuple[int, ...], scale: float = 0.05) -> torch.Tensor:
    x = torch.randn(shape, generator=gen) * scale
    return (x * 1024).round().clamp(-127, 127) / 1024


def tiny_weights(seed: int = 0, config: EncoderConfig = TINY) -> dict[str, torch.Tensor]:
    """Canonical CLIPTextModel tensors (no prefix), fp32, exactly representable in fp16/bf16."""
    g = torch.Generator().manual_seed(seed)
    h, i = config.hidden_size, config.intermediate_size

    def norm_w() -> torch.Tensor:
        return 1 + (torch.randn(h, generator=g) * 0.1 * 128).round().clamp(-60, 60) / 128

    w: dict[str, torch.Tensor] = {
        "embeddings.token_embedding.weight": _grid(g, (config.vocab_size, h), 0.5 / 8),
        "embeddings.position_embedding.weight": _grid(g, (config.max_positions, h), 0.5 / 8),
    }
    for n in range(config.num_layers):
        p = f"encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            w[f"{p}self_attn.{proj}.weight"] = _grid(g, (h, h), 0.09)
            w[f"{p}self_attn.{proj}.bias"] = _grid(g, (h,), 0.02)
        for ln in ("layer_norm1", "layer_norm2"):
            w[f"{p}{ln}.weight"] = norm_w()
            w[f"{p}{ln}.bias"] = _grid(g, (h,), 0.02)
        w[f"{p}mlp.fc1.weight"] = _grid(g, (i, h), 0.09)
        w[f"{p}mlp.fc1.bias"] = _grid(g, (i,), 0.02)
        w[f"{p}mlp.fc2.weight"] = _grid(g, (h, i), 0.06)
        w[f"{p}mlp.fc2.bias"] = _grid(g, (h,), 0.02)
    w["final_layer_norm.weight"] = norm_w()
    w["final_layer_norm.bias"] = _grid(g, (h,), 0.02)
    return w


def position_ids(config: EncoderConfig = TINY, kind: str = "int") -> torch.Tensor:
    ids = torch.arange(config.max_positions)[None, :]
    if kind == "float":
        return ids.to(torch.float32)
    if kind == "corrupt":
        # what merges leave behind: floats a hair under the integer, truncating to the one below
        return ids.to(torch.float32) - torch.where(ids % 7 == 3, 1e-4, 0.0)
    return ids


def hf_config(config: EncoderConfig = TINY) -> dict:
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "max_position_embeddings": config.max_positions,
        "hidden_act": config.hidden_act,
        "layer_norm_eps": config.layer_norm_eps,
        "bos_token_id": 0,
        "eos_token_id": 2,  # SD1.5's text_encoder/config.json really says 2 (pre-2023 config)
        "pad_token_id": 1,
        "projection_dim": 768,
        "torch_dtype": "float32",
    }


def _cast(weights: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    return {k: v.to(DTYPES[dtype]).contiguous() for k, v in weights.items()}


def save_hf_folder(
    weights: dict[str, torch.Tensor], folder: Path, *, dtype: str = "fp32",
    clip_model: bool = False, filename: str = "model.safetensors",
) -> Path:
    """A CLIPTextModel folder (or a CLIPModel one with a vision tower) with ``text_model.`` keys."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"text_model.{k}": v for k, v in _cast(weights, dtype).items()}
    tensors["text_model.embeddings.position_ids"] = position_ids()
    cfg = hf_config()
    if clip_model:
        cfg = {
            "architectures": ["CLIPModel"], "model_type": "clip", "text_config": hf_config(),
            "vision_config": {"hidden_size": 16}, "projection_dim": 8,
        }
        tensors["text_projection.weight"] = torch.zeros(8, TINY.hidden_size)
        tensors["vision_model.embeddings.patch_embedding.weight"] = torch.zeros(16, 3, 2, 2)
        tensors["visual_projection.weight"] = torch.zeros(8, 16)
        tensors["logit_scale"] = torch.tensor(4.6)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(tensors, str(folder / filename), metadata={"format": "pt"})
    return folder


def save_diffusers_folder(weights: dict[str, torch.Tensor], folder: Path, **kw) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    index = {
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    save_hf_folder(weights, folder / "text_encoder", **kw)
    (folder / "unet").mkdir(exist_ok=True)
    (folder / "unet" / "config.json").write_text("{}")
    return folder


def _unet_vae_filler() -> dict[str, torch.Tensor]:
    # A few non-encoder tensors so single files look like the real thing to the key rules.
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3),
        "model.diffusion_model.out.2.weight": torch.zeros(4, 8, 3, 3),
        "first_stage_model.decoder.conv_in.weight": torch.zeros(8, 4, 3, 3),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
        "alphas_cumprod": torch.linspace(1, 0, 10),
    }


def single_file_tensors(
    weights: dict[str, torch.Tensor], *, layout: str = "new", dtype: str = "fp32",
    pos_ids: str = "int",
) -> dict[str, torch.Tensor]:
    prefix = A1111_PREFIX if layout == "new" else A1111_OLD_PREFIX
    tensors = {prefix + k: v for k, v in _cast(weights, dtype).items()}
    tensors[prefix + "embeddings.position_ids"] = position_ids(kind=pos_ids)
    tensors.update({k: v.to(DTYPES[dtype]) for k, v in _unet_vae_filler().items()})
    return tensors


def save_single_file(
    weights: dict[str, torch.Tensor], path: Path, *, layout: str = "new", dtype: str = "fp32",
    pos_ids: str = "int",
) -> Path:
    """An A1111/ComfyUI single-file checkpoint (``layout='old'``: without ``text_model.``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(single_file_tensors(weights, layout=layout, dtype=dtype, pos_ids=pos_ids), str(path))
    return path


def save_ckpt(
    weights: dict[str, torch.Tensor], path: Path, *, layout: str = "new", dtype: str = "fp32",
    legacy: bool = False,
) -> Path:
    """A .ckpt as SD's training code writes it: {"state_dict": ..., "global_step": ...}."""
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = {
        "state_dict": single_file_tensors(weights, layout=layout, dtype=dtype),
        "global_step": 840000,
        "epoch": 6,
    }
    torch.save(obj, str(path), _use_new_zipfile_serialization=not legacy)
    return path


# -- files that are not an SD1.5 encoder ------------------------------------------------------


def save_sd2_like(path: Path) -> Path:
    save_file({
        "cond_stage_model.model.token_embedding.weight": torch.zeros(4, 1024, dtype=torch.float16),
        "cond_stage_model.model.positional_embedding": torch.zeros(77, 1024, dtype=torch.float16),
        "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight": torch.zeros(6, 4),
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
    }, str(path))
    return path


def save_sdxl_like(path: Path) -> Path:
    save_file({
        "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight":
            torch.zeros(4, 768, dtype=torch.float16),
        "conditioner.embedders.1.model.token_embedding.weight":
            torch.zeros(4, 1280, dtype=torch.float16),
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4),
    }, str(path))
    return path


def save_lora(path: Path) -> Path:
    base = "lora_te_text_model_encoder_layers_0_self_attn_q_proj"
    save_file({
        f"{base}.lora_down.weight": torch.zeros(4, 768, dtype=torch.float16),
        f"{base}.lora_up.weight": torch.zeros(768, 4, dtype=torch.float16),
        f"{base}.alpha": torch.tensor(4.0),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
    }, str(path), metadata={"ss_network_module": "networks.lora"})
    return path


def save_vae(path: Path) -> Path:
    save_file({
        "encoder.conv_in.weight": torch.zeros(8, 3, 3, 3),
        "decoder.conv_out.weight": torch.zeros(3, 8, 3, 3),
        "quant_conv.weight": torch.zeros(8, 8, 1, 1),
        "post_quant_conv.weight": torch.zeros(4, 4, 1, 1),
    }, str(path))
    return path


def save_truncated(source: Path, path: Path, fraction: float = 0.5) -> Path:
    data = source.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def save_random_bytes(path: Path, n: int = 4096, seed: int = 1) -> Path:
    path.write_bytes(hashlib.shake_256(str(seed).encode()).digest(n))
    return path


class _RunsCode:
    """Unpickling this executes ``code``: what a booby-trapped .ckpt does."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):  # noqa: ANN204
        import builtins

        return (builtins.exec, (self.code,))


def save_malicious_ckpt(weights: dict[str, torch.Tensor], path: Path, marker: Path) -> Path:
    """A real-looking .ckpt whose pickle, fully unpickled, creates ``marker``."""
    obj = {
        "state_dict": single_file_tensors(weights),
        "callbacks": _RunsCode(f"open({str(marker)!r}, 'w').write('code ran')"),
    }
    torch.save(obj, str(path))
    return path


def save_malicious_plain_pickle(path: Path, marker: Path) -> Path:
    """The same trap as a bare pickle (not torch's zip format)."""
    with path.open("wb") as fh:
        pickle.dump({"x": _RunsCode(f"open({str(marker)!r}, 'w').write('code ran')")}, fh,
                    protocol=4)
    return path


# -- a Hugging Face cache that holds a repo, as huggingface_hub lays it out ----------------


def build_hf_cache(
    weights: dict[str, torch.Tensor], hf_home: Path, repo_id: str, *, variant: str = "fp16",
    layout: str = "diffusers", revision: str = "0123456789abcdef0123456789abcdef01234567",
) -> Path:
    """models--org--name/{blobs,refs/main,snapshots/<rev>/...} under ``hf_home/hub``.

    layout "diffusers": text_encoder/config.json + text_encoder/model[.fp16].safetensors;
    layout "clip": config.json + model.safetensors at the root (CLIPModel-style repo).
    """
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / revision
    tmp = repo_dir / "tmp"
    sub = "text_encoder" if layout == "diffusers" else ""
    dtype = "fp16" if variant == "fp16" else "fp32"
    filename = "model.fp16.safetensors" if variant == "fp16" else "model.safetensors"
    save_hf_folder(weights, tmp, dtype=dtype, filename=filename)
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    for name in ("config.json", filename):
        data = (tmp / name).read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        target = snap / sub / name if sub else snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, target.parent), target)
        (tmp / name).unlink()
    tmp.rmdir()
    return snap


# -- the independent reference ----------------------------------------------------------------


def reference_model(weights: dict[str, torch.Tensor], config: EncoderConfig = TINY):  # noqa: ANN201
    """transformers' CLIPTextModel (eager attention) holding ``weights``, in fp32."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size, num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads, max_position_embeddings=config.max_positions,
        hidden_act=config.hidden_act, layer_norm_eps=config.layer_norm_eps,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )
    cfg._attn_implementation = "eager"
    model = CLIPTextModel(cfg)
    missing, unexpected = model.load_state_dict(
        {k: v.float() for k, v in weights.items()}, strict=False
    )
    assert not unexpected, unexpected
    assert all("position_ids" in m for m in missing), missing
    return model.eval()


class TinyModelFiles:
    """The tiny encoder saved on demand in each layout, once per test session."""

    def __init__(self, root: Path, seed: int = 0) -> None:
        self.root = root
        self.weights = tiny_weights(seed)
        self._made: dict[tuple, Path] = {}

    def _once(self, key: tuple, build) -> Path:  # noqa: ANN001
        if key not in self._made:
            self._made[key] = build(self.root / "-".join(str(k) for k in key))
        return self._made[key]

    def single_file(self, layout: str = "new", dtype: str = "fp32", pos_ids: str = "int") -> Path:
        return self._once(
            ("single", layout, dtype, pos_ids),
            lambda p: save_single_file(self.weights, p.with_suffix(".safetensors"), layout=layout,
                                       dtype=dtype, pos_ids=pos_ids),
        )

    def ckpt(self, layout: str = "new", dtype: str = "fp32", legacy: bool = False) -> Path:
        return self._once(
            ("ckpt", layout, dtype, legacy),
            lambda p: save_ckpt(self.weights, p.with_suffix(".ckpt"), layout=layout, dtype=dtype,
                                legacy=legacy),
        )

    def hf_folder(self, dtype: str = "fp32", clip_model: bool = False) -> Path:
        return self._once(
            ("hf", dtype, clip_model),
            lambda p: save_hf_folder(self.weights, p, dtype=dtype, clip_model=clip_model),
        )

    def diffusers_folder(self) -> Path:
        return self._once(("diffusers",), lambda p: save_diffusers_folder(self.weights, p))

    def other_single_file(self, seed: int = 1) -> Path:
        """Different weights, same layout: must get a different fingerprint."""
        return self._once(
            ("other", seed),
            lambda p: save_single_file(tiny_weights(seed), p.with_suffix(".safetensors")),
        )
