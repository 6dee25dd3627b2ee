"""Tag vectors from the user's own SD1.5 or SDXL text encoder(s): the one façade the rest of
tagsmith uses.

``open_embedder(EncoderSettings(...))`` resolves the model now (so a bad ``--model`` fails at
once, with one sentence) and returns a ``TagEmbedder``; the weights are loaded, and torch
imported, only on the first cache miss. Vectors are cached per model fingerprint.

Representations (``EncoderSettings.representation``):

- ``tag`` (default, what scores use): the mean of the final-layer states at the tag's own token
  positions, without BOS, EOS or padding. These states are exactly the keys and values the
  UNet's cross-attention reads for the tag, token by token, so two tags whose token states sit
  close are two tags the UNet cannot tell apart; it is also where a LoRA's trigger word learns.
- ``eos``: the state at the first EOS (CLIP's pooled output), a summary of the whole prompt
  seen through CLIP's contrastive objective; the UNet sees it only as one of 77 states (plus the
  EOS padding copies), so it says less about what a tag does to the image.
- per-token states (``TagEmbedder.token_states``): the full (n_tokens, 768) matrix per tag.
- ``pooled`` (SDXL only): CLIP-G's projected pooled vector, the UNet's extra ``y`` input.

SDXL (``tagsmith.model.sdxl``): vectors are CLIP-L's and CLIP-G's states side by side, 2048
wide, as the UNet's cross-attention reads them (``encoder`` "l" or "g" keeps one side).
``combine`` "balanced" scales each side to the same length, so a cosine is the mean of the two
encoders' cosines instead of the UNet's view, where G's 1280 wider dimensions weigh more.

``context`` ("1girl, solo, {}") embeds the tag after the tags before it, as SD sees it in a
prompt; the vector still covers only the tag's own tokens. Because attention is causal, text
after ``{}`` changes the ``eos`` vector but never the tag's own states.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from tagsmith.errors import InputError, ModelError, ModelNotFoundError, UsageError
from tagsmith.model.cache import CacheVariant, EmbeddingCache, SourceMemo
from tagsmith.model.config import TOKEN_EMBEDDING, EncoderConfig
from tagsmith.model.device import gpu_possible
from tagsmith.model.fingerprint import memo_identity, safetensors_fingerprint
from tagsmith.model.lora_patch import (
    LoraPatch,
    LoraState,
    merged_torch_tensors,
    patches_for_model,
)
from tagsmith.model.safetensors_file import read_tensor_array
from tagsmith.model.settings import (  # noqa: F401 - re-exported: callers import them from here
    COMBINES,
    CONTEXT_SLOT,
    DEVICES,
    DTYPES,
    ENCODERS,
    MAX_CLIP_SKIP,
    REPRESENTATIONS,
    EncoderSettings,
    split_context,
)
from tagsmith.model.sources import TextEncoderSource, model_spec_from_settings, resolve_source
from tagsmith.paths import resolve_cache_dir
from tagsmith.text.tokenizer import BOS_ID, CHUNK_LENGTH, EOS_ID

ProgressFn = Callable[[int, int], None]
Ids = Sequence[Sequence[int]] | None  # token ids per text, when a caller has them


def _token_ids(texts: Sequence[str], known: Ids) -> Sequence[Sequence[int]]:
    from tagsmith.text.tokenizer import load_tokenizer

    return known if known is not None else load_tokenizer().encode_batch(list(texts))


def long_tags_note(texts: set[str] | Sequence[str], room: int, first: tuple[str, int],
                   family: str = "SD1.5") -> str:
    """One short sentence about tags longer than SD's chunk, naming the first one shortened."""
    from tagsmith.text.tokenizer import shorten

    tag, n = first
    others = len(texts) - 1
    who = f"'{shorten(tag)}' ({n} tokens)"
    if others:
        who += f" and {others} more tag{'s' if others > 1 else ''}"
    verb = "exceed" if others else "exceeds"
    limit = (f"the {room}-token chunk {family} reads" if room >= CHUNK_LENGTH
             else f"the {room} tokens the context leaves in {family}'s {CHUNK_LENGTH}-token chunk")
    return f"{who} {verb} {limit}; only the first {room} tokens count."


