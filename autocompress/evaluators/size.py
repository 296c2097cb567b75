"""The size of a compressed model, from its plan and `ModelInfo` alone (no weights; microseconds).

The packed format counted here (an exporter writes exactly this):
  - Every parameter outside the Linear layers of `ModelInfo.layers` and the embedding tables of
    `ModelInfo.embeddings` (norms, position biases, ...) keeps its original `dtype_bytes` per value.
    Original size = `total_params * dtype_bytes`. A Linear whose weight is
    tied to another parameter (GPT-2's lm_head) is counted once, as the layer.
  - Structured pruning first changes shapes. A structure entry (pattern structured, sparsity s) removes
    n = round(s * units) units (at most units - 1). Each producer loses n * unit_size output rows (3x that for
    a fused q|k|v producer) and as many bias entries; the consumer loses n * unit_size input columns.
  - Low-rank (rank resolved with `resolve_rank` on the post-structured shape (out, in)): two factor matrices
    [r, in] (no bias) and [out, r] (+ out bias values), each stored like a weight below, never sparse.
  - A weight matrix [rows, cols] with bits b holds ceil(values * b / 8) bytes of packed integers, plus one
    fp16 scale (2 bytes) per group, plus, when asymmetric, one uint8 zero point per group (for a `gguf_type`
    layer, one fp16 minimum: ggml's block of 32, e.g. Q4_0 18 bytes, Q4_1 20, Q8_0 34). Groups per row:
    ceil(cols / group_size), or 1 when group_size is None (per output channel). Without bits each value
    takes `dtype_bytes` and there are no scales.
  - A clustered matrix (quant_method kmeans, policies/kmeans.py) holds the same packed indices at b bits per
    value and, instead of scales, its fp16 codebooks: 2^b values (2 bytes each) per group of group_size output
    rows (one codebook when group_size is None).
  - Unstructured sparsity s: each row keeps cols - round(s * cols) values, stored as the kept values plus a
    bitmask of ceil(rows * cols / 8) bytes. N:M: in each row the first (cols // M) * M columns keep N of
    every M, the tail cols % M stays dense; the N:M part adds ceil(log2(M)) index bits per kept value
    (rounded up to whole bytes per matrix). A sparse layout is used only when it is smaller than the dense
    one; otherwise the matrix is stored dense (`SizeReport.formats` says which).
  - Biases keep `dtype_bytes` per value. act_bits changes nothing stored.
  - A smoothed layer (`smooth`, SmoothQuant) also stores its smoothing vector: in_features (after structured
    pruning) fp16 values, 2 bytes each, counted in the layer's bytes.
  - An embedding table [num_embeddings, dim] is a weight matrix like the above (rows = tokens, groups along
    dim), always dense. A table tied to a Linear layer is counted once, as that layer.
  - A plan's `vocab` entry (`autocompress.vocab`) leaves the token table and the LM head with the kept rows
    only (`vocab_rows`), and stores the id map: 4 bytes (int32) per original id, counted in `other_bytes`.

Memory at deployment (`plan_memory`, the `memory_mb` metric) is the packed weights above plus, for a causal
LM, its KV cache at a batch and context: batch x seq_len positions, each holding a key and a value vector per
block (2 x num_kv_heads x head_dim values per block, fewer heads where structured pruning removed some), each
value in the deployment dtype's bytes (`kv_value_bytes`), or, for the blocks a plan's `kv_cache` quantizes, in its
bits plus its fp16 scales (`autocompress.kvcache.memory`). An encoder keeps no cache: its memory is the weights
alone. Activations and the runtime's own buffers are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from autocompress.evaluators._base import EVALUATORS, Evaluator
from autocompress.depth.reduce import reduced
from autocompress.hardware.profile import DTYPE_BYTES
from autocompress.kvcache.memory import cache_bytes
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan, LayerPlan, resolve_rank
from autocompress.validation import validate_plan
from autocompress.vocab.plan import id_map_bytes, vocab_rows


@dataclass(frozen=True)
class SizeReport:
    """Bytes of the packed model. `per_layer` covers every Linear layer and every untied embedding table of
    the model (post-compression); `other_bytes` is every other parameter;
    `total_bytes == sum(per_layer.values()) + other_bytes`.
    `formats` gives each entry's storage layout: "dense", "bitmask", "N:M" (e.g. "2:4") or "lowrank"."""

    total_bytes: int
    original_bytes: int
    ratio: float
    size_mb: float
    per_layer: dict[str, int] = field(default_factory=dict)
    other_bytes: int = 0
    formats: dict[str, str] = field(default_factory=dict)


