"""`tagsmith lora`: what a LoRA file says about its training, what it moved, and how LoRAs collide.

``lora_info`` reads the safetensors header alone (no tensor): kohya's ``ss_*`` training
metadata, ``modelspec.*``, whether the text encoder was trained, the training tags ranked by
caption frequency with their token splits, and the likely triggers with why. ``measure_moved``
embeds the LoRA's caption tags plus a vocabulary's most frequent tags in the base model (its
cached vectors) and in base + LoRA and reports what moved. ``collisions`` compares several LoRAs.

"Moved" is ``1 - cos`` between a tag's base and LoRA vectors after removing the base model's
mean vector of the measured tags: every state shares a large common component (the "rogue
dimensions") that would make all raw cosines sit near 1.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tagsmith.model.lora import LoraFile, LoraSpec, read_lora, without_loras
from tagsmith.text.tokenizer import load_tokenizer, piece_text

TRIGGER_SHARE = 0.8  # "in nearly every caption"
RARE_POSTS = 1000  # fewer posts than this in the vocabulary counts as rare
DEFAULT_VOCAB_TOP = 20_000
Progress = Callable[[str], None]


def _no_progress(_: str) -> None:
    return None


@dataclass
class TrainingTag:
    tag: str
    count: int
    share: float | None  # of the captions in the folders it appears in
    tokens: list[str]
    vocab_count: int | None  # posts in the vocabulary; None when not in it (or no vocabulary)
    in_vocab: bool | None  # None without a vocabulary

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


@dataclass
class Trigger:
    tag: str
    why: str

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


@dataclass
class MovedTag:
    tag: str
    moved: float  # 1 - centred cosine between base and base + LoRA
    caption: bool  # one of the LoRA's own training tags

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


@dataclass
class TriggerMove:
    tag: str
    moved: float
    neighbours: list[tuple[str, float, float]]  # untouched tag, similarity now, in the base

    def to_dict(self) -> dict[str, Any]:
        return {"tag": self.tag, "moved": self.moved, "neighbours": [
            {"tag": t, "similarity": s, "base_similarity": b} for t, s, b in self.neighbours]}


@dataclass
class MovedReport:
    model: dict[str, Any]
    measured: int
    median_moved: float
    top: list[MovedTag]
    triggers: list[TriggerMove]
    vectors: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # trigger -> centred
    by_tag: dict[str, float] = field(default_factory=dict, repr=False)  # every measured tag
    moved_set: set[str] = field(default_factory=set, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "measured": self.measured,
                "median_moved": self.median_moved, "top": [m.to_dict() for m in self.top],
                "triggers": [t.to_dict() for t in self.triggers]}


@dataclass
class LoraReport:
    path: Path
    family: str
    family_why: str
    te_trained: bool
    summary: str
    unknown_keys: int
    unet_keys: int
    network: dict[str, Any]
    training: dict[str, Any]  # clip_skip, base_model_version, keep_tokens, shuffle_caption, ...
    folders: dict[str, dict[str, Any]]  # kohya dataset dirs: repeats, images
    tags: list[TrainingTag]
    triggers: list[Trigger]
    notes: list[str] = field(default_factory=list)
    moved: MovedReport | None = None

    @property
    def name(self) -> str:
        return self.path.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": str(self.path), "family": self.family, "family_why": self.family_why,
            "text_encoder_trained": self.te_trained, "summary": self.summary,
            "unknown_keys": self.unknown_keys, "unet_keys": self.unet_keys,
            "network": self.network, "training": self.training, "folders": self.folders,
            "tags": [t.to_dict() for t in self.tags],
            "triggers": [t.to_dict() for t in self.triggers], "notes": list(self.notes),
            "moved": self.moved.to_dict() if self.moved else None,
        }


def _json(meta: Mapping[str, str], key: str) -> Any:
    raw = meta.get(key)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _scalar(value: Any) -> Any:
    """kohya writes every value as a string: 'None' -> None, '2' -> 2, 'True' -> True."""
    if value is None or value == "None" or value == "":
        return None
    if value in ("True", "False"):
        return value == "True"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() and "." not in str(value) else number


def folder_words(folder: str) -> str:
    """kohya's '10_mayo bottle' folder -> 'mayo bottle' (the repeat count dropped)."""
    return re.sub(r"^\d+_", "", folder).strip().lower()


