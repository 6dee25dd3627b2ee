"""Where a text encoder lives, and what a weights file holds. Pure: no torch.

``--model`` (or ``TAGSMITH_MODEL``) names one of:

- a Hugging Face repo id (default ``stable-diffusion-v1-5/stable-diffusion-v1-5``), read from the
  local HF cache and downloaded only when missing (text encoder files only);
- a diffusers pipeline folder (its ``text_encoder/``) or a CLIPTextModel / CLIPModel folder;
- a single-file SD1.5 checkpoint (``.safetensors``; ``.ckpt``/``.pt``/``.bin`` pickles).

``resolve_source`` turns that into a ``TextEncoderSource``: the weight files, where the encoder's
tensors sit in them, the architecture, and notes for the user. Safetensors headers are parsed
here in plain Python, so every "this is an SDXL checkpoint / a LoRA / truncated" sentence and the
model fingerprint come without importing torch. Pickle checkpoints can only be opened through
``torch.load(weights_only=True)``, which ``tagsmith.model.encoder`` does; the key rules they go
through (``locate_text_encoder``) live here so both formats get the same sentences.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from tagsmith.errors import ModelNotFoundError, UnsupportedModelError, UsageError

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MODEL_ENV = "TAGSMITH_MODEL"
CLIP_VOCAB_SIZE = 49408
CLIP_POSITIONS = 77

TOKEN_EMBEDDING = "embeddings.token_embedding.weight"
POSITION_EMBEDDING = "embeddings.position_embedding.weight"
POSITION_IDS = "embeddings.position_ids"
_LAYER_PARAMS = tuple(
    f"{module}.{p}"
    for module in (
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
        "layer_norm1", "layer_norm2", "mlp.fc1", "mlp.fc2",
    )
    for p in ("weight", "bias")
)
_LAYER_KEY = re.compile(r"^encoder\.layers\.(\d+)\.(.+)$")

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
# Header of a legacy (pre-zip) torch.save file: pickle protocol 2 then torch's magic number.
_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"
_MAX_HEADER = 100 * 1024 * 1024

# safetensors dtype code -> bytes per element, and our short names for messages.
DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1,
}
DTYPE_NAMES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


# -- what the encoder is ---------------------------------------------------------------------


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of a CLIP text transformer (defaults: SD1.5's ViT-L/14 text model)."""

    vocab_size: int = CLIP_VOCAB_SIZE
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = CLIP_POSITIONS
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    def to_dict(self) -> dict:
        return dict(self.__dict__)

    def layers_for(self, clip_skip: int) -> int:
        """How many layers clip skip N runs: hidden_states[-N] is the output of layer L-N+1."""
        n = self.num_layers
        if not 1 <= clip_skip <= n:
            raise UsageError(
                f"Clip skip must be between 1 and {n} for this model, not {clip_skip}."
            )
        return n - clip_skip + 1

    @classmethod
    def from_dict(cls, data: Mapping) -> EncoderConfig:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor's bytes sit inside a safetensors file."""

    file: Path
    key: str
    dtype: str  # safetensors code: F32, F16, BF16, I64, ...
    shape: tuple[int, ...]
    start: int  # absolute byte offsets in the file
    end: int


@dataclass(frozen=True)
class TextEncoderSource:
    """A located text encoder: which files, which keys, which architecture.

    ``tensors`` maps canonical CLIPTextModel names (``encoder.layers.0.mlp.fc1.weight``, no
    ``text_model.`` prefix) to their place on disk; it is None for pickle checkpoints until
    ``tagsmith.model.encoder`` has opened them.
    """

    spec: str  # what the user gave (--model / TAGSMITH_MODEL / default)
    kind: str  # hub | diffusers | folder | single-file
    format: str  # safetensors | pickle
    files: tuple[Path, ...]
    description: str  # for reports: "single-file SD1.5 checkpoint (A1111/ComfyUI layout, fp16)"
    config: EncoderConfig | None = None
    tensors: Mapping[str, TensorRef] | None = None
    notes: tuple[str, ...] = ()
    stored_dtype: str | None = None  # fp32 | fp16 | bf16
    folder_config: Mapping | None = field(default=None, repr=False)  # config.json, if any

    @property
    def name(self) -> str:
        return self.spec

    def file_stats(self) -> list[tuple[str, int, int, int]]:
        """(path, size, mtime_ns, inode) of each weight file: a cheap identity for memoising."""
        out = []
        for f in self.files:
            st = f.stat()
            out.append((str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino))
        return out


