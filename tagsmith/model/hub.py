"""Hugging Face hub access: find a repo's text encoder in the local cache, or download only its
files (fp16 variant first), failing fast with one sentence when the hub cannot be reached."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from tagsmith.errors import ModelNotFoundError, UnsupportedModelError

# Candidates in preference order: full precision when already cached (exact), else the fp16
# variant, which is what gets downloaded when the repo has one (half the bytes).
_HUB_LAYOUTS = (
    ("text_encoder/", "diffusers text_encoder"),
    ("", "CLIP model"),
)


# SDXL repos: the second encoder (OpenCLIP-G as CLIPTextModelWithProjection).
SECOND_ENCODER = (("text_encoder_2/", "diffusers text_encoder_2"),)


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
    layouts: tuple[tuple[str, str], ...] = _HUB_LAYOUTS,
    required: bool = True,
) -> tuple[Path, Path, str] | None:
    """(folder holding the encoder, its weights file, a note) for a hub repo.

    Looks in the local HF cache first, so nothing is downloaded when the encoder is cached.
    Otherwise downloads only the encoder's config and weights (fp16 variant when the repo has
    one), unless HF_HUB_OFFLINE is set. ``fetch``/``list_files`` replace the network in tests.
    ``layouts`` are the subfolders tried; with ``required`` False a repo without them gives
    None (an SD1.5 repo has no text_encoder_2).
    """
    cache_dir = hub_cache_dir()
    for sub, what in layouts:
        for w in _HUB_WEIGHTS_CACHED:
            weights = _cached_hub_file(repo_id, sub + w, cache_dir)
            if weights is not None:
                variant = "fp16 variant" if ".fp16." in w else w
                return weights.parent, weights, f"{what}, {variant}, from the local cache"
    hint = (
        "give a local checkpoint or diffusers folder with --model PATH or the TAGSMITH_MODEL "
        "environment variable"
    )
    if (hub_offline() or not download) and not required:
        return None
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
    for sub, what in layouts:
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
    if not required:
        return None
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
