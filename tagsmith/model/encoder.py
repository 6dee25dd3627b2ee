"""SD1.5's CLIP text encoder in plain torch: load weights, run the forward pass, clip skip.

This is the only module that imports torch. It does not import transformers: its CLIP text
model costs ~4 s to import here, more than a one-shot command spends encoding, so the forward
pass is written out below (checked against transformers' ``CLIPTextModel`` to 1e-5 in tests).

What SD computes, and what this computes:

- embeddings = token_embedding[ids] + position_embedding[0..L-1];
- each layer: x += out_proj(attn(ln1(x))) with causal attention; x += fc2(act(fc1(ln2(x))))
  with act = quick_gelu (x * sigmoid(1.702 x)) for SD1.5;
- clip skip N (A1111 numbering): take hidden_states[-N] (the output of layer L-N+1) and apply
  the final layer norm. N=1 is ``last_hidden_state``.

Speed comes from what causal attention allows without changing any number: a position only
sees positions before it, so (1) padding is never needed: SD's padding to 77 comes after the
tag and cannot change its states; (2) the states of BOS and of a context prefix ("1girl, solo, ")
are the same for every tag, so their keys/values are computed once and shared by the whole
run; (3) nothing after a tag (EOS, the rest of the prompt) changes the tag's own states, so the
tag representation does not run them at all; (4) tags that start alike ("hatsune miku",
"hatsune miku (cosplay)") share the states of their common start, so a batch is a prefix
tree and each distinct prefix runs once (a third fewer positions on the Danbooru tags).
"""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch  # noqa: TID253 - this module is where torch lives
import torch.nn.functional as F  # noqa: TID253

from tagsmith.errors import ModelError, UnsafeCheckpointError, UnsupportedModelError, UsageError
from tagsmith.model.config import (
    POSITION_EMBEDDING,
    POSITION_IDS,
    SD15_RULE,
    TEXT_PROJECTION,
    TOKEN_EMBEDDING,
    ConditioningRule,
    EncoderConfig,
    encoder_config_from_shapes,
)
from tagsmith.model.fingerprint import FingerprintHasher, fingerprint_names
from tagsmith.model.layouts import layout_description, locate_text_encoder, position_ids_note
from tagsmith.model.pickle_scan import unsafe_globals
from tagsmith.model.prefix_tree import PrefixTree, encode_trees
from tagsmith.model.safetensors_file import sniff_format
from tagsmith.model.sources import TextEncoderSource

EOS_ID = 49407
_TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_DTYPE_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.float64: "F64", torch.int64: "I64", torch.int32: "I32"}


# -- device and dtype -------------------------------------------------------------------------


def select_device(name: str = "auto") -> torch.device:
    """auto: CUDA when available, then Apple MPS, else CPU. An explicit GPU must exist."""
    key = (name or "auto").lower()
    cuda = torch.cuda.is_available()
    mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if key == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if key == "cpu":
        return torch.device("cpu")
    if key.startswith("cuda"):
        if not cuda:
            raise ModelError(
                f"--device {name} was asked for, but this torch ({torch.__version__}) sees no CUDA "
                "GPU; use --device cpu or --device auto."
            )
        return torch.device(key)
    if key == "mps":
        if not mps:
            raise ModelError(
                "--device mps was asked for, but Apple's MPS backend is not available here; use "
                "--device cpu or --device auto."
            )
        return torch.device("mps")
    raise UsageError(f"Unknown device '{name}'; use auto, cpu, cuda or mps.")


def select_dtype(name: str, device: torch.device) -> torch.dtype:
    """auto: fp16 on a GPU (as SD runs there), fp32 on CPU (where fp16 is slow and inexact)."""
    key = (name or "auto").lower()
    if key == "auto":
        return torch.float16 if device.type in ("cuda", "mps") else torch.float32
    if key not in _TORCH_DTYPES:
        raise UsageError(f"Unknown dtype '{name}'; use auto, fp32, fp16 or bf16.")
    return _TORCH_DTYPES[key]


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in _TORCH_DTYPES.items()}.get(dtype, str(dtype))


