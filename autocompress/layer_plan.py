"""One layer's plan: `LayerPlan` (bits, grid, sparsity, rank, methods), checked when it is built.

The settings a `CompressionPlan` (plan.py) gives each module: quantization (bits, group size, grid, method,
int8 activations, a ggml block type), pruning (sparsity, N:M, structured), low rank (rank, method) and
SmoothQuant. Bad values raise `UserError` naming the field and the fix. `autocompress.plan` re-exports every
public name here.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from autocompress.errors import UserError, from_fields

QUANT_METHODS = ("rtn", "gptq", "kmeans")
KMEANS_WEIGHTINGS = ("none", "activation")
PRUNE_METHODS = ("magnitude", "wanda")
RANK_METHODS = ("svd", "whitened")
MAX_SPARSITY = 0.95
# ggml's block types a layer can be planned on (gguf_type): (bits, symmetric); every one has blocks of 32
GGUF_TYPES = {"Q4_0": (4, True), "Q4_1": (4, False), "Q5_0": (5, True), "Q5_1": (5, False), "Q8_0": (8, True)}
GGUF_BLOCK = 32


def gguf_type_of(bits: int, symmetric: bool) -> str | None:
    """The ggml type holding `bits` with that symmetry ("Q4_0" for 4, true), or None (8-bit asymmetric, 2, 3,
    6, 7 bits)."""
    return next((t for t, (b, s) in GGUF_TYPES.items() if b == bits and s == symmetric), None)
_NM = re.compile(r"^(\d+):(\d+)$")


@dataclass(frozen=True)
class LayerPlan:
    """Settings for one layer (or one structure). The defaults change nothing.

    Quantization (weights fake-quantized on a per-group integer grid):
      bits: 2..8, or None to keep the layer's weights in their original dtype.
      group_size: input channels per scale; None means one scale per output channel.
      symmetric: symmetric grid (zero at 0) or asymmetric (min/max with an integer zero point).
      quant_method: "rtn" (round to nearest), "gptq" (error-correcting, needs calibration data) or "kmeans"
        (weight clustering, policies/kmeans.py: 2^bits float16 centroids per codebook, each weight stored as a
        bits-wide index; group_size then counts output rows per codebook, None = one codebook per matrix;
        symmetric does not apply and is kept true; no gguf_type, no distillation).
      kmeans_weighting: "none" (plain k-means) or "activation" (SqueezeLLM-style sensitivity weighting: each
        weight w_ij counts in the k-means objective by its input channel's mean squared activation
        diag(X^T X)_j / tokens, from calibration data; policies/kmeans_weighted.py). Only with quant_method
        kmeans and bits.
      act_bits: 8 for dynamic per-token int8 activations (W8A8), or None to keep activations as they are.
      smooth: SmoothQuant's migration strength alpha in (0, 1], or None: before quantization each input
        channel j of the layer is divided by s_j = max|x_j|^alpha / max|W_j|^(1 - alpha) (from calibration
        data) and the weight's column j multiplied by it, so the int8 activations see fewer outliers. Needs
        act_bits 8 and no rank (see policies/smooth.py).
      gguf_type: "Q4_0", "Q4_1", "Q5_0", "Q5_1" or "Q8_0" to quantize onto ggml's block grid of that type
        (llama.cpp's; policies/ggml.py) instead of the integer grid, so the layer is exactly what a GGUF file
        of that type holds. It sets bits (4, 4, 5, 5, 8), group_size 32 and symmetric (true for *_0, false
        for *_1); given bits or symmetric must agree, a group_size other than 32 (or the default 128) is
        refused, and it takes no act_bits, smooth, sparsity or rank (GGUF holds none of them).
    Pruning:
      sparsity: share of weights removed, 0..0.95 (for "structured", the share of heads/neurons removed).
      pattern: "unstructured", "N:M" such as "2:4" (N kept in every M; sparsity is then 1 - N/M),
        or "structured" (only on structure keys: removes whole heads or FFN neurons).
      prune_method: "magnitude" or "wanda" (|weight| x input activation norm, needs calibration data).
    Low-rank factorization (the layer becomes two Linears, in -> rank -> out):
      rank: an int >= 1 (absolute) or a float in (0, 1) (a fraction of min(in, out)); None to keep.
      rank_method: "svd" (truncated SVD) or "whitened" (SVD of the weight whitened by calibration activations).
    """

    bits: int | None = None
    group_size: int | None = 128
    symmetric: bool = True
    quant_method: str = "rtn"
    act_bits: int | None = None
    sparsity: float = 0.0
    pattern: str = "unstructured"
    prune_method: str = "magnitude"
    rank: int | float | None = None
    rank_method: str = "svd"
    smooth: float | None = None  # after the older fields, so that positional construction keeps its meaning
    gguf_type: str | None = None
    kmeans_weighting: str = "none"

    def __post_init__(self) -> None:
        if self.gguf_type is not None:
            _apply_gguf_type(self)
        if self.quant_method == "kmeans":
            object.__setattr__(self, "symmetric", True)  # a codebook has no symmetry
        _check_layer_plan(self)
        object.__setattr__(self, "sparsity", float(self.sparsity))
        if self.smooth is not None:
            object.__setattr__(self, "smooth", float(self.smooth))
        nm = self.n_m
        if nm is not None:
            object.__setattr__(self, "sparsity", 1.0 - nm[0] / nm[1])

    @property
    def n_m(self) -> tuple[int, int] | None:
        """(N, M) for an N:M pattern, else None."""
        match = _NM.match(self.pattern)
        return (int(match.group(1)), int(match.group(2))) if match else None

    @property
    def quantizes(self) -> bool:
        return self.bits is not None or self.act_bits is not None

    @property
    def prunes(self) -> bool:
        return self.sparsity > 0.0

    @property
    def factorizes(self) -> bool:
        return self.rank is not None

    @property
    def is_noop(self) -> bool:
        return not (self.quantizes or self.prunes or self.factorizes)

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from the defaults (the defaults are fixed for a given PLAN_VERSION)."""
        return {k: v for k, v in asdict(self).items() if v != _DEFAULTS[k]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "layer") -> "LayerPlan":
        return from_fields(cls, data, _DEFAULTS, where)


def _apply_gguf_type(p: LayerPlan) -> None:
    """Set bits, group_size and symmetric from `p.gguf_type`; `UserError` where given values contradict it."""
    t = p.gguf_type
    if t not in GGUF_TYPES:
        raise UserError(f"gguf_type={t!r} is unknown; use one of {', '.join(GGUF_TYPES)}")
    bits, symmetric = GGUF_TYPES[t]
    means = f"gguf_type {t} means bits {bits}, group_size {GGUF_BLOCK}, symmetric {str(symmetric).lower()}"
    if p.bits not in (None, bits) or p.group_size not in (GGUF_BLOCK, _DEFAULTS["group_size"]) or \
            (symmetric and not p.symmetric):
        raise UserError(f"{means}; drop bits/group_size/symmetric or make them agree")
    extra = [f for f, v in (("act_bits", p.act_bits), ("smooth", p.smooth), ("sparsity", p.sparsity > 0),
                            ("rank", p.rank is not None)) if v]
    if extra:
        raise UserError(f"gguf_type {t} quantizes weights only; GGUF holds no {', '.join(extra)}: drop it")
    for name, value in (("bits", bits), ("group_size", GGUF_BLOCK), ("symmetric", symmetric)):
        object.__setattr__(p, name, value)


def _check_layer_plan(p: LayerPlan) -> None:
    def bad(msg: str) -> None:
        raise UserError(msg)

    if p.bits is not None and (type(p.bits) is not int or not 2 <= p.bits <= 8):
        bad(f"bits={p.bits!r} is out of range; use an integer 2..8, or null to keep the weights")
    if p.group_size is not None and (type(p.group_size) is not int or p.group_size < 1):
        bad(f"group_size={p.group_size!r} must be a positive integer, or null for one scale per output channel")
    if type(p.symmetric) is not bool:
        bad(f"symmetric={p.symmetric!r} must be true or false")
    if p.quant_method not in QUANT_METHODS:
        bad(f"quant_method={p.quant_method!r} is unknown; use one of {', '.join(QUANT_METHODS)}")
    if p.quant_method == "kmeans" and p.gguf_type is not None:
        bad(f"quant_method=kmeans with gguf_type {p.gguf_type}: ggml blocks are a uniform grid, not a codebook; "
            "drop one of them")
    if p.kmeans_weighting not in KMEANS_WEIGHTINGS:
        bad(f"kmeans_weighting={p.kmeans_weighting!r} is unknown; use one of {', '.join(KMEANS_WEIGHTINGS)}")
    if p.kmeans_weighting != "none" and (p.quant_method != "kmeans" or p.bits is None):
        bad(f"kmeans_weighting={p.kmeans_weighting} weights the k-means codebook, and this layer has "
            f"{'no bits' if p.bits is None else 'quant_method ' + p.quant_method}; set quant_method: kmeans with "
            "bits, or drop kmeans_weighting")
    if p.act_bits not in (None, 8):
        bad(f"act_bits={p.act_bits!r} is not supported; use 8 (dynamic int8 activations) or null")
    if p.smooth is not None:
        if isinstance(p.smooth, bool) or not isinstance(p.smooth, (int, float)) or not 0.0 < p.smooth <= 1.0:
            bad(f"smooth={p.smooth!r} must be a migration strength in (0, 1] (0.5 is SmoothQuant's default), "
                "or null for no smoothing")
        if p.act_bits != 8:
            bad(f"smooth={p.smooth!r} needs act_bits 8: smoothing moves activation outliers into the weights, "
                "which only pays when activations are quantized; set act_bits: 8 or drop smooth")
        if p.rank is not None:
            bad(f"smooth={p.smooth!r} and rank on one layer: a factorized layer is not smoothed; choose one")
    if isinstance(p.sparsity, bool) or not isinstance(p.sparsity, (int, float)) or math.isnan(p.sparsity):
        bad(f"sparsity={p.sparsity!r} must be a number 0..{MAX_SPARSITY}")
    if p.pattern not in ("unstructured", "structured") and not _NM.match(str(p.pattern)):
        bad(f"pattern={p.pattern!r} is unknown; use unstructured, structured, or N:M such as 2:4")
    nm = _NM.match(str(p.pattern))
    if nm:
        n, m = int(nm.group(1)), int(nm.group(2))
        if not 0 < n < m:
            bad(f"pattern={p.pattern!r}: N:M needs 0 < N < M (e.g. 2:4)")
        if p.sparsity not in (0, 0.0, 1.0 - n / m):
            bad(f"sparsity={p.sparsity!r} contradicts pattern {p.pattern} (which means {1 - n / m:g}); drop one")
    elif not 0.0 <= p.sparsity <= MAX_SPARSITY:
        bad(f"sparsity={p.sparsity!r} is out of range; use 0..{MAX_SPARSITY}")
    if p.prune_method not in PRUNE_METHODS:
        bad(f"prune_method={p.prune_method!r} is unknown; use one of {', '.join(PRUNE_METHODS)}")
    if p.rank is not None:
        ok_int = type(p.rank) is int and p.rank >= 1
        ok_frac = type(p.rank) is float and 0.0 < p.rank < 1.0
        if not (ok_int or ok_frac):
            bad(f"rank={p.rank!r} must be an integer >= 1 or a fraction in (0, 1)")
    if p.rank_method not in RANK_METHODS:
        bad(f"rank_method={p.rank_method!r} is unknown; use one of {', '.join(RANK_METHODS)}")
    if p.rank is not None and p.sparsity > 0 and p.pattern != "structured":
        bad("rank and unstructured/N:M sparsity on one layer: the factors of a sparse matrix are dense; choose one")
    if p.pattern == "structured" and (p.quantizes or p.factorizes):
        bad("pattern=structured belongs on a structure key (heads or neurons) and takes only sparsity and "
            "prune_method; put bits/rank on its Linear layers")


_DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(LayerPlan)}


def resolve_rank(rank: int | float, out_features: int, in_features: int) -> int:
    """The absolute rank for a layer of shape (out, in): ints as given, fractions of min(out, in), at least 1."""
    full = min(out_features, in_features)
    if isinstance(rank, float):
        return max(1, round(rank * full))
    return rank
