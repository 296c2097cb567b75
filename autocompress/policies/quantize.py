"""Quantization: weights fake-quantized onto a per-group integer grid (RTN or GPTQ), optional int8 activations.

The grid, shared by every quantizer here and by any exporter that packs the integers (see `quant_params`):
  one (scale, zero) per row and per group of `group_size` consecutive input channels (the last group may
  be shorter; group_size None = one group per row, i.e. per output channel); integer q in [qmin, qmax];
  value = (q - zero) * scale.
  symmetric:  q in [-(2^(b-1)-1), 2^(b-1)-1] (the mirror-symmetric range: -2^(b-1) is never used, so
              2^b - 1 levels), zero = 0, scale = absmax / (2^(b-1)-1).
  asymmetric: q in [0, 2^b-1], scale = (max - min) / (2^b-1) with min clamped <= 0 and max >= 0,
              zero = round(-min / scale), an integer in [0, 2^b-1], so 0.0 is exactly on the grid.
  Every scale is rounded to float16 (then held as float32), clamped to float16's positive range
  [2^-24, 65504], before the zero point is computed from it: the packed export stores fp16 scales, so the
  grid searched and evaluated here is exactly the grid exported.
A weight that is exactly 0 maps to q = zero and back to exactly 0: pruned weights stay pruned.
A group that is all zeros gets scale 1 (never 0, never NaN).

The policy records the grid of every weight it quantizes as a plain attribute (not a buffer: the state_dict
is unchanged) `module._autocompress_grid = QuantGrid(...)`, in the [out, in] layout of `weight_matrix`, so
an exporter recovers the integers exactly with `quantize_int`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autocompress.modules import weight_modules
from autocompress.policies import ggml
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.policies._base import POLICIES, Calibration, Policy, check_weight
from autocompress.registry import Registry

# name -> fn(w [out, in], entry, gram [in, in] | None) -> (fake-quantized w, QuantGrid); `fn.needs_gram` (a bool,
# or a function of the entry) marks data-aware ones
QUANTIZERS: Registry = Registry("quant_method")
ACT_ATTR = "_autocompress_act_bits"
GRID_ATTR = "_autocompress_grid"
FP16_MIN, FP16_MAX = 2.0 ** -24, 65504.0  # float16's smallest positive (subnormal) and largest finite values
# the policy's GPTQ rounds columns in act-order with static groups: on SmolLM2-135M it cut the perplexity of W4
# per-channel from 125 to 99 and of W3 group 128 from 282 to 211 (float: 93), and raised every MiniLM mean fidelity
# measured (benchmarks/results/gptq_llm.md, gptq_minilm.md); the benchmarks turn it off to compare
GPTQ_ACT_ORDER = True


@dataclass(frozen=True, eq=False)
class QuantGrid:
    """The grid one weight [out, in] was quantized onto: scale and zero are float32 [out, groups] (zero holds
    integers, all 0 when symmetric; scale holds float16-exact values). See the module docstring. A layer
    with a `gguf_type` is on ggml's block grid instead (policies/ggml.py): scale is fp16(d), zero all 0,
    `minimum` fp16(lo) for the *_1 types; `quantize_int`/`dequantize` do not apply to it (`ggml_codes`,
    `ggml_dequantize` do)."""

    bits: int
    group_size: int | None
    symmetric: bool
    scale: torch.Tensor
    zero: torch.Tensor
    gguf_type: str | None = None
    minimum: torch.Tensor | None = None


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """(qmin, qmax) of the integer grid: symmetric [-(2^(b-1)-1), 2^(b-1)-1], asymmetric [0, 2^b-1]."""
    if symmetric:
        m = 2 ** (bits - 1) - 1
        return -m, m
    return 0, 2 ** bits - 1


def _group_len(in_features: int, group_size: int | None) -> int:
    return in_features if group_size is None else max(1, min(group_size, in_features))


def _expand(t: torch.Tensor, group_size: int | None, in_features: int) -> torch.Tensor:
    """[out, n_groups] per-group values -> [out, in] per-weight values."""
    return t.repeat_interleave(_group_len(in_features, group_size), dim=1)[:, :in_features]


def quant_params(w: torch.Tensor, bits: int, group_size: int | None,
                 symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The grid of `w` [out, in]: (scale, zero), both float32 [out, ceil(in / group_size)] (one column if
    group_size is None). scale > 0 always and float16-exact; zero holds integers (all 0 when symmetric), computed
    from the rounded scale. See the module doc."""
    out_f, in_f = w.shape
    gs = _group_len(in_f, group_size)
    n_groups = -(-in_f // gs)
    x = F.pad(w.detach().float(), (0, n_groups * gs - in_f)).reshape(out_f, n_groups, gs)  # zero padding is
    qmin, qmax = qrange(bits, symmetric)                                                  # neutral below
    if symmetric:
        scale = _fp16(x.abs().amax(-1) / qmax)
        return scale, torch.zeros_like(scale)
    lo, hi = x.amin(-1).clamp(max=0), x.amax(-1).clamp(min=0)
    scale = _fp16((hi - lo) / qmax)
    return scale, torch.round(-lo / scale).clamp(0, qmax)


def _fp16(scale: torch.Tensor) -> torch.Tensor:
    """Scales of all-zero groups -> 1, then rounded to float16 within [FP16_MIN, FP16_MAX], as float32."""
    scale = torch.where(scale > 0, scale, torch.ones_like(scale)).clamp(FP16_MIN, FP16_MAX)
    return scale.to(torch.float16).float()  # both bounds are float16-exact, so this is never 0 or inf


def _fake(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    return (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale


def quantize_int(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, group_size: int | None,
                 symmetric: bool) -> torch.Tensor:
    """The integers q (int32 [out, in], in `qrange`) of `w` on the grid (scale, zero) from `quant_params`
    (or from `quantize_gptq(..., return_params=True)`)."""
    qmin, qmax = qrange(bits, symmetric)
    s, z = _expand(scale, group_size, w.shape[1]), _expand(zero, group_size, w.shape[1])
    return torch.clamp(torch.round(w.float() / s) + z, qmin, qmax).to(torch.int32)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """float32 (q - zero) * scale, the inverse of `quantize_int` on the grid."""
    return (q.float() - _expand(zero, group_size, q.shape[1])) * _expand(scale, group_size, q.shape[1])


def quantize_rtn(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
                 return_params: bool = False):
    """Round-to-nearest fake quantization of `w` [out, in]: each weight to the nearest point of the grid of
    `quant_params` (values beyond it clamp to its ends), returned dequantized in w's dtype. Every group holds
    at most 2^bits distinct values; zeros stay exactly zero. Does not modify `w`. With `return_params` it is
    `(q, scale, zero)`, as `quantize_gptq` returns them."""
    scale, zero = quant_params(w, bits, group_size, symmetric)
    qmin, qmax = qrange(bits, symmetric)
    in_f = w.shape[1]
    q = _fake(w.float(), _expand(scale, group_size, in_f), _expand(zero, group_size, in_f), qmin, qmax).to(w.dtype)
    return (q, scale, zero) if return_params else q


from autocompress.policies.gptq import quantize_gptq  # noqa: E402  (needs the grid helpers above)


@QUANTIZERS.register("rtn")
def _rtn(w: torch.Tensor, entry: LayerPlan, gram: torch.Tensor | None) -> tuple[torch.Tensor, QuantGrid]:
    if entry.gguf_type is not None:
        return ggml.quantize_rtn_ggml(w, entry.gguf_type)
    q, scale, zero = quantize_rtn(w, entry.bits, entry.group_size, entry.symmetric, return_params=True)
    return q, QuantGrid(entry.bits, entry.group_size, entry.symmetric, scale, zero)


@QUANTIZERS.register("gptq")
def _gptq(w: torch.Tensor, entry: LayerPlan, gram: torch.Tensor | None) -> tuple[torch.Tensor, QuantGrid]:
    if entry.gguf_type is not None:
        return quantize_gptq(w, gram, entry.bits, entry.group_size, entry.symmetric, return_params=True,
                             act_order=GPTQ_ACT_ORDER, rule=ggml.GgmlRule(entry.gguf_type))
    q, scale, zero = quantize_gptq(w, gram, entry.bits, entry.group_size, entry.symmetric, return_params=True,
                                   act_order=GPTQ_ACT_ORDER)
    return q, QuantGrid(entry.bits, entry.group_size, entry.symmetric, scale, zero)


_rtn.needs_gram, _gptq.needs_gram = False, True

from autocompress.policies.kmeans import quantize_kmeans  # noqa: E402  (a codebook, not a grid: kmeans.py)

QUANTIZERS.register("kmeans")(quantize_kmeans)


def fake_quant_act_int8(x: torch.Tensor) -> torch.Tensor:
    """Dynamic symmetric int8 fake quantization per token (last dim): scale = absmax / 127, q in [-127, 127]."""
    scale = x.detach().float().abs().amax(-1, keepdim=True) / 127
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (torch.clamp(torch.round(x.float() / scale), -127, 127) * scale).to(x.dtype)


def act_quant_hook(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: int8-quantizes a Linear's input (module-level, so it pickles and deep-copies)."""
    if args and torch.is_tensor(args[0]) and args[0].is_floating_point():
        return (fake_quant_act_int8(args[0]), *args[1:])
    return None


def add_act_quant(module: nn.Module, bits: int = 8) -> None:
    """Quantize `module`'s input to int8 on every forward; a second call on the same module does nothing."""
    if getattr(module, ACT_ATTR, None) == bits:
        return
    module.register_forward_pre_hook(act_quant_hook)
    setattr(module, ACT_ATTR, bits)


def memo_key(name: str, entry: LayerPlan, context: tuple = ()) -> tuple:
    """The memo key of a data-aware quantizer's result for module `name`; `context` (sequential GPTQ: the
    fingerprint of what was quantized before the layer's block) is part of it."""
    grid = () if entry.gguf_type is None else (entry.gguf_type,)
    weighting = () if entry.kmeans_weighting == "none" else (entry.kmeans_weighting,)
    return ("quantize", name, entry.quant_method, entry.bits, entry.group_size, entry.symmetric, *grid, *weighting,
            *context)


def _remembered(memo, name: str, w: torch.Tensor, entry: LayerPlan, gram: torch.Tensor | None,
                context: tuple = ()) -> tuple[torch.Tensor, QuantGrid]:
    """A data-aware quantizer's result for the base model's weight `w` of module `name`, through the memo
    (memo.py), which keeps the integers (uint8, offset by qmin) and the grid, not the float weight. A
    remembered result is exactly the computed one: (q - zero) * scale is how `_fake` makes the weight.
    `gram` may be None only when the result is remembered (`memo_key(name, entry, context)` in memo.results).
    A codebook (weighted kmeans) has no integer grid: it is kept as indices and centroids (kmeans_weighted.py)."""
    if entry.quant_method == "kmeans":
        from autocompress.policies.kmeans_weighted import remembered_codebook
        return remembered_codebook(memo, memo_key(name, entry, context), w, entry, gram)
    bits, gs, sym, t = entry.bits, entry.group_size, entry.symmetric, entry.gguf_type
    qmin = qrange(bits, sym)[0] if t is None else (-127 if t == "Q8_0" else 0)
    fresh: list[tuple[torch.Tensor, QuantGrid]] = []

    def compute() -> tuple[torch.Tensor, ...]:
        q, grid = QUANTIZERS.get(entry.quant_method)(w, entry, gram)
        fresh.append((q, grid))
        ints = quantize_int(q, grid.scale, grid.zero, bits, gs, sym) if t is None else ggml.ggml_codes(q, grid)
        extra = (grid.minimum.clone(),) if grid.minimum is not None else ()
        return (ints - qmin).to(torch.uint8), grid.scale.clone(), grid.zero.clone(), *extra

    codes, scale, zero, *minimum = memo.result(memo_key(name, entry, context), compute)
    if fresh:
        return fresh[0]
    grid = QuantGrid(bits, gs, sym, scale.clone(), zero.clone(), gguf_type=t,
                     minimum=minimum[0].clone() if minimum else None)
    ints = codes.to(torch.int32) + qmin
    q = dequantize(ints, scale, zero, gs) if t is None else ggml.ggml_dequantize(ints, grid)
    return q.to(w.dtype), grid


def _named_weight_modules(model: nn.Module, name: str) -> dict[str, nn.Module]:
    """`weight_modules` of the plan entry `name`, keyed by their full module names."""
    root = model.get_submodule(name)
    wanted = {id(m) for m in weight_modules(root)}
    return {(f"{name}.{sub}" if sub else name): m for sub, m in root.named_modules() if id(m) in wanted}


@POLICIES.register("quantize")
class QuantizePolicy(Policy):
    """Fake-quantizes the weights of every entry with `bits` (the entry's quant_method, on the entry's grid;
    both factors of a LowRankLinear), records each one's `QuantGrid` as `module._autocompress_grid` (GRID_ATTR),
    and adds int8 input quantization where `act_bits` is 8. GPTQ runs in act-order with static groups
    (`GPTQ_ACT_ORDER`), so its grid is the standard one.

    GPTQ's Hessians: with `calibration.sequential` false, gathered in one calibration pass over the model as it
    stands before this policy changes it; with it true, block by block through the blocks already quantized
    (sequential.py). On a model still exactly the memo's base model, results come through the memo."""

    name = "quantize"

    def handles(self, entry: LayerPlan) -> bool:
        return entry.quantizes

    def needs_calibration(self, entry: LayerPlan) -> bool:
        flag = getattr(QUANTIZERS.get(entry.quant_method), "needs_gram", False) if entry.bits is not None else False
        return bool(flag(entry) if callable(flag) else flag)

    def apply(self, model: nn.Module, plan: CompressionPlan, calibration: Calibration | None) -> None:
        entries = self.entries(plan)
        modules = {name: _named_weight_modules(model, name) for name in entries}
        data_aware = {n: m for name, e in entries.items() if self.needs_calibration(e) for n, m in modules[name].items()}
        if not data_aware:
            for name, e in entries.items():
                self._quantize(modules[name], e, {})
            return
        first = next(name for name, e in entries.items() if self.needs_calibration(e))
        e = entries[first]
        calib = self.require(calibration, first, f"kmeans_weighting {e.kmeans_weighting}"
                             if e.quant_method == "kmeans" else e.quant_method)
        pristine = calib.pristine(model)  # before any weight changes: then memo entries apply
        memo = calib.memo if pristine else None
        if calib.sequential:
            from autocompress.policies.sequential import quantize_sequentially

            def known(name: str, context: tuple) -> set[str]:
                e = entries[name]
                return {n for n in modules[name] if memo is not None and memo_key(n, e, context) in memo.results}

            def one(name: str, grams: dict[str, torch.Tensor], context: tuple) -> None:
                e = entries[name]
                self._quantize(modules[name], e, grams, memo if self.needs_calibration(e) else None, context)

            quantize_sequentially(model, entries, modules, calib, self.needs_calibration, known, one)
            return
        grams = calib.input_grams(model, data_aware, pristine=pristine)
        for name, e in entries.items():
            self._quantize(modules[name], e, grams, memo if self.needs_calibration(e) else None)

    @torch.no_grad()
    def _quantize(self, modules: dict[str, nn.Module], e: LayerPlan, grams: dict[str, torch.Tensor],
                  memo=None, context: tuple = ()) -> None:
        """Quantize the weight modules of one entry (`grams` by module name for a data-aware method; through
        `memo` under `context` when given), record their grids, add the activation quantization."""
        for n, m in modules.items():
            if e.bits is not None:
                w = check_weight(n, m)
                if memo is not None:
                    q, grid = _remembered(memo, n, w, e, grams.get(n), context)
                else:
                    q, grid = QUANTIZERS.get(e.quant_method)(w, e, grams.get(n))
                w.copy_(q)
                setattr(m, GRID_ATTR, grid)
            if e.act_bits is not None:
                add_act_quant(m, e.act_bits)