class TagEmbedder:
    """Vectors for tag texts from one resolved text encoder; see ``open_embedder``."""

    def __init__(
        self,
        settings: EncoderSettings,
        source: TextEncoderSource,
        fingerprint: str,
        *,
        preloaded: dict | None = None,
        cache_dir: Path | None = None,
        patches: dict[str, LoraPatch] | None = None, base_fingerprint: str | None = None,
    ) -> None:
        self.settings = settings
        self.source = source
        self.family = source.family
        self._model_fingerprint = fingerprint
        self._parts = source.encoders()
        self._selected = _selected_parts(settings, source)
        self._config: EncoderConfig = self._parts[self._selected[0]].config  # type: ignore[assignment]
        self._fingerprint = fingerprint
        self.base_fingerprint = base_fingerprint or fingerprint
        self._base_model_fingerprint = self.base_fingerprint  # before any encoder selection
        if source.parts is not None:
            from tagsmith.model.sdxl import selection_key

            self._fingerprint = selection_key(fingerprint, self._selected, settings.representation)
            self.base_fingerprint = selection_key(
                self.base_fingerprint, self._selected, settings.representation)
        self.lora = LoraState(patches or {})  # --lora deltas, merged when the weights load
        self._preloaded = preloaded  # tensors torch.load gave while inspecting a .ckpt
        self._encoder: Any = None  # encoder.ClipTextEncoder or encoder_np.NumpyTextEncoder
        self._expected_positions = 0
        self._cache_dir = cache_dir
        self._cache: EmbeddingCache | None = None
        self._notes: list[str] = list(source.notes) + self.lora.notes()
        # Tags longer than SD's chunk: counted over the embedder's life, told once (see notes).
        self._long: set[str] = set()
        self._long_first: tuple[str, int] = ("", 0)
        self._long_room = CHUNK_LENGTH
        prefix, suffix = split_context(settings.context)
        self._context_prefix = prefix
        self._context_suffix = suffix
        self._prefix_ids: list[int] | None = None
        self._suffix_ids: list[int] | None = None
        self.baseline_memo: dict = {}  # tagsmith.model.calibration keeps this one's baselines
        self._adapter_base: TagEmbedder | None = None

    # -- identity ---------------------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self._fingerprint

    @property
    def dim(self) -> int:
        if self.settings.representation == "pooled":
            return self._config.projection_dim
        return sum(self._parts[p].config.hidden_size for p in self._selected)  # type: ignore[union-attr]

    def label(self) -> str:
        """The model line's family: "SD1.5", "SDXL (CLIP-L + CLIP-G, concat)", "SDXL (CLIP-G)"."""
        if self.source.parts is None:
            return self.family
        parts = " + ".join(_PART_LABELS[p] for p in self._selected)
        if self.settings.representation == "pooled":
            parts += ", pooled"
        elif len(self._selected) > 1:
            parts += f", {self.settings.combine}"
        return f"{self.family} ({parts})"

    def similarity_parts(self) -> dict[str, slice]:
        """Where each encoder sits in a vector, when it holds more than one (SDXL): analysis
        reports each encoder's similarity from these."""
        if len(self._selected) < 2 or self.settings.representation == "pooled":
            return {}
        from tagsmith.model.sdxl import similarity_parts

        return similarity_parts(
            {p: self._parts[p].config.hidden_size for p in self._selected}  # type: ignore[union-attr]
        )

    @property
    def config(self) -> EncoderConfig:
        return self._config

    @property
    def loaded(self) -> bool:
        return self._encoder is not None

    @property
    def cache_dir(self) -> Path | None:
        """Where this embedder caches (None with --no-cache)."""
        return self._cache_dir if self.settings.use_cache else None

    def vector_identity(self) -> dict[str, Any]:
        """Everything that changes a vector: the model and the cache variant (what a
        baseline is keyed by, see tagsmith.model.calibration)."""
        return {"fingerprint": self.fingerprint, "variant": self._variant().label(),
                "combine": self.settings.combine if self.similarity_parts() else None}

    @property
    def notes(self) -> list[str]:
        """Things the user should know (repaired position_ids, truncated tags, cache repairs)."""
        notes = list(self._notes)
        if self._long:
            notes.append(long_tags_note(self._long, self._long_room, self._long_first,
                                        family=self.family))
        if self._cache is not None:
            notes += [n for n in self._cache.notes if n not in notes]
        return notes

    def model_info(self) -> dict:
        enc = self._encoder
        if enc is not None and hasattr(enc, "dtype_label"):  # the numpy encoder: no torch
            device, dtype = enc.device, enc.dtype_label
        elif enc is not None:
            from tagsmith.model.encoder import dtype_name

            device, dtype = str(enc.device), dtype_name(enc.dtype)
        else:
            device, dtype = self.settings.device, self.settings.precision
        return {
            "label": self.label(),
            "fingerprint": self.fingerprint,
            "model_fingerprint": self._model_fingerprint,
            "family": self.family,
            "encoders": [_PART_LABELS[p] for p in self._selected],
            "combine": self.settings.combine if self.similarity_parts() else None,
            "source": self.source.spec,
            "description": self.source.description,
            "clip_skip": self.settings.clip_skip,
            "representation": self.settings.representation,
            "context": self.settings.context,
            "dtype": dtype,
            "device": device,
            "dim": self.dim,
            "layers": self._config.num_layers,
            "loras": self.lora.describe(), "base_fingerprint": self.base_fingerprint,
        }

    def adapter_base(self) -> TagEmbedder | None:
        """With LoRAs that change the weights, the same model without them (one instance,
        sharing the source and the cache; its weights load only on a cache miss); else None."""
        if not self.lora.changing:
            return None
        if self._adapter_base is None:
            self._adapter_base = TagEmbedder(
                replace(self.settings, loras=()), self.source, self._base_model_fingerprint,
                preloaded=self._preloaded, cache_dir=self._cache_dir,
            )
        return self._adapter_base

    # -- encoding ---------------------------------------------------------------------------
    def encoder(self, positions: int | None = None, *, backend: str | None = None) -> Any:
        """The loaded text encoder, for a job of about ``positions`` token positions.

        Small jobs on the CPU in fp32 from safetensors weights, while torch is not imported
        yet, get the numpy forward pass (``encoder_np``: saves the ~1.5 s torch import);
        everything else gets the torch one, which also replaces a numpy encoder when a large
        job follows. ``backend`` ("numpy" or "torch") forces one.
        """
        from tagsmith.model import encoder_np

        current = self._encoder
        is_numpy = isinstance(current, encoder_np.NumpyTextEncoder)
        want = backend or self._backend_for(positions, current, is_numpy)
        if current is not None and (want == "numpy") == is_numpy:
            return current
        if want == "numpy" and not self._numpy_possible():
            raise UsageError("The numpy encoder needs fp32 safetensors weights on the CPU.")
        if self.source.parts is not None:
            from tagsmith.model.sdxl import load_sdxl_encoder

            self._encoder = load_sdxl_encoder(
                self.source, self._selected, backend=want, device=self.settings.device,
                dtype=self.settings.dtype, tensors=self._preloaded if want == "torch" else None,
                patches=self.lora.changing or None,
            )
            self._preloaded = None
        elif want == "numpy":
            self._encoder = encoder_np.load_numpy_encoder(self.source, patch=self.lora.l)
        else:
            from tagsmith.model.encoder import load_text_encoder

            self._encoder = load_text_encoder(
                self.source, device=self.settings.device, dtype=self.settings.dtype,
                tensors=merged_torch_tensors(self.lora.l, self.source, self._preloaded),
            )
            self._preloaded = None
        return self._encoder

    def expect_positions(self, positions: int) -> None:
        """Say a job of about ``positions`` token positions is coming in several ``embed``
        calls (``tagsmith score`` embeds in chunks), so the encoder chosen on the first cache
        miss suits the whole job, not one chunk. Loads nothing."""
        self._expected_positions = max(0, int(positions))

    def _job_positions(self, seqs: Sequence[Sequence[int]]) -> int:
        return max(sum(len(q) for q in seqs), self._expected_positions)

    def _numpy_possible(self) -> bool:
        from tagsmith.model import encoder_np

        s = self.settings
        on_cpu = s.device == "cpu" or (s.device == "auto" and not gpu_possible())
        parts = [self._parts[p] for p in self._selected]
        return (
            on_cpu and s.dtype in ("auto", "fp32") and self._preloaded is None
            and all(p.tensors is not None and encoder_np.supports(p.config) for p in parts)
        )

    def _backend_for(self, positions: int | None, current: Any, is_numpy: bool) -> str:
        """numpy for a small job while torch is not imported yet (or the numpy encoder is
        already loaded); torch for everything else, including a large job after small ones."""
        import sys

        from tagsmith.model.encoder_np import SMALL_JOB_POSITIONS

        small = positions is None or positions <= SMALL_JOB_POSITIONS
        if current is not None:
            return "numpy" if is_numpy and small else "torch"
        fits = positions is not None and small and "torch" not in sys.modules
        return "numpy" if fits and self._numpy_possible() else "torch"

    def _variant(self) -> CacheVariant:
        s = self.settings
        return CacheVariant(s.clip_skip, s.representation, s.context or "", s.precision)

    def _open_cache(self) -> EmbeddingCache | None:
        if self._cache is None and self._cache_dir is not None:
            self._cache = EmbeddingCache(self._cache_dir, self.fingerprint, self.dim)
        return self._cache

    def _context_ids(self) -> tuple[list[int], list[int]]:
        if self._prefix_ids is None or self._suffix_ids is None:
            from tagsmith.text.tokenizer import load_tokenizer

            tok = load_tokenizer()
            self._prefix_ids = tok.encode(self._context_prefix) if self._context_prefix else []
            self._suffix_ids = tok.encode(self._context_suffix) if self._context_suffix else []
            if len(self._prefix_ids) >= CHUNK_LENGTH:
                raise UsageError(
                    f"The context before {CONTEXT_SLOT} is {len(self._prefix_ids)} tokens, which "
                    f"leaves no room for the tag in {self.family}'s {CHUNK_LENGTH}-token chunk."
                )
        return self._prefix_ids, self._suffix_ids

    def _sequences(self, texts: Sequence[str], *, tokens_only: bool = False,
                   token_ids: Ids = None) -> list[list[int]]:
        """What each text contributes after BOS+context prefix, cut where SD's chunk ends."""
        prefix_ids, suffix_ids = self._context_ids()
        room = CHUNK_LENGTH - len(prefix_ids)
        seqs: list[list[int]] = []
        for text, ids in zip(texts, _token_ids(texts, token_ids)):
            if not ids:
                raise InputError(f"Cannot embed {text!r}: it has no tokens.")
            if len(ids) > room:
                self._note_long(text, len(ids), room)
            if self.settings.representation in ("eos", "pooled") and not tokens_only:
                # SD truncates the prompt at 75 tokens, then EOS
                seqs.append((list(ids) + suffix_ids)[:room] + [EOS_ID])
            else:
                # causal attention: nothing after the tag changes its states, so stop there
                seqs.append(list(ids)[:room])
        return seqs

    def _note_long(self, text: str, n_tokens: int, room: int) -> None:
        if not self._long:
            self._long_first = (text, n_tokens)
        self._long.add(text)
        self._long_room = room

    def _check_lengths(self, texts: Sequence[str], token_ids: Ids = None) -> None:
        room = CHUNK_LENGTH - len(self._context_ids()[0])
        for text, ids in zip(texts, _token_ids(texts, token_ids)):
            if len(ids) > room:
                self._note_long(text, len(ids), room)

    def cached(self, texts: Sequence[str], *, progress: ProgressFn | None = None,
               chunk: int = 8192) -> dict[str, np.ndarray]:
        """The vectors of ``texts`` already in the cache (never loads the model).

        A resumed run reads these first, as a phase of its own, so that the encoder's progress
        and rate then count only the tags it really encodes.
        """
        unique = list(dict.fromkeys(texts))
        cache = self._open_cache() if self.settings.use_cache else None
        found: dict[str, np.ndarray] = {}
        if cache is None:
            return found
        variant = self._variant()
        for start in range(0, len(unique), chunk):
            found.update(cache.get_many(variant, unique[start:start + chunk]))
            if progress is not None:
                progress(min(start + chunk, len(unique)), len(unique))
        if found and self._balanced():
            keys = list(found)
            found = dict(zip(keys, self._combined(np.stack([found[k] for k in keys]))))
        return found

    def _balanced(self) -> bool:
        return bool(self.similarity_parts()) and self.settings.combine == "balanced"

    def _combined(self, vectors: np.ndarray) -> np.ndarray:
        """Vectors as this embedder gives them: the cache stores them unscaled, and
        ``--combine balanced`` scales each SDXL encoder's part on the way out (``embed`` and
        ``cached`` alike)."""
        if not self._balanced():
            return vectors
        from tagsmith.model.sdxl import balance

        return balance(vectors, self.similarity_parts())

    def embed(self, texts: Sequence[str], *, progress: ProgressFn | None = None,
              token_ids: Ids = None) -> np.ndarray:
        """(len(texts), dim) float32 in input order. Cache hits never load the model.
        ``token_ids``: the texts' ids when the caller has them (score): not tokenized again."""
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        known = dict(zip(texts, token_ids)) if token_ids is not None else None
        pick = (lambda ts: None) if known is None else (lambda ts: [known[t] for t in ts])
        unique = list(dict.fromkeys(texts))
        variant = self._variant()
        cache = self._open_cache() if self.settings.use_cache else None
        found: dict[str, np.ndarray] = cache.get_many(variant, unique) if cache else {}
        done, total = len(found), len(unique)
        if found:
            self._check_lengths(list(found), pick(found))  # misses: checked when encoded
        if progress is not None:
            progress(done, total)
        missing = [t for t in unique if t not in found]
        if missing:
            seqs = self._sequences(missing, token_ids=pick(missing))
            enc = self.encoder(positions=self._job_positions(seqs))
            pool = {"eos": "last", "pooled": "pooled"}.get(self.settings.representation, "mean")
            prefix_ids, _ = self._context_ids()
            for idx, vectors in enc.encode(
                seqs, prefix=[BOS_ID, *prefix_ids], clip_skip=self.settings.clip_skip, pool=pool
            ):
                if not np.isfinite(vectors).all():  # never cached, never scored
                    raise ModelError(
                        f"{self.label()} gives NaN or infinite numbers for some tags: its text "
                        "encoder (or a --lora) holds NaN/inf weights, as a broken fp16 merge "
                        "can; use an intact copy of the file."
                    )
                batch = [(missing[i], vectors[row]) for row, i in enumerate(idx)]
                found.update(batch)
                if cache is not None:
                    cache.put_many(variant, batch)
                done += len(idx)
                if progress is not None:
                    progress(done, total)
        for row, text in enumerate(texts):
            out[row] = found[text]
        return self._combined(out)

    def token_states(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Per tag, its tokens' final states (n_tokens, dim): what cross-attention reads.

        Clip skip and context apply; not cached.
        """
        texts = list(texts)
        if not texts:
            return []
        seqs = self._sequences(texts, tokens_only=True)
        prefix_ids, _ = self._context_ids()
        out: list[np.ndarray | None] = [None] * len(texts)
        for idx, states in self.encoder(positions=self._job_positions(seqs)).encode(
            seqs, prefix=[BOS_ID, *prefix_ids], clip_skip=self.settings.clip_skip, pool="none"
        ):
            for row, i in enumerate(idx):
                out[i] = states[row]
        return [s for s in out if s is not None]

    def token_embedding_table(self) -> np.ndarray:
        """(49408, dim) input token embeddings (read without torch from safetensors): float32,
        or float16 where the file stores fp16 (widening is exact: callers widen the rows they
        read, so a table that is read whole is not held twice as large, 152 MB for SD1.5)."""
        if self._encoder is not None or self.lora.changes_table:
            table = (self._encoder or self.encoder()).token_embedding
            if isinstance(table, np.ndarray):
                return table.astype(np.float32, copy=False)
            return table.float().cpu().numpy()
        first = self._parts[self._selected[0]]
        if first.tensors is not None:
            table = read_tensor_array(first.tensors[TOKEN_EMBEDDING])
            return table if table.dtype == np.float16 else table.astype(np.float32, copy=False)
        if self._preloaded is not None:
            pre = self._preloaded[self._selected[0]] if self.source.parts else self._preloaded
            return pre[TOKEN_EMBEDDING].float().numpy().copy()
        return self.encoder().token_embedding.float().cpu().numpy()

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None
        self._encoder = None
        self._preloaded = None
        if self._adapter_base is not None:
            self._adapter_base.close()

    def __enter__(self) -> TagEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_PART_LABELS = {"l": "CLIP-L", "g": "CLIP-G"}


def _selected_parts(settings: EncoderSettings, source: TextEncoderSource) -> tuple[str, ...]:
    """Which encoders the vectors come from; UsageError when the model lacks the one asked."""
    if source.parts is None:
        if settings.encoder == "g" or settings.representation == "pooled":
            what = "--encoder g" if settings.encoder == "g" else "the pooled representation"
            raise UsageError(
                f"{what} needs an SDXL model (CLIP-G); '{source.spec}' is an SD1.5 model with "
                "CLIP-L only."
            )
        return ("l",)
    if settings.representation == "pooled":
        if settings.encoder == "l":
            raise UsageError("SDXL's pooled vector comes from CLIP-G; use --encoder g or auto.")
        return ("g",)
    return ("l", "g") if settings.encoder == "auto" else (settings.encoder,)


def open_embedder(settings: EncoderSettings) -> TagEmbedder:
    """Resolve the model now; load the weights lazily on the first cache miss.

    Raises ModelNotFoundError / UnsupportedModelError / UnsafeCheckpointError / UsageError with
    one sentence.
    """
    settings = settings.validated()
    spec = model_spec_from_settings(settings.model)
    source = resolve_source(spec)
    cache_dir = resolve_cache_dir(settings.cache_dir) if settings.use_cache else None
    memo = SourceMemo(cache_dir) if cache_dir is not None else None
    identity = memo_identity(source)
    remembered = memo.get(identity) if memo is not None else None
    preloaded = None
    if source.format == "pickle":
        # an SDXL .ckpt (rare) is inspected every time: its memo records no configs
        if remembered is not None and "config" in remembered:
            source = replace(
                source, config=EncoderConfig.from_dict(remembered["config"]),
                notes=tuple(remembered.get("notes", ())),
                stored_dtype=remembered.get("stored_dtype"),
                description=remembered.get("description", source.description),
            )
            fingerprint = str(remembered["fingerprint"])
        else:
            from tagsmith.model.encoder import inspect_pickle

            inspection = inspect_pickle(source)
            source, fingerprint, preloaded = (
                inspection.source, inspection.fingerprint, inspection.tensors,
            )
            if memo is not None and source.config is not None:
                memo.put(identity, {
                    "fingerprint": fingerprint, "config": source.config.to_dict(),
                    "notes": list(source.notes), "stored_dtype": source.stored_dtype,
                    "description": source.description,
                })
    else:
        if remembered is not None and "fingerprint" in remembered:
            fingerprint = str(remembered["fingerprint"])
        else:
            fingerprint = safetensors_fingerprint(source)
            if memo is not None:
                memo.put(identity, {"fingerprint": fingerprint})
    layers = min(p.config.num_layers for p in source.encoders().values())  # type: ignore[union-attr]
    if settings.clip_skip > layers:
        raise UsageError(
            f"Clip skip {settings.clip_skip} needs at least {settings.clip_skip} layers, but "
            f"this text encoder has {layers}."
        )
    p = patches_for_model(settings.loras, source, spec, preloaded, settings.clip_skip)
    return TagEmbedder(settings, source, LoraState(p).fingerprint(fingerprint), patches=p,
                       preloaded=preloaded, cache_dir=cache_dir, base_fingerprint=fingerprint)


def default_model() -> str:
    """The model tagsmith uses when none is given: $TAGSMITH_MODEL or SD1.5 on the hub."""
    return model_spec_from_settings(None)


__all__ = [
    "EncoderSettings",
    "TagEmbedder",
    "open_embedder",
    "open_model",
    "default_model",
    "split_context",
    "REPRESENTATIONS",
    "DEVICES",
    "DTYPES",
]


NO_MODEL_NOTICE = "Token analysis only; similarity needs a text encoder (SD1.5 or SDXL). {why}"


def open_model(
    settings: EncoderSettings, *, explicit: bool
) -> tuple[TagEmbedder | None, str | None]:
    """(embedder, None) or, when no model is reachable and none was asked for, (None, notice)."""
    try:
        return open_embedder(settings), None
    except ModelNotFoundError as exc:
        if explicit:
            raise
        return None, NO_MODEL_NOTICE.format(why=str(exc))