# -- parsing --model --------------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[A-Za-z0-9][\w.\-]*$")


@dataclass(frozen=True)
class ModelSpec:
    """``--model`` parsed: a local path or a Hugging Face repo id."""

    kind: str  # path | hub
    value: str
    path: Path | None = None


def model_spec_from_settings(model: str | None) -> str:
    """The model the user means: ``--model``, else ``$TAGSMITH_MODEL``, else SD1.5 on the hub."""
    if model and model.strip():
        return model.strip()
    env = os.environ.get(MODEL_ENV, "").strip()
    return env or DEFAULT_MODEL


def parse_model_spec(spec: str) -> ModelSpec:
    """Decide whether ``spec`` is a local file/folder or a hub repo id (existing paths win)."""
    text = spec.strip()
    if not text:
        raise ModelNotFoundError("The model name is empty; give --model PATH or a repo id.")
    if text.startswith("hf://"):
        text = text[len("hf://"):]
        if _HUB_ID.match(text):
            return ModelSpec("hub", text)
    path = Path(os.path.expanduser(text))  # leaves "~nobody" alone instead of raising
    if _exists(path):
        return ModelSpec("path", text, path)
    if _HUB_ID.match(text) and not text.lower().endswith(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES):
        return ModelSpec("hub", text)
    raise ModelNotFoundError(
        f"There is no file or folder at '{text}', and it is not a Hugging Face repo id "
        "(owner/name); give a checkpoint, a diffusers folder or a repo id with --model."
    )


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except (OSError, ValueError):  # NUL bytes, names too long
        return False


def resolve_source(model: str | None = None, *, download: bool = True) -> TextEncoderSource:
    """Locate the text encoder ``model`` names and check that it is an SD1.5 CLIP encoder.

    Raises ModelNotFoundError, UnsupportedModelError (one sentence each). Pickle files are
    located but not opened here (that needs torch); see ``tagsmith.model.encoder.inspect_pickle``.
    """
    spec_text = model_spec_from_settings(model)
    spec = parse_model_spec(spec_text)
    if spec.kind == "hub":
        folder, weights, note = resolve_hub(spec.value, download=download)
        src = _source_from_folder(spec_text, folder, weights=weights, kind="hub")
        desc = f"Hugging Face model {spec.value} ({note})"
        return replace(src, description=desc)
    assert spec.path is not None
    if spec.path.is_dir():
        return _source_from_dir(spec_text, spec.path)
    return source_from_file(spec_text, spec.path)


# -- folders ------------------------------------------------------------------------------

_FOLDER_WEIGHTS = (
    "model.safetensors",
    "model.fp16.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.fp16.bin",
)


