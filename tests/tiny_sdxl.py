"""Tiny random SDXL text encoders (CLIP-L with quick_gelu, OpenCLIP-G with gelu and a
projection) saved in every layout users keep SDXL checkpoints in, with the real key names.

Heads are 64 wide, as real CLIP models have (a single file carries no config, so the head
count is inferred from the width): L is 128 wide (2 heads, 3 layers), G 192 wide (3 heads,
4 layers). Weights come from ``tiny_models.tiny_weights`` (exactly representable in fp16).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny_models import _grid, hf_config, position_ids, tiny_weights

from tagsmith.model.config import EncoderConfig

TINY_L = EncoderConfig(
    vocab_size=49408, hidden_size=128, num_layers=3, num_heads=2, intermediate_size=256,
    max_positions=77, hidden_act="quick_gelu",
)
TINY_G = EncoderConfig(
    vocab_size=49408, hidden_size=192, num_layers=4, num_heads=3, intermediate_size=384,
    max_positions=77, hidden_act="gelu", projection_dim=192,
)
L_PREFIX = "conditioner.embedders.0.transformer.text_model."
G_PREFIX = "conditioner.embedders.1.model."


def sdxl_weights(seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """{"l": ..., "g": ...} canonical CLIPTextModel tensors; G's text_projection.weight is in
    diffusers orientation (a Linear weight: pooled = x @ W^T)."""
    g = tiny_weights(seed + 100, TINY_G)
    gen = torch.Generator().manual_seed(seed + 7)
    g["text_projection.weight"] = _grid(gen, (TINY_G.projection_dim, TINY_G.hidden_size), 0.09)
    return {"l": tiny_weights(seed + 50, TINY_L), "g": g}


def openclip_g(g: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """G in OpenCLIP layout, as Stability's single files store it: fused in_proj, bare
    text_projection used as x @ P (the transpose of the Linear weight)."""
    out = {
        "token_embedding.weight": g["embeddings.token_embedding.weight"],
        "positional_embedding": g["embeddings.position_embedding.weight"],
        "ln_final.weight": g["final_layer_norm.weight"],
        "ln_final.bias": g["final_layer_norm.bias"],
        "text_projection": g["text_projection.weight"].T.contiguous(),
        "logit_scale": torch.tensor(4.6052),
    }
    for n in range(TINY_G.num_layers):
        c, o = f"encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            out[f"{o}attn.in_proj_{kind}"] = torch.cat(
                [g[f"{c}self_attn.{p}_proj.{kind}"] for p in "qkv"]
            )
            out[f"{o}attn.out_proj.{kind}"] = g[f"{c}self_attn.out_proj.{kind}"]
            out[f"{o}ln_1.{kind}"] = g[f"{c}layer_norm1.{kind}"]
            out[f"{o}ln_2.{kind}"] = g[f"{c}layer_norm2.{kind}"]
            out[f"{o}mlp.c_fc.{kind}"] = g[f"{c}mlp.fc1.{kind}"]
            out[f"{o}mlp.c_proj.{kind}"] = g[f"{c}mlp.fc2.{kind}"]
    return out


def _filler(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    # context_dim 2048 / adm 2816, as SDXL base's UNet has
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(8, 4, 3, 3, dtype=dtype),
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(8, 2816, dtype=dtype),
        "first_stage_model.decoder.conv_in.weight": torch.zeros(8, 4, 3, 3, dtype=dtype),
    }


def single_file_tensors(w: dict, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    tensors = {L_PREFIX + k: v.to(dtype) for k, v in w["l"].items()}
    tensors[L_PREFIX + "embeddings.position_ids"] = position_ids()
    tensors.update({G_PREFIX + k: v.to(dtype).contiguous() for k, v in openclip_g(w["g"]).items()})
    tensors.update(_filler(dtype))
    return tensors


def save_single_file(w: dict, path: Path, dtype: torch.dtype = torch.float32) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(single_file_tensors(w, dtype), str(path))
    return path


def save_ckpt(w: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": single_file_tensors(w), "global_step": 1}, str(path))
    return path


def g_config() -> dict:
    cfg = hf_config(TINY_G)
    cfg.update(architectures=["CLIPTextModelWithProjection"], projection_dim=TINY_G.projection_dim,
               hidden_act="gelu", pad_token_id=1, bos_token_id=0, eos_token_id=2)
    return cfg


def _save_te(w: dict[str, torch.Tensor], folder: Path, cfg: dict, filename: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        (k if k == "text_projection.weight" else f"text_model.{k}"): v.contiguous()
        for k, v in w.items()
    }
    tensors["text_model.embeddings.position_ids"] = position_ids()
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(tensors, str(folder / filename), metadata={"format": "pt"})
    return folder


def save_diffusers_folder(w: dict, folder: Path, filename: str = "model.safetensors") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    index = {
        "_class_name": "StableDiffusionXLPipeline", "_diffusers_version": "0.19.0",
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    _save_te(w["l"], folder / "text_encoder", hf_config(TINY_L), filename)
    _save_te(w["g"], folder / "text_encoder_2", g_config(), filename)
    return folder


def build_hf_cache(
    w: dict, hf_home: Path, repo_id: str,
    revision: str = "fedcba9876543210fedcba9876543210fedcba98",
) -> Path:
    """An SDXL repo in huggingface_hub's cache layout (fp16 variant files, blobs + symlinks)."""
    repo_dir = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snap = repo_dir / "snapshots" / revision
    tmp = repo_dir / "tmp"
    w16 = {p: {k: v.half() for k, v in t.items()} for p, t in w.items()}
    save_diffusers_folder(w16, tmp, filename="model.fp16.safetensors")
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / "main").write_text(revision)
    names = ["model_index.json"] + [
        f"{sub}/{f}" for sub in ("text_encoder", "text_encoder_2")
        for f in ("config.json", "model.fp16.safetensors")
    ]
    for name in names:
        data = (tmp / name).read_bytes()
        blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        target = snap / name
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, target.parent), target)
    for p in sorted(tmp.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()
    tmp.rmdir()
    return snap


def save_refiner(w: dict, path: Path) -> Path:
    tensors = {"conditioner.embedders.0.model." + k: v for k, v in openclip_g(w["g"]).items()}
    tensors.update(_filler(torch.float32))
    save_file(tensors, str(path))
    return path


def save_sd3_like(path: Path) -> Path:
    save_file({
        "model.diffusion_model.joint_blocks.0.context_block.attn.qkv.weight": torch.zeros(6, 2),
        "text_encoders.clip_l.transformer.text_model.embeddings.token_embedding.weight":
            torch.zeros(4, 8),
    }, str(path))
    return path


def save_flux_like(path: Path) -> Path:
    save_file({
        "model.diffusion_model.double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(4),
        "model.diffusion_model.img_in.weight": torch.zeros(4, 4),
    }, str(path))
    return path


# -- the independent references -------------------------------------------------------------


def reference_models(w: dict):  # noqa: ANN201
    """transformers' CLIPTextModel (L) and CLIPTextModelWithProjection (G), eager, fp32."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def cfg(c: EncoderConfig) -> CLIPTextConfig:
        out = CLIPTextConfig(
            vocab_size=c.vocab_size, hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
            num_attention_heads=c.num_heads, max_position_embeddings=c.max_positions,
            hidden_act=c.hidden_act, layer_norm_eps=c.layer_norm_eps,
            projection_dim=c.projection_dim or 512,
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        )
        out._attn_implementation = "eager"
        return out

    models = {}
    for part, cls, c in (("l", CLIPTextModel, TINY_L), ("g", CLIPTextModelWithProjection, TINY_G)):
        model = cls(cfg(c))
        # transformers 5: CLIPTextModel's keys have no text_model. prefix, the
        # WithProjection model's do; follow whatever the model says
        prefixed = any(k.startswith("text_model.") for k in model.state_dict())
        state = {
            (f"text_model.{k}" if prefixed and k != "text_projection.weight" else k): v.float()
            for k, v in w[part].items()
        }
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected, unexpected
        assert all("position_ids" in m for m in missing), missing
        models[part] = model.eval()
    return models