# -- reading weights ------------------------------------------------------------------------


def read_safetensors_tensors(
    source: TextEncoderSource, dtype: torch.dtype | None = None
) -> dict[str, torch.Tensor]:
    """The encoder's tensors only, by canonical name, from memory-mapped safetensors files.

    Only the encoder's byte ranges are touched, so a 2-7 GB checkpoint costs the encoder's
    memory (~250 MB fp16 / ~490 MB fp32), not the file's.
    """
    from safetensors import safe_open

    assert source.tensors is not None
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for name, ref in source.tensors.items():
        if name != POSITION_IDS:
            by_file.setdefault(ref.file, []).append((name, ref.key))
    out: dict[str, torch.Tensor] = {}
    for file, names in by_file.items():
        try:
            handle = _safe_open_pread(safe_open, file)
            with handle as fh:
                for name, key in names:
                    ref = source.tensors[name]
                    if ref.rows is not None:  # part of a fused tensor (OpenCLIP's in_proj)
                        t = fh.get_slice(key)[ref.rows[0]:ref.rows[1]]
                    else:
                        t = fh.get_tensor(key)
                    if ref.transposed:
                        t = t.t().contiguous()
                    out[name] = t if dtype is None or t.dtype == dtype else t.to(dtype)
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise UnsupportedModelError(
                f"'{file}' could not be read ({exc.__class__.__name__}: "
                f"{str(exc).splitlines()[0][:120] if str(exc) else ''}); the file may be damaged."
            ) from None
    return out


def _safe_open_pread(safe_open, file: Path):  # noqa: ANN001, ANN202
    # pread copies each tensor straight into its own buffer, so the file's pages are not also
    # mapped into this process (peak RSS = weights once). Older safetensors lack the option.
    try:
        return safe_open(str(file), framework="pt", device="cpu", backend="pread")
    except TypeError:
        return safe_open(str(file), framework="pt", device="cpu")


_GLOBAL_NAME = re.compile(r"GLOBAL ([\w.]+)")


def torch_load_checkpoint(path: Path) -> object:
    """``torch.load(weights_only=True)`` and nothing else: a pickle that needs arbitrary
    globals is refused (UnsafeCheckpointError), a damaged one named (UnsupportedModelError)."""
    fmt = sniff_format(path)
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it may not parse; the outcome is what counts
            warnings.simplefilter("ignore", UserWarning)
            if path.suffix.lower() == ".safetensors":  # torch would read it as safetensors
                with open(path, "rb") as fh:
                    return torch.load(fh, map_location="cpu", weights_only=True)
            mmap = fmt == "zip-pickle"
            return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        detail = f"{exc} {exc.__cause__ or ''} {exc.__context__ or ''}"
        found = _GLOBAL_NAME.search(detail)
        # torch names the global it refused; a pickle it could not even parse (another
        # protocol, not torch's format) is scanned, never executed, for what it would call
        name = found.group(1) if found else next(iter(unsafe_globals(path, fmt)), None)
        if name is not None or "global" in detail.lower():
            what = f" (it references {name})" if name else ""
            raise UnsafeCheckpointError(
                f"'{path}' can only be loaded by full unpickling{what}, which could run "
                "arbitrary code, so tagsmith refuses it; use a .safetensors version of this "
                "model or convert it with a tool you trust."
            ) from None
        raise UnsupportedModelError(
            f"'{path}' is damaged or not a PyTorch checkpoint (its pickle cannot be read)."
        ) from None
    except Exception as exc:  # noqa: BLE001 - garbage bytes make the weights-only unpickler
        # raise anything (IndexError, TypeError, ...): all of it means "damaged"
        first = str(exc).splitlines()[0][:100] if str(exc) else exc.__class__.__name__
        raise UnsupportedModelError(
            f"'{path}' is damaged or truncated and cannot be read as a PyTorch checkpoint "
            f"({first})."
        ) from None