def _source_from_dir(spec: str, path: Path) -> TextEncoderSource:
    index = path / "model_index.json"
    te = path / "text_encoder"
    if index.is_file() or te.is_dir():
        if (path / "text_encoder_2").is_dir() or _model_index_has(index, "text_encoder_2"):
            raise UnsupportedModelError(
                f"'{spec}' is an SDXL-style diffusers pipeline (text_encoder and "
                "text_encoder_2); tagsmith measures SD1.5's single CLIP ViT-L text encoder."
            )
        if not te.is_dir():
            raise UnsupportedModelError(
                f"The diffusers folder '{spec}' has no text_encoder/ subfolder; tagsmith "
                "needs the pipeline's CLIP text encoder."
            )
        src = _source_from_folder(spec, te, kind="diffusers")
        return replace(src, description=f"diffusers pipeline {path} ({src.description})")
    if any((path / w).is_file() for w in _FOLDER_WEIGHTS) or (path / "config.json").is_file():
        return _source_from_folder(spec, path, kind="folder")
    checkpoints = sorted(
        p.name for p in path.iterdir()
        if p.suffix.lower() in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES and p.is_file()
    )
    if checkpoints:
        listed = ", ".join(checkpoints[:3]) + (", ..." if len(checkpoints) > 3 else "")
        raise UnsupportedModelError(
            f"'{spec}' is a folder of {len(checkpoints)} checkpoint files ({listed}); pass one "
            "of them with --model."
        )
    raise UnsupportedModelError(
        f"The folder '{spec}' holds no text encoder: expected a diffusers pipeline "
        "(text_encoder/), a CLIPTextModel folder (config.json and model.safetensors) or a "
        "single .safetensors/.ckpt file."
    )


def _model_index_has(index: Path, key: str) -> bool:
    if not index.is_file():
        return False
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    value = data.get(key) if isinstance(data, dict) else None
    return bool(value) and value != [None, None]


def _read_folder_config(folder: Path, spec: str) -> dict | None:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedModelError(
            f"The config.json in '{spec}' cannot be read as JSON ({exc.__class__.__name__})."
        ) from None
    if not isinstance(cfg, dict):
        raise UnsupportedModelError(f"The config.json in '{spec}' is not a JSON object.")
    model_type = str(cfg.get("model_type", ""))
    archs = [str(a) for a in cfg.get("architectures") or []]
    if model_type == "clip" or "CLIPModel" in archs:
        text_cfg = cfg.get("text_config") or {}
        return {**text_cfg, "model_type": "clip_text_model", "_from_clip_model": True}
    if model_type in ("clip_vision_model",) or (archs and all("Vision" in a for a in archs)):
        raise UnsupportedModelError(
            f"'{spec}' is a CLIP vision model; tagsmith needs the text encoder."
        )
    if model_type and model_type not in ("clip_text_model", "clip_text_with_projection"):
        raise UnsupportedModelError(
            f"'{spec}' is a '{model_type}' model; tagsmith needs SD1.5's CLIP text encoder "
            "(model_type clip_text_model)."
        )
    return cfg


def _source_from_folder(
    spec: str, folder: Path, *, weights: Path | None = None, kind: str = "folder"
) -> TextEncoderSource:
    cfg = _read_folder_config(folder, spec)
    if weights is None:
        weights = next((folder / w for w in _FOLDER_WEIGHTS if (folder / w).is_file()), None)
    if weights is None:
        raise UnsupportedModelError(
            f"The model folder '{folder}' has no weights: expected model.safetensors (or "
            "pytorch_model.bin) next to config.json."
        )
    if weights.name.endswith(".index.json"):
        src = _source_from_sharded(spec, weights, cfg)
    else:
        src = source_from_file(spec, weights, folder_config=cfg)
    what = "CLIPModel" if cfg and cfg.get("_from_clip_model") else "CLIPTextModel"
    desc = f"{what} folder, {src.stored_dtype or 'weights'} in {weights.name}"
    return replace(src, kind=kind, description=desc)


def _source_from_sharded(spec: str, index: Path, cfg: dict | None) -> TextEncoderSource:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError):
        raise UnsupportedModelError(
            f"The shard index '{index}' cannot be read (expected a weight_map)."
        ) from None
    shards = sorted({index.parent / str(v) for v in weight_map.values()})
    headers = {}
    for shard in shards:
        if not shard.is_file():
            raise ModelNotFoundError(f"The shard '{shard}' listed in '{index}' is missing.")
        headers.update(read_safetensors_header(shard).tensors)
    return _safetensors_source(spec, tuple(shards), headers, cfg)


# -- single files -------------------------------------------------------------------------


