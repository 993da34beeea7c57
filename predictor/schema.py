"""THE shard sample format: the contract between `data_gen` (writer) and training (reader).

One sample is one (image or video, instruction) pair run through one MLLM. In a WebDataset shard
it is a group of files sharing a `__key__`:

    <key>.attn.npy        (N_v,) float32   probe-layer attention of the instruction tokens over the
                                           visual tokens, mean over heads and instruction tokens
                                           (meta.probe_layer, absent: 0; the adapter's `probe_layer`)
    <key>.attn_heads.npy  (H, N_v) float16 the same per head (optional)
    <key>.rel.npy         (N_v,) float32   oracle relevance R_v, finite, >= 0
    <key>.meta.json       metadata, see REQUIRED_META
    <key>.thumb.png       small thumbnail of the image, for figures (optional)

Arrays are stored as `.npy` without pickle. Both sides go through `encode`/`decode` here, and
`decode` validates, so a reader never trains on a malformed sample silently.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

SCHEMA_VERSION = 1
SUPPORTED_VERSIONS = (1,)

REGENERATE_HINT = "regenerate the shards with: python -m data_gen out=<dir> (see docs/data_gen.md)"

# key in meta -> python type(s) accepted
REQUIRED_META: dict[str, tuple[type, ...]] = {
    "schema_version": (int,),
    "model_id": (str,),
    "adapter": (str,),
    "explainer": (str,),
    "modality": (str,),  # "image" | "video"
    "grid": (list, tuple),  # [t, h, w] after spatial merging, t*h*w == N_v
    "instruction": (str,),
    "reference_answer": (str,),
    "generated_answer": (str,),
    "correct": (bool,),
    "answer_tokens": (int,),
}
MODALITIES = ("image", "video")
# optional meta -> its meaning when absent (shards written before the field existed)
META_DEFAULTS: dict[str, Any] = {"probe_layer": 0}


def meta_value(meta: dict[str, Any], name: str) -> Any:
    """meta[name], or what its absence means (`META_DEFAULTS`)."""
    return meta.get(name, META_DEFAULTS.get(name))

# file extensions inside a shard
EXT_ATTN, EXT_HEADS, EXT_REL, EXT_META, EXT_THUMB = "attn.npy", "attn_heads.npy", "rel.npy", "meta.json", "thumb.png"


class SampleError(ValueError):
    """A shard sample that breaks the contract. The message names key, field, expected, found."""

    def __init__(self, key: str, field_name: str, expected: str, found: str):
        self.key, self.field, self.expected, self.found = key, field_name, expected, found
        super().__init__(
            f"sample {key!r}: field {field_name!r}: expected {expected}, found {found}; {REGENERATE_HINT}"
        )


@dataclass
class Sample:
    """One training pair. Tensors are CPU float32 except `attn_heads` (kept as stored)."""

    key: str
    attn: torch.Tensor  # (N_v,) float32
    relevance: torch.Tensor  # (N_v,) float32, >= 0
    meta: dict[str, Any]
    attn_heads: torch.Tensor | None = None  # (H, N_v)
    thumbnail: bytes | None = None  # PNG bytes
    extra_files: dict[str, bytes] = field(default_factory=dict)  # other files of the sample ("gt_rel.npy"), passed through

    @property
    def num_visual(self) -> int:
        return int(self.attn.shape[-1])

    @property
    def grid(self) -> tuple[int, int, int]:
        t, h, w = self.meta["grid"]
        return int(t), int(h), int(w)


def make_meta(**fields: Any) -> dict[str, Any]:
    """Metadata with the current schema version; validates presence of the required keys."""
    meta = {"schema_version": SCHEMA_VERSION, **fields}
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise KeyError(f"make_meta: missing required metadata {missing}; required: {list(REQUIRED_META)}")
    meta["grid"] = [int(v) for v in meta["grid"]]
    return meta


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor shape {tuple(x.shape)} dtype {x.dtype}"
    if isinstance(x, np.ndarray):
        return f"array shape {x.shape} dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"[:200]


def validate(sample: Sample) -> Sample:
    """Raise `SampleError` naming the first broken field; return the sample unchanged if valid."""
    key = sample.key
    if not isinstance(key, str) or not key:
        raise SampleError(str(key), "__key__", "a non-empty string", _describe(key))
    meta = sample.meta
    if not isinstance(meta, dict):
        raise SampleError(key, EXT_META, "a JSON object", _describe(meta))
    version = meta.get("schema_version")
    if version not in SUPPORTED_VERSIONS:
        raise SampleError(key, "meta.schema_version", f"one of {SUPPORTED_VERSIONS}", repr(version))
    for name, types in REQUIRED_META.items():
        if name not in meta:
            raise SampleError(key, f"meta.{name}", f"present ({'/'.join(t.__name__ for t in types)})", "missing")
        value = meta[name]
        # bool is an int subclass: do not let `correct: 1` or `answer_tokens: True` through
        if not isinstance(value, types) or (types == (int,) and isinstance(value, bool)):
            raise SampleError(key, f"meta.{name}", "/".join(t.__name__ for t in types), _describe(value))
    if meta["modality"] not in MODALITIES:
        raise SampleError(key, "meta.modality", f"one of {MODALITIES}", repr(meta["modality"]))

    attn, rel = sample.attn, sample.relevance
    for name, arr in ((EXT_ATTN, attn), (EXT_REL, rel)):
        if not isinstance(arr, torch.Tensor) or arr.ndim != 1 or arr.numel() == 0:
            raise SampleError(key, name, "a non-empty 1-D array (N_v,)", _describe(arr))
        if not torch.isfinite(arr).all():
            bad = int((~torch.isfinite(arr)).sum())
            raise SampleError(key, name, "finite values", f"{bad} non-finite of {arr.numel()}")
        if (arr < 0).any():
            raise SampleError(key, name, "values >= 0", f"min {float(arr.min()):.4g}")
    n_v = attn.numel()
    if rel.numel() != n_v:
        raise SampleError(key, EXT_REL, f"length N_v={n_v} (length of {EXT_ATTN})", f"length {rel.numel()}")
    grid = meta["grid"]
    if len(grid) != 3 or not all(isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid):
        raise SampleError(key, "meta.grid", "[t, h, w] of positive ints", repr(grid))
    if math.prod(grid) != n_v:
        raise SampleError(key, "meta.grid", f"t*h*w == N_v={n_v}", f"{grid} (product {math.prod(grid)})")
    segments = meta.get("segments")
    if segments is not None:
        _validate_segments(key, segments, n_v)
    probe = meta_value(meta, "probe_layer")
    if not isinstance(probe, int) or isinstance(probe, bool) or probe < 0:
        raise SampleError(key, "meta.probe_layer", "a decoder layer index, an int >= 0", _describe(probe))
    if sample.attn_heads is not None:
        heads = sample.attn_heads
        if heads.ndim != 2 or heads.shape[1] != n_v:
            raise SampleError(key, EXT_HEADS, f"shape (H, N_v={n_v})", _describe(heads))
        if not torch.isfinite(heads.float()).all():
            raise SampleError(key, EXT_HEADS, "finite values", "non-finite values")
    return sample


def _validate_segments(key: str, segments: Any, n_v: int) -> None:
    """Optional `meta.segments`: contiguous parts of the visual tokens (LLaVA-OneVision's base image,
    crops, newline tokens; one image or video each of a prompt with several):
    [{"kind": str, "start": int, "grid": [t, h, w], "visual": int (optional)}, ...] covering 0..N_v.
    "visual" is the index, in prompt order, of the image or video a part belongs to: on every part or
    none, 0, 1, 2, ... in order (a prompt's item may have several parts)."""
    if not isinstance(segments, list) or not segments:
        raise SampleError(key, "meta.segments", "a non-empty list", _describe(segments))
    pos = 0
    for i, seg in enumerate(segments):
        if not isinstance(seg, dict) or not {"kind", "start", "grid"} <= set(seg):
            raise SampleError(key, f"meta.segments[{i}]", "{kind, start, grid}", _describe(seg))
        grid = seg["grid"]
        if not isinstance(grid, (list, tuple)) or len(grid) != 3 or not all(
                isinstance(g, int) and not isinstance(g, bool) and g > 0 for g in grid):
            raise SampleError(key, f"meta.segments[{i}].grid", "[t, h, w] of positive ints", _describe(grid))
        if seg["start"] != pos:
            raise SampleError(key, f"meta.segments[{i}].start", f"{pos} (contiguous)", repr(seg["start"]))
        pos += math.prod(grid)
    if pos != n_v:
        raise SampleError(key, "meta.segments", f"lengths summing to N_v={n_v}", f"sum {pos}")
    has = ["visual" in seg for seg in segments]
    if any(has):
        if not all(has):
            raise SampleError(key, "meta.segments", "'visual' on every segment or on none",
                              f"on {sum(has)} of {len(has)}")
        prev = -1
        for i, seg in enumerate(segments):
            v = seg["visual"]
            if not isinstance(v, int) or isinstance(v, bool) or v not in (prev, prev + 1) or (i == 0 and v != 0):
                raise SampleError(key, f"meta.segments[{i}].visual",
                                  f"{max(prev, 0)} or {prev + 1} (0, 1, 2, ... in order)", repr(v))
            prev = v


@dataclass(frozen=True)
class VisualSpan:
    """The visual tokens [start, stop) of one image or video of a prompt, and the grid (t, h, w) its
    tokens form (t*h*w == stop - start; (1, 1, n) where its parts form no one grid)."""

    start: int
    stop: int
    grid: tuple[int, int, int]


def visual_spans(segments: list[dict] | None, grid: Any, n_v: int) -> list[VisualSpan]:
    """The images and videos of a prompt from its `segments` (schema meta.segments) and `grid`: one span
    per "visual" index, or one span of `grid` when the segments carry none (a one-media prompt)."""
    if not segments or "visual" not in segments[0]:
        return [VisualSpan(0, n_v, tuple(int(g) for g in grid))]
    spans: list[VisualSpan] = []
    groups: dict[int, list[dict]] = {}
    for seg in segments:
        groups.setdefault(int(seg["visual"]), []).append(seg)
    for parts in groups.values():
        start = int(parts[0]["start"])
        stop = int(parts[-1]["start"]) + math.prod(parts[-1]["grid"])
        g = tuple(int(v) for v in parts[0]["grid"]) if len(parts) == 1 else (1, 1, stop - start)
        spans.append(VisualSpan(start, stop, g))
    return spans


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


def _npy_load(key: str, name: str, data: bytes) -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # truncated or not an .npy file at all
        raise SampleError(key, name, "a readable .npy array", f"{type(e).__name__}: {e}") from e


def encode(sample: Sample) -> dict[str, Any]:
    """Sample -> dict for `webdataset.ShardWriter.write` (validates first)."""
    validate(sample)
    out: dict[str, Any] = {
        "__key__": sample.key,
        EXT_ATTN: _npy_bytes(sample.attn.detach().cpu().float().numpy()),
        EXT_REL: _npy_bytes(sample.relevance.detach().cpu().float().numpy()),
        EXT_META: json.dumps(sample.meta, sort_keys=True).encode("utf-8"),
    }
    if sample.attn_heads is not None:
        out[EXT_HEADS] = _npy_bytes(sample.attn_heads.detach().cpu().to(torch.float16).numpy())
    if sample.thumbnail is not None:
        out[EXT_THUMB] = sample.thumbnail
    out.update(sample.extra_files)
    return out


def decode(raw: dict[str, Any], load_heads: bool = True) -> Sample:
    """Raw webdataset dict (bytes values, no decoder applied) -> validated Sample."""
    key = raw.get("__key__", "<no key>")
    if not isinstance(key, str):
        key = str(key)
    for name in (EXT_ATTN, EXT_REL, EXT_META):
        if name not in raw:
            raise SampleError(key, name, "present", f"missing (files: {sorted(k for k in raw if not k.startswith('__'))})")
    try:
        meta = json.loads(raw[EXT_META])
    except Exception as e:
        raise SampleError(key, EXT_META, "valid JSON", f"{type(e).__name__}: {e}") from e
    attn = torch.from_numpy(_npy_load(key, EXT_ATTN, raw[EXT_ATTN]).astype(np.float32, copy=False))
    rel = torch.from_numpy(_npy_load(key, EXT_REL, raw[EXT_REL]).astype(np.float32, copy=False))
    heads = None
    if load_heads and EXT_HEADS in raw:
        heads = torch.from_numpy(_npy_load(key, EXT_HEADS, raw[EXT_HEADS]))
    known = {"__key__", "__url__", "__local_path__", EXT_ATTN, EXT_REL, EXT_META, EXT_HEADS, EXT_THUMB}
    extra_files = {k: v for k, v in raw.items() if k not in known and not k.startswith("__")}
    sample = Sample(key=key, attn=attn, relevance=rel, meta=meta, attn_heads=heads,
                    thumbnail=raw.get(EXT_THUMB), extra_files=extra_files)
    return validate(sample)