def _flatten_tensors(obj: object, prefix: str = "", depth: int = 0) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if isinstance(obj, Mapping) and depth < 4:
        for k, v in obj.items():
            key = f"{prefix}{k}"
            if isinstance(v, torch.Tensor):
                out[key] = v
            elif isinstance(v, Mapping):
                out.update(_flatten_tensors(v, key + ".", depth + 1))
    return out


def _state_dict_of(obj: object) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model", "module"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and any(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                return _flatten_tensors(inner)
    return _flatten_tensors(obj)


@dataclass
class PickleInspection:
    source: TextEncoderSource  # with config, notes, description filled in
    fingerprint: str
    tensors: dict  # canonical name -> tensor (memory-mapped when possible); SDXL: per part


def inspect_pickle(source: TextEncoderSource) -> PickleInspection:
    """Open a .ckpt/.bin with torch.load(weights_only=True), find and check the encoder."""
    path = source.files[0]
    state = _state_dict_of(torch_load_checkpoint(path))
    if not state:
        raise UnsupportedModelError(f"'{path}' holds no tensors (no state_dict was found).")
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    from tagsmith.model import sdxl

    if sdxl.is_sdxl_single_file(shapes):
        return PickleInspection(*sdxl.pickle_parts(source, state, tensors_fingerprint))
    prefix = locate_text_encoder(shapes, str(path))
    canonical = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    config = encoder_config_from_shapes(
        {k: tuple(v.shape) for k, v in canonical.items()}, source.folder_config, str(path)
    )
    notes = list(source.notes)
    pos = canonical.get(POSITION_IDS)
    if pos is not None:
        wide = torch.float64 if pos.is_floating_point() else torch.int64  # not "stored as floats"
        note = position_ids_note(
            pos.detach().to(wide).numpy(), _DTYPE_CODES.get(pos.dtype, "?"), config.max_positions,
        )
        if note:
            notes.append(note)
    for key, t in canonical.items():
        if key != POSITION_IDS and t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise UnsupportedModelError(
                f"'{path}' stores the text encoder tensor {prefix}{key} as {t.dtype}; tagsmith "
                "reads fp32, fp16 or bf16 weights."
            )
    stored = dtype_name(canonical[TOKEN_EMBEDDING].dtype)
    fingerprint = tensors_fingerprint(config, canonical)
    desc = source.description if source.kind != "single-file" else layout_description(prefix)
    new_source = replace(
        source, config=config, notes=tuple(notes), stored_dtype=stored,
        description=f"{desc}, {stored} (pickle, loaded with weights_only=True)",
    )
    canonical.pop(POSITION_IDS, None)
    return PickleInspection(new_source, fingerprint, canonical)


