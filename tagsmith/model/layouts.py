"""Checkpoint layouts: where the text encoder sits among a file's keys, what every other kind of
file (SD2.x, SDXL, LoRA, VAE, embedding, UNet-only) is called, and position_ids repairs."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from tagsmith.errors import UnsupportedModelError
from tagsmith.model.config import CLIP_POSITIONS, TOKEN_EMBEDDING
from tagsmith.model.safetensors_file import DTYPE_NAMES, FLOAT_DTYPES


def layout_description(prefix: str) -> str:
    if prefix == "cond_stage_model.transformer.text_model.":
        return "single-file SD1.5 checkpoint (A1111/ComfyUI layout)"
    if prefix == "cond_stage_model.transformer.":
        return "single-file SD1.5 checkpoint (older layout without text_model.)"
    if prefix == "text_model.":
        return "CLIP text model weights"
    if prefix == "":
        return "CLIP text model weights (without the text_model. prefix)"
    return f"text encoder under '{prefix}'"


_LORA_MARKERS = (
    "lora_down", "lora_up", "lora_A.", "lora_B.", "lora.down", "lora.up", "hada_w1", "hada_w2",
    "lokr_w1", "lokr_w2", "oft_blocks", ".dora_scale",
)


_VAE_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "first_stage_model.")


def locate_text_encoder(shapes: Mapping[str, tuple[int, ...]], name: str) -> str:
    """The key prefix under which the SD1.5 CLIP text encoder sits, or one sentence why not.

    Recognises A1111/ComfyUI single files (``cond_stage_model.transformer.text_model.`` and the
    older ``cond_stage_model.transformer.``), CLIPModel/CLIPTextModel weights (``text_model.``
    or no prefix), and names SD2.x, SDXL, LoRA, VAE, UNet-only and embedding files.
    """
    keys = list(shapes)
    if not keys:
        raise UnsupportedModelError(f"'{name}' holds no tensors at all.")
    _refuse_other_families(shapes, keys, name)
    openclip = "token_embedding.weight" in shapes and any(
        k.startswith("transformer.resblocks.") for k in keys
    )
    if openclip or any(k.startswith("cond_stage_model.model.") for k in keys):
        width = _openclip_width(shapes)
        raise UnsupportedModelError(
            f"'{name}' is an SD 2.x checkpoint (its text encoder is OpenCLIP ViT-H"
            f"{f', width {width}' if width else ''}); {_READS}, so give an SD1.5 or SDXL "
            "checkpoint."
        )
    prefixes = sorted({k[: -len(TOKEN_EMBEDDING)] for k in keys if k.endswith(TOKEN_EMBEDDING)})
    if len(prefixes) == 1:
        return prefixes[0]
    if len(prefixes) > 1:
        listed = ", ".join(p.rstrip(".") or "(top level)" for p in prefixes)
        raise UnsupportedModelError(
            f"'{name}' holds {len(prefixes)} text encoders ({listed}), as SDXL/SD3-style "
            "checkpoints do; tagsmith needs an SD1.5 checkpoint with exactly one."
        )
    lora = [k for k in keys if any(m in k for m in _LORA_MARKERS) or k.startswith("lora_")]
    if lora:
        raise UnsupportedModelError(
            f"'{name}' is a LoRA/LyCORIS adapter ({len(lora)} adapter tensors such as "
            f"'{lora[0]}'), not a checkpoint; give the SD1.5 checkpoint it was trained on."
        )
    embedding_keys = ("emb_params", "clip_l", "clip_g")
    if any(k in embedding_keys or k.startswith("string_to_param") for k in keys):
        raise UnsupportedModelError(
            f"'{name}' is a textual-inversion embedding, not a checkpoint; give the SD1.5 "
            "checkpoint it was trained on."
        )
    if any(k.startswith("model.diffusion_model.") for k in keys):
        raise UnsupportedModelError(
            f"'{name}' holds a UNet but no text encoder (no cond_stage_model.transformer "
            "tensors); give a full SD1.5 checkpoint or a diffusers folder."
        )
    if all(k.startswith(_VAE_PREFIXES) for k in keys) and any(
        ("decoder." in k or "post_quant_conv" in k) for k in keys
    ):
        raise UnsupportedModelError(
            f"'{name}' is a VAE ({len(keys)} tensors such as '{keys[0]}'), not a checkpoint "
            "with a text encoder; give the SD1.5 checkpoint instead."
        )
    examples = ", ".join(f"'{k}'" for k in sorted(keys)[:2])
    raise UnsupportedModelError(
        f"'{name}' holds no CLIP text encoder: none of its {len(keys)} tensors (e.g. "
        f"{examples}) is an SD1.5 encoder key such as "
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight."
    )


_READS = "tagsmith reads SD1.5 (CLIP-L) and SDXL (CLIP-L + OpenCLIP-G) text encoders"


def _refuse_other_families(
    shapes: Mapping[str, tuple[int, ...]], keys: list[str], name: str
) -> None:
    """One sentence for the checkpoints of families tagsmith does not read (A1111's
    ``guess_model_config_from_state_dict`` and ComfyUI's ``detect_unet_config`` keys)."""
    if "conditioner.embedders.0.model.ln_final.weight" in shapes:
        raise UnsupportedModelError(
            f"'{name}' is an SDXL refiner (OpenCLIP-G only, no CLIP-L); it refines images but "
            f"is not prompted with tags on its own, and {_READS}: give the SDXL base model "
            "(or the Pony/Illustrious/NoobAI checkpoint) instead."
        )
    if any(".joint_blocks." in k or k.startswith("text_encoders.t5xxl") for k in keys):
        raise UnsupportedModelError(
            f"'{name}' is an SD3 (MMDiT) checkpoint, whose prompts go through CLIP-L, CLIP-G and "
            f"T5; {_READS}."
        )
    if any(".double_blocks." in k or k.startswith("double_blocks.") for k in keys):
        raise UnsupportedModelError(
            f"'{name}' is a Flux checkpoint (T5 and CLIP-L text encoders, no UNet); {_READS}."
        )
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise UnsupportedModelError(
            f"'{name}' has SDXL-style conditioner.embedders but not both SDXL text encoders "
            "(CLIP-L under conditioner.embedders.0.transformer.text_model., OpenCLIP-G under "
            "conditioner.embedders.1.model.); the file may be pruned or from another family."
        )


def _openclip_width(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    for key, shape in shapes.items():
        if key.endswith("token_embedding.weight") and len(shape) == 2:
            return int(shape[1])
    return None


def position_ids_note(
    values: np.ndarray, dtype: str, positions: int = CLIP_POSITIONS
) -> str | None:
    """A note when a checkpoint's position_ids are floats or do not count 0..positions-1.

    Merged checkpoints often carry float ids such as 11.9999 that truncate to the wrong
    position; tagsmith always uses 0..76, as an unmerged SD1.5 encoder does.
    """
    flat = np.asarray(values).reshape(-1)
    expected = np.arange(positions)
    is_float = dtype in FLOAT_DTYPES or flat.dtype.kind == "f"
    if flat.size != positions:
        return (
            f"Repaired the checkpoint's position_ids (it holds {flat.size} values, not "
            f"{positions}); tagsmith uses 0..{positions - 1} as SD1.5 does."
        )
    wrong = np.nonzero(flat.astype(np.float64) != expected)[0]
    if wrong.size:
        i = int(wrong[0])
        return (
            f"Repaired the checkpoint's position_ids ({wrong.size} of {positions} were off, e.g. "
            f"position {i} held {float(flat[i]):.6g}), as merged checkpoints often have them; "
            f"tagsmith uses 0..{positions - 1} as SD1.5 does."
        )
    if is_float:
        return (
            f"Repaired the checkpoint's position_ids (stored as {DTYPE_NAMES.get(dtype, dtype)} "
            f"instead of integers); tagsmith uses 0..{positions - 1} as SD1.5 does."
        )
    return None