def _tag_frequency(meta: Mapping[str, str]) -> dict[str, dict[str, int]]:
    freq = _json(meta, "ss_tag_frequency")
    if not isinstance(freq, dict):
        freq = {}
        for ds in _json(meta, "ss_datasets") or []:  # user-config mode
            if isinstance(ds, dict) and isinstance(ds.get("tag_frequency"), dict):
                freq.update(ds["tag_frequency"])
    out: dict[str, dict[str, int]] = {}
    for folder, tags in freq.items():
        if not isinstance(tags, dict):
            continue
        clean: dict[str, int] = {}
        for tag, count in tags.items():
            t = str(tag).strip().lower()  # old kohya versions kept the space after a comma
            if t:
                clean[t] = clean.get(t, 0) + int(count)
        out[str(folder)] = clean
    return out


def _folders(meta: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    dirs = _json(meta, "ss_dataset_dirs")
    out: dict[str, dict[str, Any]] = {}
    if isinstance(dirs, dict):
        for name, info in dirs.items():
            if isinstance(info, dict):
                out[str(name)] = {"repeats": info.get("n_repeats"), "images": info.get("img_count")}
    for ds in _json(meta, "ss_datasets") or []:
        for sub in (ds.get("subsets") or []) if isinstance(ds, dict) else []:
            if isinstance(sub, dict) and not sub.get("is_reg"):
                name = Path(str(sub.get("image_dir") or "subset")).name
                out.setdefault(name, {"repeats": sub.get("num_repeats"),
                                      "images": sub.get("img_count")})
    return out


def _training(meta: Mapping[str, str]) -> dict[str, Any]:
    keep = _scalar(meta.get("ss_keep_tokens"))
    shuffle = _scalar(meta.get("ss_shuffle_caption"))
    for ds in _json(meta, "ss_datasets") or []:  # user-config mode keeps them per subset
        for sub in (ds.get("subsets") or []) if isinstance(ds, dict) else []:
            if isinstance(sub, dict):
                keep = keep if keep is not None else sub.get("keep_tokens")
                shuffle = shuffle if shuffle is not None else sub.get("shuffle_caption")
    return {
        "base_model_version": _scalar(meta.get("ss_base_model_version")),
        "clip_skip": _scalar(meta.get("ss_clip_skip")),
        "keep_tokens": keep,
        "shuffle_caption": shuffle,
        "trigger_phrase": meta.get("modelspec.trigger_phrase") or None,
        "title": meta.get("modelspec.title") or meta.get("ss_output_name") or None,
        "architecture": meta.get("modelspec.architecture") or None,
        "base_model": meta.get("ss_sd_model_name") or None,
        "train_images": _scalar(meta.get("ss_num_train_images")),
        "text_encoder_lr": _scalar(meta.get("ss_text_encoder_lr")),
        "steps": _scalar(meta.get("ss_steps")),
        "epochs": _scalar(meta.get("ss_epoch")),
    }


def lora_info(path: Path | str, *, vocab_counts: Mapping[str, int | None] | None = None,
              lora: LoraFile | None = None) -> LoraReport:
    """Everything the file's header says, with the training tags ranked and triggers guessed.

    ``vocab_counts`` maps analysed tag texts ("mayonnaise bottle") to their post counts; with it
    a trigger is a tag in nearly every caption that is rare or missing in the vocabulary.
    """
    f = lora or read_lora(path)
    meta = f.metadata
    freq = _tag_frequency(meta)
    folders = _folders(meta)
    tok = load_tokenizer()
    totals: dict[str, int] = {}
    captions: dict[str, int] = {}  # tag -> captions in the folders it appears in
    for folder, tags in freq.items():
        n = (folders.get(folder) or {}).get("images") or max(tags.values(), default=0)
        for tag, count in tags.items():
            totals[tag] = totals.get(tag, 0) + count
            captions[tag] = captions.get(tag, 0) + int(n)
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))
    analysed = tok.analyze_batch([t for t, _ in ranked]) if ranked else []
    tags = []
    for (tag, count), tt in zip(ranked, analysed):
        share = min(1.0, count / captions[tag]) if captions.get(tag) else None
        in_vocab = vocab_counts_has(vocab_counts, tt.text)
        tags.append(TrainingTag(
            tag=tag, count=count, share=share, tokens=[piece_text(p) for p in tt.tokens],
            vocab_count=(vocab_counts or {}).get(tt.text) if in_vocab else None,
            in_vocab=in_vocab,
        ))
    network = {
        "module": meta.get("ss_network_module") or None,
        "dim": _scalar(meta.get("ss_network_dim")),
        "alpha": _scalar(meta.get("ss_network_alpha")),
        "args": _json(meta, "ss_network_args"),
        "algorithms": f.algos(),
        "ranks": f.ranks(),
    }
    report = LoraReport(
        path=f.path, family=f.family, family_why=f.family_why, te_trained=f.te_trained,
        summary=f.summary(), unknown_keys=len(f.unknown), unet_keys=f.unet_keys,
        network=network, training=_training(meta), folders=folders, tags=tags,
        triggers=guess_triggers(tags, meta, folders, vocab_counts is not None),
    )
    if not f.te_trained:
        report.notes.append(
            "The text encoder was not trained (no lora_te/text_encoder keys): the trigger acts "
            "only through the UNet, which tagsmith does not measure."
        )
    if not freq:
        report.notes.append(
            "The file carries no ss_tag_frequency (trained with --no_metadata, or not by "
            "kohya's scripts), so there are no training tags to rank."
        )
    return report