def tensors_fingerprint(config: EncoderConfig, tensors: Mapping[str, torch.Tensor]) -> str:
    """Same hash as ``fingerprint.safetensors_fingerprint``, from tensors already in memory."""
    hasher = FingerprintHasher(config)
    for name in fingerprint_names(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.view(torch.uint8).numpy() if t.numel() else np.zeros(0, np.uint8)
        hasher.update(name, _DTYPE_CODES.get(t.dtype, str(t.dtype)), t.shape, memoryview(data))
    return hasher.hexdigest()


# -- the model ----------------------------------------------------------------------------------


@dataclass
class _Layer:
    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    qkv_w: torch.Tensor  # q, k, v projections fused: one GEMM instead of three
    qkv_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    fc1_w: torch.Tensor
    fc1_b: torch.Tensor
    fc2_w: torch.Tensor
    fc2_b: torch.Tensor


@dataclass
class PrefixState:
    """Keys and values of a shared prefix (BOS + context) for the first ``n_layers`` layers."""

    ids: tuple[int, ...]
    n_layers: int
    kv: list[tuple[torch.Tensor, torch.Tensor]]  # per layer, each (1, heads, P, head_dim)


class ClipTextEncoder:
    """A CLIP text transformer (SD1.5's is 12 layers x 768) as plain tensors, inference only."""

    def __init__(
        self,
        config: EncoderConfig,
        tensors: dict[str, torch.Tensor],
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        rule: ConditioningRule = SD15_RULE,
    ) -> None:
        self.config = config
        self.rule = rule
        self.device = torch.device(device)
        self.dtype = dtype

        def take(name: str) -> torch.Tensor:
            # pop: the loader's copy can be freed as soon as ours exists
            return tensors.pop(name).to(device=self.device, dtype=dtype).contiguous()

        self.token_embedding = take(TOKEN_EMBEDDING)
        self.position_embedding = take(POSITION_EMBEDDING)
        self.layers: list[_Layer] = []
        for i in range(config.num_layers):
            p = f"encoder.layers.{i}."
            qkv_w = torch.cat([take(f"{p}self_attn.{n}_proj.weight") for n in "qkv"])
            qkv_b = torch.cat([take(f"{p}self_attn.{n}_proj.bias") for n in "qkv"])
            self.layers.append(
                _Layer(
                    take(f"{p}layer_norm1.weight"), take(f"{p}layer_norm1.bias"), qkv_w, qkv_b,
                    take(f"{p}self_attn.out_proj.weight"), take(f"{p}self_attn.out_proj.bias"),
                    take(f"{p}layer_norm2.weight"), take(f"{p}layer_norm2.bias"),
                    take(f"{p}mlp.fc1.weight"), take(f"{p}mlp.fc1.bias"),
                    take(f"{p}mlp.fc2.weight"), take(f"{p}mlp.fc2.bias"),
                )
            )
        if config.hidden_act == "quick_gelu":
            # quick_gelu(h) = h * sigmoid(1.702 h) = silu(1.702 h) / 1.702: fold the two
            # constants into fc1 and fc2 so the activation is one fused in-place silu pass.
            # (Out of place: the caller's tensors, or a memory-mapped file, stay untouched.)
            for layer in self.layers:
                layer.fc1_w = layer.fc1_w * 1.702
                layer.fc1_b = layer.fc1_b * 1.702
                layer.fc2_w = layer.fc2_w / 1.702
        self.final_ln_w = take("final_layer_norm.weight")
        self.final_ln_b = take("final_layer_norm.bias")
        self.text_projection = take(TEXT_PROJECTION) if config.projection_dim else None
        self._prefixes: dict[tuple[tuple[int, ...], int], PrefixState] = {}
        self.positions_run = 0  # positions encode() has run (benchmarks read it)
        # Off the CPU: attention by depth buckets, pooling on the device, trees pipelined
        # (see _attention_plan, _pooled_on_device, encode). Tests switch them on on the CPU.
        on_gpu = self.device.type != "cpu"
        self.bucket_depths = on_gpu
        self.pool_on_device = on_gpu

    @property
    def dim(self) -> int:
        return self.config.hidden_size

    def layers_for(self, clip_skip: int) -> int:
        return self.rule.layers(self.config, clip_skip)

    def projection_t(self) -> np.ndarray:
        """(H, P) float32: the pooled output's projection, for x @ W^T."""
        assert self.text_projection is not None
        return self.text_projection.float().cpu().numpy().T

    # -- core ---------------------------------------------------------------------------------
    def _embed(self, ids: torch.Tensor, offset: int = 0) -> torch.Tensor:
        length = ids.shape[1]
        if offset + length > self.config.max_positions:
            raise UsageError(
                f"A sequence of {offset + length} positions does not fit the text encoder's "
                f"{self.config.max_positions}."
            )
        pos = self.position_embedding[offset:offset + length]
        return F.embedding(ids, self.token_embedding) + pos

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        if self.config.hidden_act == "quick_gelu":
            return F.silu(h, inplace=True)  # constants folded into fc1/fc2 (see __init__)
        return F.gelu(h)

    def _run(
        self,
        x: torch.Tensor,
        n_layers: int,
        *,
        collect_kv: list | None = None,
        collect_hidden: list | None = None,
    ) -> torch.Tensor:
        c = self.config
        b, length, width = x.shape
        heads = c.num_heads
        head_dim = width // heads
        eps = c.layer_norm_eps
        for i in range(n_layers):
            lw = self.layers[i]
            h = F.layer_norm(x, (width,), lw.ln1_w, lw.ln1_b, eps)
            qkv = F.linear(h, lw.qkv_w, lw.qkv_b).view(b, length, 3, heads, head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (b, heads, L, head_dim)
            if collect_kv is not None:
                collect_kv.append((k, v))
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            a = a.transpose(1, 2).reshape(b * length, width)
            # residual adds ride on the GEMMs (BLAS beta=1): x += a @ W^T, in place
            x2 = x.view(b * length, width)
            x2.add_(lw.out_b).addmm_(a, lw.out_w.t())
            h = F.layer_norm(x, (width,), lw.ln2_w, lw.ln2_b, eps)
            h = self._act(F.linear(h, lw.fc1_w, lw.fc1_b))
            x2.add_(lw.fc2_b).addmm_(h.view(b * length, -1), lw.fc2_w.t())
            if collect_hidden is not None:
                collect_hidden.append(x.clone())
        return x

    def final_norm(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(
            x, (self.config.hidden_size,), self.final_ln_w, self.final_ln_b,
            self.config.layer_norm_eps,
        )

    # -- public forward passes ----------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, clip_skip: int = 1) -> torch.Tensor:
        """(B, L, H) states SD's UNet sees for full sequences (BOS first), clip skip applied."""
        ids = ids.to(self.device)
        x = self._run(self._embed(ids), self.layers_for(clip_skip))
        return self.final_norm(x) if self.rule.final_norm else x

    @torch.inference_mode()
    def hidden_states(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """Like transformers' ``output_hidden_states``: embeddings, then each layer's output."""
        ids = ids.to(self.device)
        x = self._embed(ids)
        out = [x.clone()]  # _run updates x in place
        self._run(x, self.config.num_layers, collect_hidden=out)
        return out

    @torch.inference_mode()
    def prefix_state(
        self, prefix_ids: Sequence[int], clip_skip: int, *, n_layers: int | None = None
    ) -> PrefixState:
        """Keys/values of the shared prefix (must start with BOS), computed once and kept.
        ``n_layers`` overrides the clip-skip rule (SDXL's pooled output runs every layer)."""
        if n_layers is None:
            n_layers = self.layers_for(clip_skip)
        key = (tuple(prefix_ids), n_layers)
        state = self._prefixes.get(key)
        if state is None:
            ids = torch.tensor([list(prefix_ids)], dtype=torch.long, device=self.device)
            kv: list = []
            self._run(self._embed(ids), n_layers, collect_kv=kv)
            state = PrefixState(tuple(prefix_ids), n_layers, [(k, v) for k, v in kv])
            self._prefixes[key] = state
        return state

    # -- batched encoding ------------------------------------------------------------------------
    def default_token_budget(self) -> int:
        """Positions per batch. On CPU about 2,048 per thread: enough rows for every thread's
        GEMM tiles, few enough that activations stay in cache (2-core EPYC, 2 threads: 4,096
        positions ran at ~88% of the matmul rate, 1,024 at ~30%, 8,192 at ~75%). A GPU wants
        large batches."""
        if self.device.type == "cpu":
            return min(16384, 2048 * max(1, torch.get_num_threads()))
        return 32768

    @torch.inference_mode()
    def tree_states(
        self, tree: PrefixTree, prefix: PrefixState, *, final_norm: bool | None = None
    ) -> np.ndarray:
        """(N, H) float32 states of every node of ``tree`` after ``prefix``, as the family's
        rule gives them (``final_norm`` overrides whether the final layer norm is applied)."""
        return self._run_tree(tree, prefix, final_norm).float().cpu().numpy()

    def _attention_plan(self, tree: PrefixTree, p: int) -> list[tuple]:
        """Per attention call: (start, stop, span, context indices, mask or None). The CPU runs
        one call per depth (fastest there); a GPU, where that is 1-2k launches per tree, one
        masked call per power-of-two depth bucket (``PrefixTree.bucketed_contexts``): masked
        keys weigh exactly 0, so the numbers are the same (tested against CLIPTextModel)."""
        dev = self.device
        if not self.bucket_depths:
            return [(start, stop, ctx.shape[1], _to_device(ctx.reshape(-1), dev), None)
                    for start, stop, ctx in tree.contexts(p)]
        return [(start, stop, idx.shape[1], _to_device(idx.reshape(-1), dev),
                 None if mask is None else _to_device(mask[:, None, None, :], dev))
                for start, stop, idx, mask in tree.bucketed_contexts(p)]

    def _run_tree(
        self, tree: PrefixTree, prefix: PrefixState, final_norm: bool | None = None
    ) -> torch.Tensor:
        """Final-normed states (N, H) of every node of ``tree``, placed after ``prefix``.

        Layer by layer over all nodes at once (big GEMMs); attention by depth (or depth
        bucket, see ``_attention_plan``), where every node sees the prefix, its ancestors and
        itself: exactly its causal context in SD.
        """
        c = self.config
        width, heads = c.hidden_size, c.num_heads
        head_dim = width // heads
        eps = c.layer_norm_eps
        p = len(prefix.ids)
        dev = self.device
        tokens = _to_device(tree.tokens, dev)
        positions = _to_device(tree.depths + (p - 1), dev)
        x = F.embedding(tokens, self.token_embedding) + self.position_embedding[positions]
        n = x.shape[0]
        # A layer's keys and values sit in (p + N, heads, head_dim) tables, prefix first, so a
        # context is one index_select of whole rows (node-major copies measured fastest here).
        plan = self._attention_plan(tree, p)
        a = torch.empty(n, heads, head_dim, dtype=x.dtype, device=dev)
        keys = torch.empty(p + n, heads, head_dim, dtype=x.dtype, device=dev)
        values = torch.empty_like(keys)
        for i in range(prefix.n_layers):
            lw = self.layers[i]
            h = F.layer_norm(x, (width,), lw.ln1_w, lw.ln1_b, eps)
            q, k, v = F.linear(h, lw.qkv_w, lw.qkv_b).view(n, 3, heads, head_dim).unbind(1)
            if p:
                keys[:p] = prefix.kv[i][0][0].transpose(0, 1)
                values[:p] = prefix.kv[i][1][0].transpose(0, 1)
            keys[p:] = k
            values[p:] = v
            for start, stop, span, ctx, mask in plan:
                rows = stop - start
                kk = keys.index_select(0, ctx).view(rows, span, heads, head_dim)
                vv = values.index_select(0, ctx).view(rows, span, heads, head_dim)
                a[start:stop] = F.scaled_dot_product_attention(
                    q[start:stop].unsqueeze(2), kk.transpose(1, 2), vv.transpose(1, 2),
                    attn_mask=mask,
                ).squeeze(2)
            # residual adds ride on the GEMMs (BLAS beta=1): x += a @ W^T, in place
            x.add_(lw.out_b).addmm_(a.view(n, width), lw.out_w.t())
            h = F.layer_norm(x, (width,), lw.ln2_w, lw.ln2_b, eps)
            h = self._act(F.linear(h, lw.fc1_w, lw.fc1_b))
            x.add_(lw.fc2_b).addmm_(h, lw.fc2_w.t())
        self.positions_run += n
        normed = self.rule.final_norm if final_norm is None else final_norm
        return self.final_norm(x) if normed else x

    def _pooled_on_device(self, tree: PrefixTree, states: torch.Tensor, pool: str):  # noqa: ANN202
        """``pool_tree`` on the device (mean: a gather and an fp32 index_add): only (n_seq, H)
        crosses to the host, in the encoder's dtype, still on its way (``_host`` ends it)."""
        dev = states.device
        if pool == "last":
            out = states.index_select(0, _to_device(tree.leaves, dev))
        else:
            owner, nodes = tree.path_sums()
            sums = torch.zeros(len(tree.order), states.shape[1], dtype=torch.float32, device=dev)
            sums.index_add_(0, _to_device(owner, dev),
                            states.index_select(0, _to_device(nodes, dev)).float())
            lengths = _to_device(tree.lengths.astype(np.float32), dev)
            out = (sums / lengths[:, None]).to(states.dtype)
        return _start_copy_to_host(out)

    @torch.inference_mode()
    def encode(
        self,
        sequences: Sequence[Sequence[int]],
        *,
        prefix: Sequence[int],
        clip_skip: int = 1,
        pool: str = "mean",
        token_budget: int | None = None,
    ) -> Iterator[tuple[list[int], np.ndarray | list[np.ndarray]]]:
        """Encode ``sequences`` placed after ``prefix``; yield (indices, results) per batch.

        pool: "mean" (mean over each sequence's positions), "last" (its last position, e.g.
        EOS) or "none" (each sequence's (len, H) states). Results are float32; callers
        reassemble by index.

        Sequences that start alike share the start's states (causal attention: a position
        depends only on what precedes it), so each batch is a prefix tree and every distinct
        prefix runs once: on the Danbooru tags that is 511k positions instead of 775k.
        """
        state = self.prefix_state(prefix, clip_skip)
        budget = token_budget or self.default_token_budget()
        if not self.pool_on_device or pool not in ("mean", "last"):
            yield from encode_trees(
                sequences, lambda tree: self.tree_states(tree, state),
                budget=budget, pool=pool, prefix_length=len(state.ids),
                max_positions=self.config.max_positions,
            )
            return
        # The GPU runs tree k while the host builds tree k+1 and the caller stores k-1's
        # vectors: launches queue, copies are asynchronous (pinned), and we wait only here.
        pending = None
        for tree in encode_trees(sequences, None, budget=budget, pool=pool,
                                 prefix_length=len(state.ids),
                                 max_positions=self.config.max_positions):
            launched = (tree.order, self._pooled_on_device(tree, self._run_tree(tree, state),
                                                           pool))
            if pending is not None:
                yield pending[0], _host(pending[1])
            pending = launched
        if pending is not None:
            yield pending[0], _host(pending[1])


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(array))  # via pinned memory, async, on CUDA
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def _start_copy_to_host(t: torch.Tensor) -> tuple[torch.Tensor, object]:
    if t.device.type != "cuda":  # (host tensor, event to wait on)
        return t.cpu(), None
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    return host, event


def _host(started: tuple[torch.Tensor, object]) -> np.ndarray:
    host, event = started  # a copy _start_copy_to_host began: wait for it to land
    if event is not None:
        event.synchronize()
    return host.float().numpy()


def load_text_encoder(
    source: TextEncoderSource,
    *,
    device: str = "auto",
    dtype: str = "auto",
    tensors: dict[str, torch.Tensor] | None = None,
    rule: ConditioningRule = SD15_RULE,
) -> ClipTextEncoder:
    """Build the encoder from a resolved source (``tensors``: already-loaded pickle weights,
    canonical names; a LoRA merge can change them before this call)."""
    dev = select_device(device)
    dt = select_dtype(dtype, dev)
    if tensors is None:
        if source.format == "pickle":
            inspection = inspect_pickle(source)
            source, tensors = inspection.source, inspection.tensors
        else:
            tensors = read_safetensors_tensors(source, dt if dev.type == "cpu" else None)
    assert source.config is not None
    tensors = dict(tensors)
    tensors.pop(POSITION_IDS, None)
    return ClipTextEncoder(source.config, tensors, device=dev, dtype=dt, rule=rule)