def sniff_format(path: Path) -> str:
    """'safetensors', 'zip-pickle', 'legacy-pickle' or 'unknown', from the first bytes."""
    try:
        with path.open("rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ModelNotFoundError(f"Cannot read '{path}': {exc.strerror or exc}.") from None
    if head.startswith(b"PK\x03\x04"):
        return "zip-pickle"
    # torch's legacy format, or any pickle (protocol 2-5): torch.load(weights_only=True) judges it.
    is_pickle = head[:1] == b"\x80" and head[1:2] in b"\x02\x03\x04\x05"
    if head.startswith(_LEGACY_TORCH_MAGIC[:4]) or is_pickle:
        return "legacy-pickle"
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n <= _MAX_HEADER and head[8:9] == b"{":
            return "safetensors"
    return "unknown"


def source_from_file(
    spec: str, path: Path, *, folder_config: Mapping | None = None
) -> TextEncoderSource:
    """A single weights file: safetensors is inspected now; a pickle is only recognised."""
    if not path.is_file():
        raise ModelNotFoundError(f"There is no file at '{path}'.")
    fmt = sniff_format(path)
    suffix = path.suffix.lower()
    if fmt == "safetensors" or (fmt == "unknown" and suffix in SAFETENSORS_SUFFIXES):
        header = read_safetensors_header(path)
        return _safetensors_source(spec, (path,), header.tensors, folder_config)
    if fmt in ("zip-pickle", "legacy-pickle"):
        return TextEncoderSource(
            spec=spec, kind="single-file", format="pickle", files=(path,),
            description=f"pickle checkpoint {path.name}", folder_config=folder_config,
        )
    if suffix in PICKLE_SUFFIXES:
        raise UnsupportedModelError(
            f"'{path}' is not a readable PyTorch checkpoint (it is neither a zip archive nor a "
            "pickle); the file may be damaged or only partly downloaded."
        )
    raise UnsupportedModelError(
        f"'{path}' is not a model file tagsmith reads: expected a .safetensors or .ckpt "
        "checkpoint, a diffusers folder or a Hugging Face repo id."
    )


def _safetensors_source(
    spec: str,
    files: tuple[Path, ...],
    tensors: Mapping[str, TensorRef],
    folder_config: Mapping | None,
) -> TextEncoderSource:
    name = str(files[0]) if len(files) == 1 else str(files[0].parent)
    shapes = {k: t.shape for k, t in tensors.items()}
    prefix = locate_text_encoder(shapes, name)
    canonical = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
    config = encoder_config_from_shapes(
        {k: t.shape for k, t in canonical.items()}, folder_config, name
    )
    notes = []
    pos = canonical.get(POSITION_IDS)
    if pos is not None:
        note = position_ids_note(read_tensor_array(pos), pos.dtype, config.max_positions)
        if note:
            notes.append(note)
    stored = DTYPE_NAMES.get(canonical[TOKEN_EMBEDDING].dtype, canonical[TOKEN_EMBEDDING].dtype)
    for key, ref in canonical.items():
        if key != POSITION_IDS and ref.dtype not in FLOAT_DTYPES:
            raise UnsupportedModelError(
                f"'{name}' stores the text encoder tensor {prefix}{key} as {ref.dtype}; "
                "tagsmith reads fp32, fp16 or bf16 weights."
            )
    return TextEncoderSource(
        spec=spec, kind="single-file", format="safetensors", files=files,
        description=f"{layout_description(prefix)}, {stored}",
        config=config, tensors=canonical, notes=tuple(notes), stored_dtype=stored,
        folder_config=folder_config,
    )


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


# -- safetensors headers ----------------------------------------------------------------------


@dataclass(frozen=True)
class SafetensorsHeader:
    tensors: dict[str, TensorRef]
    metadata: dict
    data_start: int
    file_size: int


def read_safetensors_header(path: Path) -> SafetensorsHeader:
    """Parse a safetensors header and check it against the file size (pure Python).

    Raises UnsupportedModelError naming what is wrong: not safetensors, damaged, truncated.
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise UnsupportedModelError(
                    f"'{path}' is too short ({size} bytes) to be a safetensors file; it may be "
                    "an interrupted download."
                )
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                raise UnsupportedModelError(
                    f"'{path}' is not a safetensors file (its first bytes do not describe a "
                    "header); it may be damaged or in another format."
                )
            if 8 + n > size:
                raise UnsupportedModelError(
                    f"'{path}' is truncated: its header alone needs {8 + n:,} bytes but the file "
                    f"has {size:,}; it may be an interrupted download."
                )
            raw = fh.read(n)
    except OSError as exc:
        raise ModelNotFoundError(f"Cannot read '{path}': {exc.strerror or exc}.") from None
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (UnicodeDecodeError, ValueError):
        raise UnsupportedModelError(
            f"'{path}' is damaged or not a safetensors file (its header is not valid JSON)."
        ) from None
    data_start = 8 + n
    data_len = size - data_start
    metadata = header.pop("__metadata__", None) or {}
    tensors: dict[str, TensorRef] = {}
    need = 0
    try:
        for key, info in header.items():
            dtype = str(info["dtype"])
            shape = tuple(int(d) for d in info["shape"])
            begin, end = (int(x) for x in info["data_offsets"])
            if dtype not in DTYPE_SIZES or begin < 0 or end < begin:
                raise ValueError(key)
            if end - begin != DTYPE_SIZES[dtype] * int(np.prod(shape, dtype=np.int64)):
                raise ValueError(key)
            need = max(need, end)
            tensors[key] = TensorRef(path, key, dtype, shape, data_start + begin, data_start + end)
    except (KeyError, TypeError, ValueError):
        raise UnsupportedModelError(
            f"'{path}' is damaged: its safetensors header describes a tensor inconsistently."
        ) from None
    if need > data_len:
        raise UnsupportedModelError(
            f"'{path}' is truncated: its header describes {need:,} bytes of tensors but only "
            f"{data_len:,} are in the file; it may be an interrupted download or copy."
        )
    return SafetensorsHeader(tensors, metadata if isinstance(metadata, dict) else {},
                             data_start, size)


def read_tensor_array(ref: TensorRef) -> np.ndarray:
    """One tensor from a safetensors file as a numpy array (bf16 widened to float32)."""
    count = int(np.prod(ref.shape, dtype=np.int64))
    with ref.file.open("rb") as fh:
        fh.seek(ref.start)
        if ref.dtype == "BF16":
            raw = np.fromfile(fh, dtype="<u2", count=count)
            arr = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            np_dtype = {
                "F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4",
                "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?", "U16": "<u2",
                "U32": "<u4", "U64": "<u8",
            }.get(ref.dtype)
            if np_dtype is None:
                raise UnsupportedModelError(
                    f"'{ref.file}' stores {ref.key} as {ref.dtype}, which tagsmith cannot read."
                )
            arr = np.fromfile(fh, dtype=np_dtype, count=count)
    if arr.size != count:
        raise UnsupportedModelError(f"'{ref.file}' is truncated inside tensor {ref.key}.")
    return arr.reshape(ref.shape)


# -- what a set of keys is ----------------------------------------------------------------------

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
    if any(k.startswith("conditioner.embedders.") for k in keys):
        raise UnsupportedModelError(
            f"'{name}' is an SDXL checkpoint (two text encoders, CLIP ViT-L and OpenCLIP "
            "ViT-bigG); tagsmith measures SD1.5's CLIP ViT-L encoder, so give an SD1.5 "
            "checkpoint."
        )
    openclip = "token_embedding.weight" in shapes and any(
        k.startswith("transformer.resblocks.") for k in keys
    )
    if openclip or any(k.startswith("cond_stage_model.model.") for k in keys):
        width = _openclip_width(shapes)
        raise UnsupportedModelError(
            f"'{name}' is an SD 2.x checkpoint (its text encoder is OpenCLIP ViT-H"
            f"{f', width {width}' if width else ''}); tagsmith needs an SD1.5 checkpoint, whose "
            "encoder is CLIP ViT-L under cond_stage_model.transformer."
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


def _openclip_width(shapes: Mapping[str, tuple[int, ...]]) -> int | None:
    for key, shape in shapes.items():
        if key.endswith("token_embedding.weight") and len(shape) == 2:
            return int(shape[1])
    return None


def encoder_config_from_shapes(
    shapes: Mapping[str, tuple[int, ...]], folder_config: Mapping | None, name: str
) -> EncoderConfig:
    """Architecture from canonical tensor shapes (config.json supplies heads and activation).

    Checks that every tensor a CLIP text transformer needs is there with a consistent shape.
    """
    cfg = dict(folder_config or {})
    required = [TOKEN_EMBEDDING, POSITION_EMBEDDING, "final_layer_norm.weight",
                "final_layer_norm.bias"]
    layers = sorted({int(m.group(1)) for k in shapes if (m := _LAYER_KEY.match(k))})
    n_layers = (layers[-1] + 1) if layers else 0
    required += [f"encoder.layers.{i}.{p}" for i in range(n_layers) for p in _LAYER_PARAMS]
    missing = [k for k in required if k not in shapes]
    if missing or n_layers == 0:
        first = missing[0] if missing else "encoder.layers.0.*"
        raise UnsupportedModelError(
            f"'{name}' has an incomplete text encoder: {first}"
            + (f" and {len(missing) - 1} more tensors are" if len(missing) > 1 else " is")
            + " missing; the file may be damaged or pruned."
        )
    vocab, hidden = shapes[TOKEN_EMBEDDING]
    positions = shapes[POSITION_EMBEDDING][0]
    intermediate = shapes["encoder.layers.0.mlp.fc1.weight"][0]
    if hidden == 1024:
        raise UnsupportedModelError(
            f"'{name}' is an SD 2.x text encoder (OpenCLIP ViT-H, width 1024); tagsmith needs "
            "SD1.5's CLIP ViT-L encoder (width 768)."
        )
    if hidden == 1280:
        raise UnsupportedModelError(
            f"'{name}' is an SDXL second text encoder (OpenCLIP ViT-bigG, width 1280); tagsmith "
            "needs SD1.5's CLIP ViT-L encoder (width 768)."
        )
    if vocab != CLIP_VOCAB_SIZE:
        raise UnsupportedModelError(
            f"'{name}' has a vocabulary of {vocab:,} tokens, not CLIP's {CLIP_VOCAB_SIZE:,}; it "
            "is not an SD1.5 text encoder."
        )
    if positions != CLIP_POSITIONS:
        raise UnsupportedModelError(
            f"'{name}' has {positions} positions, not SD1.5's {CLIP_POSITIONS}; it is not an "
            "SD1.5 text encoder."
        )
    # CLIP text transformers use 64-wide heads; a config.json says so explicitly when present.
    heads = int(cfg.get("num_attention_heads") or max(1, hidden // 64))
    config = EncoderConfig(
        vocab_size=int(vocab),
        hidden_size=int(hidden),
        num_layers=n_layers,
        num_heads=heads,
        intermediate_size=int(intermediate),
        max_positions=int(positions),
        hidden_act=str(cfg.get("hidden_act") or "quick_gelu"),
        layer_norm_eps=float(cfg.get("layer_norm_eps") or 1e-5),
    )
    if hidden % heads:
        raise UnsupportedModelError(
            f"'{name}' declares {heads} attention heads, which do not divide its width {hidden}."
        )
    if config.hidden_act not in ("quick_gelu", "gelu"):
        raise UnsupportedModelError(
            f"'{name}' uses the activation '{config.hidden_act}'; SD1.5's encoder uses quick_gelu."
        )
    expected = expected_shapes(config)
    for key, shape in expected.items():
        if tuple(shapes[key]) != shape:
            raise UnsupportedModelError(
                f"'{name}' has an inconsistent text encoder: {key} has shape "
                f"{tuple(shapes[key])}, expected {shape}."
            )
    return config


def expected_shapes(c: EncoderConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor of a CLIP text encoder with config ``c``, canonical name -> shape."""
    h, i = c.hidden_size, c.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {
        TOKEN_EMBEDDING: (c.vocab_size, h),
        POSITION_EMBEDDING: (c.max_positions, h),
        "final_layer_norm.weight": (h,),
        "final_layer_norm.bias": (h,),
    }
    for n in range(c.num_layers):
        p = f"encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}self_attn.{proj}.weight"] = (h, h)
            shapes[f"{p}self_attn.{proj}.bias"] = (h,)
        for ln in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}{ln}.weight"] = (h,)
            shapes[f"{p}{ln}.bias"] = (h,)
        shapes[f"{p}mlp.fc1.weight"] = (i, h)
        shapes[f"{p}mlp.fc1.bias"] = (i,)
        shapes[f"{p}mlp.fc2.weight"] = (h, i)
        shapes[f"{p}mlp.fc2.bias"] = (h,)
    return shapes


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