def vocab_counts_has(counts: Mapping[str, int | None] | None, text: str) -> bool | None:
    return None if counts is None else text in counts


def guess_triggers(tags: Sequence[TrainingTag], meta: Mapping[str, str],
                   folders: Mapping[str, Any], have_vocab: bool) -> list[Trigger]:
    """Tags in nearly every caption that the vocabulary does not know (or barely), with why."""
    out: list[Trigger] = []
    phrase = (meta.get("modelspec.trigger_phrase") or "").strip()
    for part in [p.strip() for p in phrase.split(",") if p.strip()]:
        out.append(Trigger(part.lower(), "the file names it (modelspec.trigger_phrase)"))
    folder_names = {folder_words(f) for f in folders}
    for t in tags:
        if t.share is None or t.share < TRIGGER_SHARE or any(o.tag == t.tag for o in out):
            continue
        pct = f"in {t.share:.0%} of its folder's captions"
        split = f"{len(t.tokens)} token{'s' if len(t.tokens) != 1 else ''} ({' | '.join(t.tokens)})"
        if have_vocab and t.in_vocab and (t.vocab_count or 0) >= RARE_POSTS:
            continue  # a common tag the whole dataset shares, e.g. 1girl: not a trigger
        if not have_vocab:
            why = f"{pct}; {split}; rarity not checked (no --vocab)"
        elif not t.in_vocab:
            why = f"{pct} and not in the vocabulary; {split}"
        else:
            why = f"{pct} and rare in the vocabulary ({t.vocab_count:,} posts); {split}"
        if t.tag in folder_names:
            why += "; also the training folder's name"
        out.append(Trigger(t.tag, why))
    return out


def _centred_cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return np.sum(a * b, axis=-1) / np.maximum(na * nb, 1e-12)


