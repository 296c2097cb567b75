"""The latency contract: a plan + a model inventory + a workload -> operators -> predicted milliseconds.

`plan_ops` turns a plan into the operators one forward pass runs: every Linear as a GEMM (m tokens x k in
x n out) in the kernel format its plan gives it (with its quantization group size: whether a device's kernel
takes the layer is decided per GEMM, `DeviceProfile.kernel_for`), shrunk by structured pruning and split in
two by low rank, behind an element-wise activation quantization when it has int8 activations outside W8A8;
plus per block the attention core (scores and context, over the heads kept) and the element-wise work
(norms, activation, residuals), and the embeddings (a pruned vocabulary: the LM head's kept rows, and the
logits mapped back to the original ids, `autocompress.vocab.latency`). In a decode step of a causal LM each
block's attention also reads its KV cache: a `kv_cache` operator of that many keys and values, at the plan's
`kv_cache` bits plus scales (`cache_bits`), or in the device dtype (None). Latency models price these operators:
`roofline` from the device profile's peaks, `table` from measured operators, `measured` by timing the real
model. `time_ms` is the one timing harness (warm-up, then the median of repeats).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

from autocompress.errors import UserError
from autocompress.depth.reduce import reduced
from autocompress.hardware.profile import DeviceProfile, format_of
from autocompress.kvcache.memory import bits_per_value
from autocompress.models import ModelInfo
from autocompress.plan import CompressionPlan, LayerPlan, resolve_rank
from autocompress.registry import Registry
from autocompress.vocab.latency import MAP_KERNELS, logit_map_elements, vocab_rows


ACT_QUANT_KERNELS = 10  # element-wise launches of one per-token int8 activation fake-quantization


@dataclass(frozen=True)
class Workload:
    """What one timed call processes. prefill: `batch` sequences of `seq_len` tokens; decode: one new token
    per sequence, attending over `seq_len` tokens of context."""

    batch: int = 1
    seq_len: int = 128
    mode: Literal["prefill", "decode"] = "prefill"

    @property
    def tokens(self) -> int:
        return self.batch * (self.seq_len if self.mode == "prefill" else 1)


def check_mode(mode: str, task: str, model: str, field: str) -> None:
    """`UserError` naming `field` (`target.mode`, `--mode`) when a decode workload is asked of a model that is
    not a causal LM: an encoder generates no tokens, so a decode step has no meaning for it."""
    if mode == "decode" and task != "causal-lm":
        fix = "target.mode: prefill" if field == "target.mode" else f"{field} prefill"
        raise UserError(f"{field}: decode needs a causal language model, and {model!r} is loaded for task "
                        f"{task!r}; use {fix}, or a causal LM (SmolLM2-135M-Instruct, a .gguf file, random:llama)")


@dataclass(frozen=True)
class Op:
    """One operator. GEMMs: [m, k] x [k, n] in `fmt`, a weight format's integers in groups of `group_size`
    input channels per scale (None: one scale per output channel). attention: `flops` over `elements` of
    scores. elementwise: `elements` values read and written by `kernels` launches (an estimate per block,
    which calibration scales). act_quant: the same, for one activation fake-quantization whose launches are
    counted (not scaled). kv_cache: `elements` cached keys and values a decode step's attention reads (no
    launch of its own), `cache_bits` bits each with their scales, or the device dtype's when None."""

    layer: str
    kind: Literal["gemm", "attention", "elementwise", "act_quant", "kv_cache"]
    m: int = 0
    k: int = 0
    n: int = 0
    fmt: str = "dense"
    group_size: int | None = None
    flops: float = 0.0
    elements: float = 0.0
    kernels: int = 1
    cache_bits: float | None = None

    @property
    def gemm_flops(self) -> float:
        return 2.0 * self.m * self.k * self.n


@dataclass
class OpLatency:
    op: Op
    ms: float
    bottleneck: str  # compute | memory | overhead | measured


@dataclass
class LatencyReport:
    total_ms: float
    ops: list[OpLatency] = field(default_factory=list)
    model: str = ""

    def per_layer(self) -> list[tuple[str, float, str]]:
        """(layer, ms, bottleneck of its largest operator), in model order."""
        acc: dict[str, list[OpLatency]] = {}
        for o in self.ops:
            acc.setdefault(o.op.layer, []).append(o)
        return [(layer, sum(o.ms for o in parts), max(parts, key=lambda o: o.ms).bottleneck)
                for layer, parts in acc.items()]


class LatencyModel:
    """Prices a plan on a device. Subclasses set `name` and implement `predict`; `needs_model` is True for
    models that time a real network (they are built with the base model and run where it lives)."""

    name: ClassVar[str]
    needs_model: ClassVar[bool] = False

    def __init__(self, profile: DeviceProfile | None) -> None:
        self.profile = profile

    def predict(self, plan: CompressionPlan, info: ModelInfo, workload: Workload) -> LatencyReport:
        raise NotImplementedError


LATENCY_MODELS: Registry[type[LatencyModel]] = Registry("latency model")