# -- fingerprint ------------------------------------------------------------------------------

FINGERPRINT_VERSION = "tagsmith-te-1"


class FingerprintHasher:
    """Content hash of an encoder: architecture, then each tensor's name, dtype, shape, bytes.

    Canonical names (no file prefix) make the same weights saved as an HF folder or an A1111
    single file hash alike, so they share cache entries. position_ids are left out: tagsmith
    never uses the stored ones.
    """

    def __init__(self, config: EncoderConfig) -> None:
        self._h = hashlib.sha256()
        self._h.update(FINGERPRINT_VERSION.encode())
        arch = {k: v for k, v in config.to_dict().items()}
        self._h.update(json.dumps(arch, sort_keys=True).encode())

    def update(self, name: str, dtype: str, shape: Iterable[int], data: memoryview | bytes) -> None:
        self._h.update(f"\n{name}|{dtype}|{','.join(map(str, shape))}\n".encode())
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()[:16]


def fingerprint_names(tensors: Iterable[str]) -> list[str]:
    return sorted(k for k in tensors if k != POSITION_IDS)


def safetensors_fingerprint(source: TextEncoderSource) -> str:
    """Hash the encoder's tensors straight from the memory-mapped file(s) (~0.3 s per 500 MB)."""
    assert source.tensors is not None and source.config is not None
    hasher = FingerprintHasher(source.config)
    maps: dict[Path, mmap.mmap] = {}
    try:
        for name in fingerprint_names(source.tensors):
            ref = source.tensors[name]
            mm = maps.get(ref.file)
            if mm is None:
                with ref.file.open("rb") as fh:
                    mm = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
                maps[ref.file] = mm
            view = memoryview(mm)[ref.start:ref.end]
            try:
                hasher.update(name, ref.dtype, ref.shape, view)
            finally:
                view.release()
    finally:
        for mm in maps.values():
            mm.close()
    return hasher.hexdigest()