def measure_moved(
    report: LoraReport,
    settings: Any,
    spec: LoraSpec,
    vocab_texts: Sequence[str] = (),
    *,
    top: int = 15,
    neighbours: int = 5,
    progress: Progress = _no_progress,
    open_embedder: Callable[[Any], Any] | None = None,
) -> MovedReport:
    """Embed the caption tags and ``vocab_texts`` in the base model and in base + this LoRA.

    ``settings`` is the base model's EncoderSettings; the base vectors come from (and go to)
    the cache, so a second LoRA over the same vocabulary costs one embedding pass.
    """
    from dataclasses import replace

    if open_embedder is None:
        from tagsmith.model.embedding import open_embedder
    caption = [t.tag for t in report.tags]
    texts = list(dict.fromkeys([*caption, *[t.tag for t in report.triggers], *vocab_texts]))
    caption_set = set(caption) | {t.tag for t in report.triggers}
    progress(f"base vectors of {len(texts):,} tags")
    with open_embedder(without_loras(settings)) as base_emb:
        base = base_emb.embed(texts)
    progress(f"vectors of {len(texts):,} tags with {spec.path.name}")
    with open_embedder(replace(settings, loras=(spec,))) as lora_emb:
        moved_vecs = lora_emb.embed(texts)
        model = lora_emb.model_info()
    mean = base.mean(axis=0, keepdims=True)
    b, m = base - mean, moved_vecs - mean
    moved = 1.0 - _centred_cos(b, m)
    order = np.argsort(-moved, kind="stable")
    top_tags = [MovedTag(texts[i], float(moved[i]), texts[i] in caption_set) for i in order[:top]]
    median = float(np.median(moved)) if len(moved) else 0.0
    untouched = np.nonzero(moved <= median)[0]
    index = {t: i for i, t in enumerate(texts)}
    trig_moves = []
    vectors = {}
    mn = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    for trig in report.triggers:
        i = index.get(trig.tag)
        if i is None:
            continue
        vectors[trig.tag] = mn[i]
        pool = untouched[untouched != i]
        sims = mn[pool] @ mn[i]
        best = pool[np.argsort(-sims, kind="stable")[:neighbours]]
        trig_moves.append(TriggerMove(trig.tag, float(moved[i]), [
            (texts[j], float(mn[j] @ mn[i]), float(bn[j] @ bn[i])) for j in best]))
    k = max(1, min(50, len(texts) // 20))
    return MovedReport(model=model, measured=len(texts), median_moved=median, top=top_tags,
                       triggers=trig_moves, vectors=vectors,
                       by_tag={t: float(v) for t, v in zip(texts, moved)},
                       moved_set={texts[i] for i in order[:k]})


@dataclass
class Collision:
    a: str
    b: str
    shared_tokens: list[str]
    shared_training_tags: list[str]
    moved_overlap: float | None  # Jaccard of the two LoRAs' most-moved tags
    trigger_similarity: float | None  # highest centred cosine between their triggers

    def to_dict(self) -> dict[str, Any]:
        return vars(self).copy()


def collisions(reports: Sequence[LoraReport]) -> list[Collision]:
    """Every pair of LoRAs: shared trigger tokens, shared training tags, overlapping moved
    tags and how close their triggers sit (the last two need ``measure_moved``)."""
    tok = load_tokenizer()
    out = []
    for x in range(len(reports)):
        for y in range(x + 1, len(reports)):
            a, b = reports[x], reports[y]

            def pieces(r: LoraReport) -> set[str]:
                got = set()
                for t in r.triggers:
                    for w in tok.analyze(t.tag).words:
                        if not w.is_punctuation:
                            got.update(piece_text(p) for p in w.pieces)
                return got

            shared = sorted(pieces(a) & pieces(b))
            common = sorted({t.tag for t in a.tags} & {t.tag for t in b.tags})
            overlap = sim = None
            if a.moved and b.moved:
                union = a.moved.moved_set | b.moved.moved_set
                overlap = len(a.moved.moved_set & b.moved.moved_set) / len(union) if union else 0.0
                pairs = [float(va @ vb) for va in a.moved.vectors.values()
                         for vb in b.moved.vectors.values()]
                sim = max(pairs) if pairs else None
            out.append(Collision(a.name, b.name, shared, common[:20], overlap, sim))
    return out


def trigger_matrix(reports: Sequence[LoraReport]) -> tuple[list[str], np.ndarray]:
    """Labels 'file: trigger' and the centred cosines between every pair of measured triggers."""
    labels, vecs = [], []
    for r in reports:
        for tag, v in (r.moved.vectors.items() if r.moved else []):
            labels.append(f"{r.name}: {tag}")
            vecs.append(v)
    if not vecs:
        return [], np.zeros((0, 0), dtype=np.float32)
    mat = np.stack(vecs)
    return labels, (mat @ mat.T).astype(np.float32)