def _shapes(plan: CompressionPlan, info: ModelInfo) -> tuple[dict[str, list[int]], dict[int, tuple[int, int]],
                                                            dict[int, int]]:
    """Layer (in, out) after structured pruning; per block (heads kept, head_dim) and FFN width."""
    dims = {n: [li.in_features, li.out_features] for n, li in info.layers.items()}
    for name, rows in vocab_rows(plan, info).items():  # a pruned vocabulary: the LM head's kept rows
        if name in dims:
            dims[name][1] = rows
    heads: dict[int, tuple[int, int]] = {}
    ffn: dict[int, int] = {}
    for name, s in info.structures.items():
        entry = plan.layers.get(name)
        removed = min(round(entry.sparsity * s.units), s.units - 1) if entry is not None else 0
        for p in s.producers:
            dims[p][1] -= removed * s.unit_size * (3 if s.fused_qkv else 1)
        dims[s.consumer][0] -= removed * s.unit_size
        if s.block is not None:
            if s.kind == "heads":
                heads[s.block] = (s.units - removed, s.unit_size)
            else:
                ffn[s.block] = s.units - removed
    return dims, heads, ffn


def layer_format(entry: LayerPlan) -> tuple[str, int | None]:
    """(kernel format, group size) of one Linear's plan entry; the group size only for integer weights. A
    clustered layer (quant_method kmeans) has no kernel anywhere: it runs dense, dequantized at load."""
    if entry.bits is not None and entry.quant_method == "kmeans":
        return format_of(None, entry.act_bits, entry.pattern if entry.prunes else None), None
    fmt = format_of(entry.bits, entry.act_bits, entry.pattern if entry.prunes else None, entry.symmetric)
    return fmt, entry.group_size if entry.bits is not None else None


def plan_ops(plan: CompressionPlan, info: ModelInfo, workload: Workload) -> list[Op]:
    """The operators of one forward pass of the compressed model (see the module docstring); blocks the plan
    drops (`autocompress.depth`) have none."""
    plan, info = reduced(plan, info)
    dims, heads, ffn = _shapes(plan, info)
    extra = info.extra
    hidden = extra.get("hidden_size") or 0
    t, b = workload.tokens, workload.batch
    q_len = workload.seq_len if workload.mode == "prefill" else 1
    ops = [Op("embeddings", "elementwise", elements=3.0 * t * hidden, kernels=4)]
    for name, li in info.layers.items():
        k, n = dims[name]
        m = b if name.endswith("pooler.dense") else t
        if info.task == "causal-lm" and li.block is None and workload.mode == "prefill":
            m = b  # the LM head: generation needs the last position's logits only
        entry = plan.layers.get(name)
        fmt, group = ("dense", None) if entry is None else layer_format(entry)
        if entry is not None and entry.rank is not None:
            r = resolve_rank(entry.rank, n, k)
            gemms = [Op(name, "gemm", m, k, r, fmt, group), Op(name, "gemm", m, r, n, fmt, group)]
        else:
            gemms = [Op(name, "gemm", m, k, n, fmt, group)]
        for g in gemms:
            if entry is not None and entry.act_bits is not None and fmt != "w8a8":
                # int8 activations without the W8A8 kernel: the input is fake-quantized per token in front
                # of the GEMM (absmax, scale, round, clamp: ~10 element-wise launches over m x k values)
                ops.append(Op(name, "act_quant", elements=4.0 * g.m * g.k, kernels=ACT_QUANT_KERNELS))
            ops.append(g)
    mapped = logit_map_elements(plan, info, workload)  # a pruned vocabulary's logits back to the original ids
    if mapped:
        ops.append(Op("vocab.logit_map", "elementwise", elements=mapped, kernels=MAP_KERNELS))
    for block in range(extra.get("num_blocks") or 0):
        h, d = heads.get(block, (extra.get("num_heads") or 1, hidden // max(extra.get("num_heads") or 1, 1)))
        scores = float(b * h * q_len * workload.seq_len)
        prefix = f"{info.block_prefix}.{block}"
        ops.append(Op(f"{prefix}.attention", "attention", flops=4.0 * scores * d, elements=3.0 * scores, kernels=3))
        cache = _cache_read(info, workload, h, d)
        if cache:
            ops.append(Op(f"{prefix}.kv_cache", "kv_cache", elements=cache, kernels=0,
                          cache_bits=bits_per_value(plan.kv_cache, block, d)))
        width = ffn.get(block, 4 * hidden)
        ops.append(Op(f"{prefix}.elementwise", "elementwise", elements=t * (8.0 * hidden + 2.0 * width), kernels=6))
    return ops


def _cache_read(info: ModelInfo, workload: Workload, heads: int, head_dim: int) -> float:
    """Cached keys and values one decode step of a block with `heads` query heads reads: 2 x batch x kv heads x
    seq_len x head_dim (the kv heads are the query heads kept over the query heads per kv head). 0 outside a
    causal LM's decode."""
    extra = info.extra
    if workload.mode != "decode" or not extra.get("num_kv_heads"):
        return 0.0
    per_kv = max(1, (extra.get("num_heads") or 1) // extra["num_kv_heads"])
    return 2.0 * workload.batch * max(1, heads // per_kv) * workload.seq_len * head_dim


def time_ms(fn: Callable[[], Any], warmup: int = 3, repeats: int = 15, min_total_s: float = 0.2) -> float:
    """Median wall time of `fn()` in milliseconds, after `warmup` calls; repeats until both `repeats` calls
    and `min_total_s` seconds have passed (at most 10x `repeats`), so fast operators get enough samples."""
    import torch

    with torch.inference_mode():
        for _ in range(warmup):
            fn()
        samples: list[float] = []
        start = time.perf_counter()
        while len(samples) < repeats or (time.perf_counter() - start < min_total_s and len(samples) < 10 * repeats):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(samples)