# -- Hugging Face hub -----------------------------------------------------------------------

# Candidates in preference order: full precision when already cached (exact), else the fp16
# variant, which is what gets downloaded when the repo has one (half the bytes).
_HUB_LAYOUTS = (
    ("text_encoder/", "diffusers text_encoder"),
    ("", "CLIP model"),
)
_HUB_WEIGHTS_CACHED = ("model.safetensors", "model.fp16.safetensors", "pytorch_model.bin",
                       "pytorch_model.fp16.bin")
_HUB_WEIGHTS_DOWNLOAD = ("model.fp16.safetensors", "model.safetensors", "pytorch_model.fp16.bin",
                         "pytorch_model.bin")


def hub_cache_dir() -> Path:
    """The HF hub cache, computed from the environment now (HF_HUB_CACHE, HF_HOME, XDG)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _cached_hub_file(repo_id: str, filename: str, cache_dir: Path) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename, cache_dir=str(cache_dir))
    return Path(found) if isinstance(found, str) else None


def resolve_hub(
    repo_id: str,
    *,
    download: bool = True,
    fetch: Callable[[str, str, Path], Path] | None = None,
    list_files: Callable[[str], list[str]] | None = None,
) -> tuple[Path, Path, str]:
    """(folder holding the encoder, its weights file, a note) for a hub repo.

    Looks in the local HF cache first, so nothing is downloaded when the encoder is cached.
    Otherwise downloads only the encoder's config and weights (fp16 variant when the repo has
    one), unless HF_HUB_OFFLINE is set. ``fetch``/``list_files`` replace the network in tests.
    """
    cache_dir = hub_cache_dir()
    for sub, what in _HUB_LAYOUTS:
        for w in _HUB_WEIGHTS_CACHED:
            weights = _cached_hub_file(repo_id, sub + w, cache_dir)
            if weights is not None:
                variant = "fp16 variant" if ".fp16." in w else w
                return weights.parent, weights, f"{what}, {variant}, from the local cache"
    hint = (
        "give a local checkpoint or diffusers folder with --model PATH or the TAGSMITH_MODEL "
        "environment variable"
    )
    if hub_offline() or not download:
        raise ModelNotFoundError(
            f"The model '{repo_id}' is not in the Hugging Face cache ({cache_dir}) and "
            f"downloads are off (HF_HUB_OFFLINE); {hint}."
        )
    try:
        files = set(list_files(repo_id) if list_files else _list_repo_files(repo_id))
    except ModelNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - any hub/network failure becomes one sentence
        raise ModelNotFoundError(
            f"Could not reach the Hugging Face Hub for '{repo_id}' ({_hub_error(exc)}); {hint}."
        ) from None
    for sub, what in _HUB_LAYOUTS:
        weights_name = next((sub + w for w in _HUB_WEIGHTS_DOWNLOAD if sub + w in files), None)
        if weights_name is None:
            continue
        wanted = [n for n in (sub + "config.json",) if n in files] + [weights_name]
        try:
            paths = [(fetch or _hf_download)(repo_id, n, cache_dir) for n in wanted]
        except Exception as exc:  # noqa: BLE001
            raise ModelNotFoundError(
                f"Could not download '{repo_id}' from the Hugging Face Hub ({_hub_error(exc)}); "
                f"{hint}."
            ) from None
        weights = paths[-1]
        variant = "fp16 variant" if ".fp16." in weights_name else Path(weights_name).name
        return weights.parent, weights, f"{what}, {variant}, downloaded"
    raise UnsupportedModelError(
        f"The Hugging Face repo '{repo_id}' has no CLIP text encoder weights (looked for "
        "text_encoder/model.safetensors and model.safetensors)."
    )


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the hub cannot be reached, or None. Without this, an offline machine waits ~25 s
    through huggingface_hub's retries before the same failure."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy decides reachability; let huggingface_hub try
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    if not url.hostname:
        return None
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ).close()
    except OSError as exc:
        return f"{exc.__class__.__name__}: {exc.strerror or exc}"
    return None


def _list_repo_files(repo_id: str) -> list[str]:
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    why = _hub_unreachable()
    if why is not None:
        raise ConnectionError(why)
    try:
        return HfApi().list_repo_files(repo_id)
    except GatedRepoError:
        raise ModelNotFoundError(
            f"The Hugging Face repo '{repo_id}' is gated; accept its licence on the website and "
            "log in with `hf auth login`, or give a local checkpoint with --model PATH."
        ) from None
    except RepositoryNotFoundError:
        raise ModelNotFoundError(
            f"There is no Hugging Face repo '{repo_id}' (or it is private); check the name or "
            "give a local checkpoint with --model PATH."
        ) from None


def _hf_download(repo_id: str, filename: str, cache_dir: Path) -> Path:
    from huggingface_hub import hf_hub_download

    # hf_hub_download shows its own progress bar on stderr.
    return Path(hf_hub_download(repo_id, filename, cache_dir=str(cache_dir)))


def _hub_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text[:120]}" if text else exc.__class__.__name__
