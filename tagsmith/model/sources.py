"""Where a text encoder lives, and what a weights file holds. Pure: no torch.

``--model`` (or ``TAGSMITH_MODEL``) names one of:

- a Hugging Face repo id (default ``stable-diffusion-v1-5/stable-diffusion-v1-5``), read from the
  local HF cache and downloaded only when missing (text encoder files only);
- a diffusers pipeline folder (its ``text_encoder/``, and ``text_encoder_2/`` for SDXL) or a
  CLIPTextModel / CLIPModel folder;
- a single-file SD1.5 or SDXL checkpoint (``.safetensors``; ``.ckpt``/``.pt``/``.bin`` pickles).

An SDXL model is one source with two ``parts`` ("l": CLIP-L, "g": OpenCLIP-G), each a source
of its own under canonical CLIPTextModel names (``tagsmith.model.sdxl``).

``resolve_source`` turns that into a ``TextEncoderSource``: the weight files, where the encoder's
tensors sit in them, the architecture, and notes for the user. Safetensors headers are parsed
here in plain Python, so every "this is an SDXL checkpoint / a LoRA / truncated" sentence and the
model fingerprint come without importing torch. Pickle checkpoints can only be opened through
``torch.load(weights_only=True)``, which ``tagsmith.model.encoder`` does; the key rules they go
through (``locate_text_encoder``) live here so both formats get the same sentences.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from tagsmith.errors import InputError, ModelNotFoundError, UnsupportedModelError
from tagsmith.fileio import read_regular_bytes
from tagsmith.model.config import (
    POSITION_IDS,
    TEXT_PROJECTION,
    TOKEN_EMBEDDING,
    EncoderConfig,
    encoder_config_from_shapes,
)
from tagsmith.model.hub import SECOND_ENCODER, resolve_hub
from tagsmith.model.layouts import layout_description, locate_text_encoder, position_ids_note
from tagsmith.model.safetensors_file import (
    DTYPE_NAMES,
    FLOAT_DTYPES,
    PICKLE_SUFFIXES,
    SAFETENSORS_SUFFIXES,
    TensorRef,
    read_safetensors_header,
    read_tensor_array,
    sniff_format,
)

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


MODEL_ENV = "TAGSMITH_MODEL"


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
    family: str = "SD1.5"  # SD1.5 | SDXL
    parts: Mapping[str, TextEncoderSource] | None = None  # SDXL: {"l": ..., "g": ...}

    @property
    def name(self) -> str:
        return self.spec

    def encoders(self) -> dict[str, TextEncoderSource]:
        """Each text encoder by part name: {"l": self} for SD1.5, {"l", "g"} for SDXL."""
        return dict(self.parts) if self.parts is not None else {"l": self}

    def file_stats(self) -> list[tuple[str, int, int, int, int]]:
        """(path, size, mtime_ns, inode, ctime_ns) of each weight file: a cheap identity for
        memoising (ctime changes on any in-place write and cannot be set back by the writer)."""
        out = []
        for f in self.files:
            st = f.stat()
            out.append((str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
        return out


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
    broken = _broken_link(path)
    if broken:
        raise ModelNotFoundError(f"'{text}' is a symbolic link {broken}; give --model a real "
                                 "checkpoint, folder or Hugging Face repo id.")
    if _HUB_ID.match(text) and not text.lower().endswith(SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES):
        return ModelSpec("hub", text)
    raise ModelNotFoundError(
        f"There is no file or folder at '{text}', and it is not a Hugging Face repo id "
        "(owner/name); give a checkpoint, a diffusers folder or a repo id with --model."
    )


def _broken_link(path: Path) -> str | None:
    """How a symlink at ``path`` fails ("that loops", "to X, which does not exist"), or None."""
    try:
        if not path.is_symlink():
            return None
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "that loops back on itself (or through too many links)"
        with contextlib.suppress(OSError):
            return f"to '{os.readlink(path)}', which does not exist"
        return "that cannot be followed"
    except ValueError:
        return None
    return None


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
        found = resolve_hub(spec.value, download=download)
        assert found is not None  # required: raises instead
        folder, weights, note = found
        second = None
        if folder.name == "text_encoder" and (
            (folder.parent / "text_encoder_2").is_dir()
            or _model_index_has(folder.parent / "model_index.json", "text_encoder_2")
            or "downloaded" in note
        ):
            second = resolve_hub(spec.value, download=download, layouts=SECOND_ENCODER,
                                 required="downloaded" not in note)
        if second is not None:
            from tagsmith.model.sdxl import folder_source

            src = folder_source(spec_text, folder, second[0], weights=(weights, second[1]),
                                kind="hub")
        else:
            src = _source_from_folder(spec_text, folder, weights=weights, kind="hub")
        desc = f"Hugging Face model {spec.value} ({note})"
        return replace(src, description=desc)
    assert spec.path is not None
    if spec.path.is_dir():
        return _source_from_dir(spec_text, spec.path)
    return source_from_file(spec_text, spec.path)


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
        _refuse_other_pipelines(spec, index)
        if (path / "text_encoder_2").is_dir() or _model_index_has(index, "text_encoder_2"):
            from tagsmith.model.sdxl import folder_source

            if not te.is_dir() or not (path / "text_encoder_2").is_dir():
                raise UnsupportedModelError(
                    f"The SDXL diffusers folder '{spec}' needs both text_encoder/ and "
                    "text_encoder_2/; an SDXL refiner (text_encoder_2 only) has no CLIP-L, "
                    "so use the base model it refines."
                )
            src = folder_source(spec, te, path / "text_encoder_2", kind="diffusers")
            return replace(src, description=f"SDXL diffusers pipeline {path} ({src.description})")
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


def _refuse_other_pipelines(spec: str, index: Path) -> None:
    """SD3 and Flux pipelines: one sentence saying what they are and what tagsmith reads."""
    if not index.is_file():
        return
    try:
        data = json.loads(_read_small(index))
    except (OSError, ValueError, RecursionError, InputError):
        return
    if not isinstance(data, dict):
        return
    name = str(data.get("_class_name", ""))
    if "StableDiffusion3" in name or "Flux" in name or "text_encoder_3" in data:
        what = "a Flux" if "Flux" in name else "an SD3"
        raise UnsupportedModelError(
            f"'{spec}' is {what} pipeline ({name or 'T5 text encoder'}); tagsmith reads SD1.5 "
            "(CLIP-L) and SDXL (CLIP-L + OpenCLIP-G) text encoders."
        )


def _model_index_has(index: Path, key: str) -> bool:
    if not index.is_file():
        return False
    try:
        data = json.loads(_read_small(index))
    except (OSError, ValueError, RecursionError, InputError):
        return False
    value = data.get(key) if isinstance(data, dict) else None
    return bool(value) and value != [None, None]


def _read_folder_config(folder: Path, spec: str) -> dict | None:
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        cfg = json.loads(_read_small(cfg_path))
    except (OSError, ValueError, RecursionError, InputError) as exc:
        raise UnsupportedModelError(
            f"The config.json in '{spec}' cannot be read as JSON ({exc.__class__.__name__})."
        ) from None
    if not isinstance(cfg, dict):
        raise UnsupportedModelError(f"The config.json in '{spec}' is not a JSON object.")
    model_type = str(cfg.get("model_type", ""))
    archs_value = cfg.get("architectures") or []
    if not isinstance(archs_value, list):
        raise UnsupportedModelError(
            f"The config.json in '{spec}' gives architectures as {archs_value!r}, not a list."
        )
    archs = [str(a) for a in archs_value]
    if model_type == "clip" or "CLIPModel" in archs:
        text_cfg = cfg.get("text_config") or {}
        if not isinstance(text_cfg, dict):
            raise UnsupportedModelError(
                f"The config.json in '{spec}' gives text_config as {text_cfg!r}, not an object."
            )
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
    spec: str, folder: Path, *, weights: Path | None = None, kind: str = "folder",
    family: str = "SD1.5",
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
        src = _source_from_sharded(spec, weights, cfg, family)
    else:
        src = source_from_file(spec, weights, folder_config=cfg, family=family)
    what = "CLIPModel" if cfg and cfg.get("_from_clip_model") else "CLIPTextModel"
    desc = f"{what} folder, {src.stored_dtype or 'weights'} in {weights.name}"
    return replace(src, kind=kind, description=desc)


def _read_small(path: Path) -> bytes:
    """A JSON side file (config, index): a regular file of at most 64 MiB."""
    return read_regular_bytes(path, limit=64 << 20, what="JSON file")


def _source_from_sharded(
    spec: str, index: Path, cfg: dict | None, family: str = "SD1.5"
) -> TextEncoderSource:
    try:
        weight_map = json.loads(_read_small(index))["weight_map"]
        if not isinstance(weight_map, dict):
            raise TypeError("weight_map is not an object")
    except (OSError, ValueError, KeyError, TypeError, RecursionError, InputError):
        raise UnsupportedModelError(
            f"The shard index '{index}' cannot be read (expected a weight_map object)."
        ) from None
    shards = sorted({index.parent / str(v) for v in weight_map.values()})
    headers = {}
    for shard in shards:
        if not shard.is_file():
            raise ModelNotFoundError(f"The shard '{shard}' listed in '{index}' is missing.")
        headers.update(read_safetensors_header(shard).tensors)
    return _safetensors_source(spec, tuple(shards), headers, cfg, family)


def source_from_file(
    spec: str, path: Path, *, folder_config: Mapping | None = None, family: str = "SD1.5"
) -> TextEncoderSource:
    """A single weights file: safetensors is inspected now; a pickle is only recognised."""
    if not path.is_file():
        raise ModelNotFoundError(f"There is no file at '{path}'.")
    fmt = sniff_format(path)
    suffix = path.suffix.lower()
    if fmt == "safetensors" or (fmt == "unknown" and suffix in SAFETENSORS_SUFFIXES):
        header = read_safetensors_header(path)
        return _safetensors_source(spec, (path,), header.tensors, folder_config, family)
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
    family: str = "SD1.5",
) -> TextEncoderSource:
    name = str(files[0]) if len(files) == 1 else str(files[0].parent)
    shapes = {k: t.shape for k, t in tensors.items()}
    if family == "SD1.5":
        from tagsmith.model import sdxl

        if sdxl.is_sdxl_single_file(shapes):
            return sdxl.single_file_source(spec, files, tensors, name)
    prefix = locate_text_encoder(shapes, name)
    canonical = {k[len(prefix):]: t for k, t in tensors.items() if k.startswith(prefix)}
    if family != "SD1.5" and TEXT_PROJECTION in tensors and TEXT_PROJECTION not in canonical:
        # CLIPTextModelWithProjection keeps its projection beside text_model.
        canonical[TEXT_PROJECTION] = tensors[TEXT_PROJECTION]
    return part_source(spec, files, canonical, folder_config, name, prefix, family=family)


def part_source(
    spec: str,
    files: tuple[Path, ...],
    canonical: Mapping[str, TensorRef],
    folder_config: Mapping | None,
    name: str,
    prefix: str,
    *,
    family: str = "SD1.5",
    default_act: str = "quick_gelu",
) -> TextEncoderSource:
    """One text encoder whose tensors are already under canonical names: checked, described."""
    config = encoder_config_from_shapes(
        {k: t.shape for k, t in canonical.items()}, folder_config, name, family=family,
        default_act=str((folder_config or {}).get("hidden_act") or default_act),
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
        folder_config=folder_config, family=family,
    )
