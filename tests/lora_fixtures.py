"""Tiny random LoRA/LyCORIS files for the tiny encoder, with the key names real files have.

Each builder returns {module: {role: tensor}} for the six linear layers of every block
(``encoder.layers.N.self_attn.{q,k,v,out}_proj``, ``mlp.fc1``, ``mlp.fc2``); ``save_lora_file``
writes them under kohya (``lora_te_...``, ``lora_te1_``/``lora_te2_`` for SDXL) or diffusers/PEFT
(``text_encoder.text_model....lora_A.weight``) names. ``KOHYA_METADATA`` is a metadata block
shaped as kohya's train_network.py writes it (every value a string, JSON inside).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from tiny_models import TINY

H, INTER, LAYERS = TINY.hidden_size, TINY.intermediate_size, TINY.num_layers
MODULES = {
    "self_attn.q_proj": (H, H), "self_attn.k_proj": (H, H), "self_attn.v_proj": (H, H),
    "self_attn.out_proj": (H, H), "mlp.fc1": (INTER, H), "mlp.fc2": (H, INTER),
}
FORMATS = (
    "lora", "lora-noalpha", "lora-scale", "loha", "loha-tucker", "lokr", "lokr-full",
    "lokr-tucker", "dora-column", "dora-row", "ia3", "ia3-input", "full", "glora", "peft",
    "peft-rslora", "peft-dora",
)


def targets(layers: int = LAYERS) -> list[tuple[str, tuple[int, int]]]:
    return [(f"encoder.layers.{n}.{m}", s) for n in range(layers) for m, s in MODULES.items()]


def _r(g: torch.Generator, *shape: int, scale: float = 0.05) -> torch.Tensor:
    return torch.randn(shape, generator=g) * scale


def _factor(n: int) -> tuple[int, int]:
    a = 2 if n % 2 == 0 else 1
    return a, n // a


def module_tensors(fmt: str, out: int, inp: int, g: torch.Generator, rank: int = 4,
                   weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    alpha = torch.tensor(float(rank) / 2)
    if fmt in ("lora", "dora-column", "dora-row", "lora-noalpha", "lora-scale"):
        t = {"lora_down.weight": _r(g, rank, inp), "lora_up.weight": _r(g, out, rank)}
        if fmt != "lora-noalpha":
            t["alpha"] = alpha
        if fmt == "lora-scale":
            t["scale"] = torch.tensor(0.3)
        if fmt == "dora-column":
            t["dora_scale"] = weight.norm(dim=0, keepdim=True) * (1 + _r(g, 1, inp))
        if fmt == "dora-row":
            t["dora_scale"] = weight.norm(dim=1, keepdim=True) * (1 + _r(g, out, 1))
        return t
    if fmt == "loha":
        return {"hada_w1_a": _r(g, out, rank, scale=0.3), "hada_w1_b": _r(g, rank, inp, scale=0.3),
                "hada_w2_a": _r(g, out, rank, scale=0.3), "hada_w2_b": _r(g, rank, inp, scale=0.3),
                "alpha": alpha}
    if fmt == "loha-tucker":
        return {"hada_t1": _r(g, rank, rank, scale=0.5), "hada_w1_a": _r(g, rank, out, scale=0.3),
                "hada_w1_b": _r(g, rank, inp, scale=0.3), "hada_t2": _r(g, rank, rank, scale=0.5),
                "hada_w2_a": _r(g, rank, out, scale=0.3), "hada_w2_b": _r(g, rank, inp, scale=0.3),
                "alpha": alpha}
    if fmt in ("lokr", "lokr-full", "lokr-tucker"):
        o1, o2 = _factor(out)
        i1, i2 = _factor(inp)
        t = {"lokr_w1": _r(g, o1, i1, scale=0.5)}
        if fmt == "lokr":
            t.update({"lokr_w2_a": _r(g, o2, rank, scale=0.2),
                      "lokr_w2_b": _r(g, rank, i2, scale=0.2), "alpha": alpha})
        elif fmt == "lokr-tucker":
            t.update({"lokr_t2": _r(g, rank, rank, scale=0.5),
                      "lokr_w2_a": _r(g, rank, o2, scale=0.2),
                      "lokr_w2_b": _r(g, rank, i2, scale=0.2), "alpha": alpha})
        else:
            t.update({"lokr_w2": _r(g, o2, i2, scale=0.05), "alpha": torch.tensor(7.0)})
        return t
    if fmt == "ia3":
        return {"weight": _r(g, out, scale=0.2), "on_input": torch.tensor(False)}
    if fmt == "ia3-input":
        return {"weight": _r(g, inp, scale=0.2), "on_input": torch.tensor(True)}
    if fmt == "full":
        return {"diff": _r(g, out, inp, scale=0.01), "diff_b": _r(g, out, scale=0.01)}
    if fmt == "glora":
        return {"a1.weight": _r(g, inp, rank, scale=0.2), "a2.weight": _r(g, rank, inp, scale=0.2),
                "b1.weight": _r(g, out, rank), "b2.weight": _r(g, rank, inp), "alpha": alpha}
    if fmt in ("peft", "peft-rslora", "peft-dora"):
        t = {"lora_A.weight": _r(g, rank, inp), "lora_B.weight": _r(g, out, rank)}
        if fmt == "peft-dora":
            t["lora_magnitude_vector"] = weight.norm(dim=1) * (1 + _r(g, out))
        return t
    raise ValueError(fmt)


def build_lora(fmt: str, base: dict[str, torch.Tensor], seed: int = 0, rank: int = 4,
               layers: int = LAYERS) -> dict[str, dict[str, torch.Tensor]]:
    """{canonical module: {file role: tensor}} for every linear layer of the tiny encoder."""
    g = torch.Generator().manual_seed(seed)
    return {
        name: module_tensors(fmt, out, inp, g, rank, base.get(f"{name}.weight"))
        for name, (out, inp) in targets(layers)
    }


KOHYA_METADATA = {
    "ss_network_module": "networks.lora",
    "ss_network_dim": "4",
    "ss_network_alpha": "2.0",
    "ss_base_model_version": "sd_v1",
    "ss_clip_skip": "2",
    "ss_keep_tokens": "1",
    "ss_shuffle_caption": "True",
    "ss_num_train_images": "200",
    "ss_text_encoder_lr": "5e-05",
    "ss_output_name": "mayo_bottle",
    "ss_dataset_dirs": json.dumps({"10_mayobottle": {"n_repeats": 10, "img_count": 20}}),
    "ss_tag_frequency": json.dumps({"10_mayobottle": {
        "mayobottle": 20, " 1girl": 14, "holding": 12, "bottle": 11, "kitchen": 6,
        "mayonnaise bottle": 5, "solo": 4, "table": 3,
    }}),
    "modelspec.sai_model_spec": "1.0.0",
    "modelspec.architecture": "stable-diffusion-v1/lora",
    "modelspec.title": "mayo_bottle",
}


def kohya_name(prefix: str, target: str) -> str:
    return prefix + "text_model_" + target.replace(".", "_")


def save_lora_file(path: Path, modules: dict[str, dict[str, torch.Tensor]], *,
                   naming: str = "kohya", metadata: dict[str, str] | None = None,
                   unet: bool = True, encoder: str = "te") -> Path:
    """Write ``modules`` as a LoRA file. naming: kohya | peft; encoder: te | te1 | te2."""
    tensors: dict[str, torch.Tensor] = {}
    for target, roles in modules.items():
        for role, t in roles.items():
            if naming == "kohya":
                tensors[f"{kohya_name(f'lora_{encoder}_', target)}.{role}"] = t.contiguous()
            else:
                comp = "text_encoder_2" if encoder == "te2" else "text_encoder"
                tensors[f"{comp}.text_model.{target}.{role}"] = t.contiguous()
    if unet:
        key = "lora_unet_down_blocks_0_attentions_0_proj_in" if naming == "kohya" else \
            "unet.down_blocks.0.attentions.0.proj_in"
        down = "lora_down.weight" if naming == "kohya" else "lora_A.weight"
        tensors[f"{key}.{down}"] = torch.zeros(4, 320)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path