def _value_bytes(count: int, entry: LayerPlan | None, dtype_bytes: int) -> int:
    if entry is None or entry.bits is None:
        return count * dtype_bytes
    return math.ceil(count * entry.bits / 8)


def _scale_bytes(rows: int, cols: int, entry: LayerPlan | None) -> int:
    if entry is None or entry.bits is None:
        return 0
    if entry.quant_method == "kmeans":  # fp16 codebooks of 2^bits values per group of output rows
        books = 1 if entry.group_size is None else math.ceil(rows / entry.group_size)
        return books * 2 ** entry.bits * 2
    per_row = 1 if entry.group_size is None else math.ceil(cols / entry.group_size)
    if entry.gguf_type is not None:  # ggml blocks: an fp16 scale, and an fp16 minimum for the *_1 types
        return rows * per_row * (2 if entry.symmetric else 4)
    return rows * per_row * (2 if entry.symmetric else 3)


def matrix_bytes(rows: int, cols: int, entry: LayerPlan | None, dtype_bytes: int,
                 sparse: bool = True) -> tuple[int, str]:
    """(bytes, layout) of one [rows, cols] weight matrix under `entry` (see the module docstring)."""
    scales = _scale_bytes(rows, cols, entry)
    dense = _value_bytes(rows * cols, entry, dtype_bytes) + scales
    if entry is None or not sparse or not entry.prunes:
        return dense, "dense"
    nm = entry.n_m
    if nm is not None:
        n, m = nm
        nm_kept = rows * (cols // m) * n
        kept = nm_kept + rows * (cols % m)
        index_bytes = math.ceil(nm_kept * (m - 1).bit_length() / 8)
        packed, layout = _value_bytes(kept, entry, dtype_bytes) + index_bytes + scales, f"{n}:{m}"
    else:
        kept = rows * cols - round(entry.sparsity * cols) * rows
        packed = _value_bytes(kept, entry, dtype_bytes) + math.ceil(rows * cols / 8) + scales
        layout = "bitmask"
    return (packed, layout) if packed < dense else (dense, "dense")


def smooth_bytes(in_features: int, entry: LayerPlan | None) -> int:
    """Bytes of a layer's stored smoothing vector: in_features fp16 values when it is smoothed, else 0."""
    return 2 * in_features if entry is not None and entry.smooth is not None else 0


def pruned_shapes(plan: CompressionPlan, info: ModelInfo) -> dict[str, tuple[int, int]]:
    """(out_features, in_features) of every Linear layer after the plan's structured pruning (and the LM head's
    rows after its vocabulary pruning)."""
    shapes = {name: [li.out_features, li.in_features] for name, li in info.layers.items()}
    for name, rows in vocab_rows(plan, info).items():
        if name in shapes:
            shapes[name][0] = rows
    for name, entry in plan.layers.items():
        s = info.structures.get(name)
        if s is None or entry.pattern != "structured":
            continue
        removed = min(round(entry.sparsity * s.units), s.units - 1) * s.unit_size
        for producer in s.producers:
            shapes[producer][0] -= removed * (3 if s.fused_qkv else 1)
        shapes[s.consumer][1] -= removed
    return {name: (out, inp) for name, (out, inp) in shapes.items()}


def plan_size(plan: CompressionPlan, info: ModelInfo) -> SizeReport:
    """The `SizeReport` of `info`'s model compressed by `plan`. Raises `UserError` for a plan that does
    not fit the model (`validate_plan`)."""
    validate_plan(plan, info)
    db = info.dtype_bytes
    original = info.total_params * db
    plan, info = reduced(plan, info)  # dropped blocks (autocompress.depth): counted nowhere, the rest renumbered
    tables = [info.embeddings[n] for n in info.untied_tables()]
    other = info.total_params * db - (sum(li.params for li in info.layers.values()) + sum(e.params for e in tables)) * db
    other += id_map_bytes(plan, info)
    rows = vocab_rows(plan, info)
    per_layer: dict[str, int] = {}
    formats: dict[str, str] = {}
    for emb in tables:
        n_rows = rows.get(emb.name, emb.num_embeddings)
        per_layer[emb.name], formats[emb.name] = matrix_bytes(n_rows, emb.embedding_dim,
                                                              plan.layers.get(emb.name), db, sparse=False)
    for name, (out, inp) in pruned_shapes(plan, info).items():
        entry = plan.layers.get(name)
        bias = out * db if info.layers[name].bias else 0
        if entry is not None and entry.rank is not None:
            r = resolve_rank(entry.rank, out, inp)
            down, _ = matrix_bytes(r, inp, entry, db, sparse=False)
            up, _ = matrix_bytes(out, r, entry, db, sparse=False)
            per_layer[name], formats[name] = down + up + bias, "lowrank"
        else:
            weight, formats[name] = matrix_bytes(out, inp, entry, db)
            per_layer[name] = weight + bias + smooth_bytes(inp, entry)
    total = sum(per_layer.values()) + other
    return SizeReport(total_bytes=total, original_bytes=original, ratio=total / original if original else 1.0,
                      size_mb=total / 1e6, per_layer=per_layer, other_bytes=other, formats=formats)


@dataclass(frozen=True)
class MemoryReport:
    """Bytes a deployed model holds: packed weights (`SizeReport.total_bytes`) and its KV cache (0 for an
    encoder); `memory_mb` is their sum in MB (1e6 bytes)."""

    weights_bytes: int
    kv_cache_bytes: int

    @property
    def memory_mb(self) -> float:
        return (self.weights_bytes + self.kv_cache_bytes) / 1e6


def kv_value_bytes(plan: CompressionPlan, dtype: str) -> float:
    """Bytes per cached key or value under `plan` on a device whose deployment dtype is `dtype` ("fp32",
    "bf16", ...): the dtype's bytes, for the blocks whose cache the plan leaves unquantized (the quantized ones
    are counted at their bits by `autocompress.kvcache.memory.cache_bytes`)."""
    return DTYPE_BYTES[dtype]


def kv_cache_values(plan: CompressionPlan, info: ModelInfo, batch: int, seq_len: int) -> int:
    """Keys and values a causal LM caches for `batch` sequences of `seq_len` positions: per position and
    block, 2 x kv heads kept x head_dim (`ModelInfo.extra` num_kv_heads, head_dim). 0 for a model without a
    cache (an encoder: num_kv_heads None)."""
    head_dim = info.extra.get("head_dim")
    return 2 * batch * seq_len * (head_dim or 0) * sum(kv_heads_per_block(plan, info).values())


def kv_heads_per_block(plan: CompressionPlan, info: ModelInfo) -> dict[int, int]:
    """{block: key/value heads it caches after the plan's structured pruning}; {} for a model without a cache."""
    kv_heads, head_dim = info.extra.get("num_kv_heads"), info.extra.get("head_dim")
    if not kv_heads or not head_dim:
        return {}
    heads = {block: kv_heads for block in range(info.extra.get("num_blocks") or 0)}
    for name, s in info.structures.items():
        entry = plan.layers.get(name)
        if s.kind == "heads" and s.block in heads and entry is not None and entry.pattern == "structured":
            heads[s.block] -= min(round(entry.sparsity * s.units), s.units - 1) // s.kv_groups
    return heads


def plan_memory(plan: CompressionPlan, info: ModelInfo, batch: int, seq_len: int, dtype: str) -> MemoryReport:
    """The `MemoryReport` of `info`'s model compressed by `plan`, serving `batch` sequences of `seq_len`
    positions on a device whose deployment dtype is `dtype` (see the module docstring). Raises `UserError` for
    a plan that does not fit the model."""
    weights = plan_size(plan, info).total_bytes
    plan, info = reduced(plan, info)  # dropped blocks keep no cache
    kv = cache_bytes(plan.kv_cache, kv_heads_per_block(plan, info), info.extra.get("head_dim") or 0, batch, seq_len,
                     kv_value_bytes(plan, dtype))
    return MemoryReport(weights_bytes=weights, kv_cache_bytes=kv)


@EVALUATORS.register("size")
class SizeEvaluator(Evaluator):
    """Size metrics of a plan for one model inventory. Needs no model: use `evaluate_plan(plan)`."""

    name = "size"
    metrics: ClassVar[dict[str, str]] = {"size_mb": "lower", "size_ratio": "lower"}
    needs_model = False

    def __init__(self, info: ModelInfo) -> None:
        self.info = info

    def evaluate_plan(self, plan: CompressionPlan) -> dict[str, float]:
        """{"size_mb": packed megabytes (1e6 bytes), "size_ratio": compressed / original bytes}."""
        report = plan_size(plan, self.info)
        return {"size_mb": report.size_mb, "size_ratio": report.ratio}

    def evaluate(self, model: Any) -> dict[str, float]:
        raise TypeError("the size evaluator measures a plan, not a model: call evaluate_plan(plan)")
