"""The quantized KV cache: a transformers `DynamicCache` whose layers put keys and values on the plan's grid as
they are written, and hand attention the dequantized values.

Why not transformers' own `QuantizedCache`: its integer backends (optimum-quanto, HQQ) are not installed here,
and by design it keeps the last `residual_length` (128) tokens, and a whole prefill, in full precision, so a
forward pass over a text (what the perplexity and KL evaluators run) would never read a quantized key. Its FP8
backend is one fixed format. This cache quantizes every token as it is written, prefill included, so the
evaluators' single forward pass reads what a decode step at that position would read.

The grid (`fake_quantize_kv`, plan.py): each token's key (value) vector of one head is split into groups of
`group` channels; a group's scale (and, asymmetric, its minimum) is rounded to fp16, as a packed cache stores
it; the values are rounded onto the integer grid and stored dequantized in the cache's dtype (fake
quantization: the numbers attention sees are exactly the packed cache's, the memory is not saved here).
Keys are quantized after the rotary embedding, since that is what a cache stores. Blocks at 16 bits store
their states unchanged.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer, DynamicSlidingWindowLayer, get_layer_types_and_kwargs

from autocompress.errors import UserError
from autocompress.kvcache.plan import FULL, KVCachePlan

_FP16_MAX = torch.finfo(torch.float16).max


def _fp16(x: torch.Tensor) -> torch.Tensor:
    """`x` (float32) rounded to the nearest fp16 value, kept in float32 (saturating instead of overflowing)."""
    return x.clamp(-_FP16_MAX, _FP16_MAX).to(torch.float16).to(torch.float32)


def fake_quantize_kv(x: torch.Tensor, bits: int, group: int, symmetric: bool) -> torch.Tensor:
    """`x` [..., head_dim] on the `bits` grid in groups of `group` consecutive channels of the last dimension
    (which `group` must divide), returned dequantized in `x`'s dtype and shape. bits 16 returns `x` itself.

    Symmetric: q in [-(2^(b-1)-1), 2^(b-1)-1], scale = fp16(max |x| / qmax), x' = q * scale.
    Asymmetric: q in [0, 2^b - 1], m = fp16(min x), scale = fp16((max x - m) / qmax), x' = q * scale + m.
    A group of zeros (scale 0) stays zeros."""
    if bits == FULL:
        return x
    shape = x.shape
    g = x.reshape(*shape[:-1], shape[-1] // group, group).to(torch.float32)
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = _fp16(g.abs().amax(dim=-1, keepdim=True) / qmax)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        out = (g / safe).round().clamp(-qmax, qmax) * scale
    else:
        qmax = 2 ** bits - 1
        low = _fp16(g.amin(dim=-1, keepdim=True))
        scale = _fp16((g.amax(dim=-1, keepdim=True) - low) / qmax)
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        out = ((g - low) / safe).round().clamp(0, qmax) * scale + low
    return out.reshape(shape).to(x.dtype)


class _Quantizing:
    """Mixin for a transformers cache layer: `update` puts the new states on the grid before storing them."""

    kv_bits: int = FULL
    kv_group: int | None = None
    kv_symmetric: bool = False

    def quantize(self, states: torch.Tensor) -> torch.Tensor:
        head_dim = states.shape[-1]
        group = head_dim if self.kv_group is None or self.kv_group >= head_dim else self.kv_group
        return fake_quantize_kv(states, self.kv_bits, group, self.kv_symmetric)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        return super().update(self.quantize(key_states), self.quantize(value_states), *args, **kwargs)


class QuantizedDynamicLayer(_Quantizing, DynamicLayer):
    """A full-attention cache layer on the grid."""


class QuantizedSlidingWindowLayer(_Quantizing, DynamicSlidingWindowLayer):
    """A sliding-window (or chunked) attention cache layer on the grid."""


_LAYERS = {"full_attention": QuantizedDynamicLayer, "sliding_attention": QuantizedSlidingWindowLayer,
           "chunked_attention": QuantizedSlidingWindowLayer}


class QuantizedKVCache(Cache):
    """A dynamic cache for the model of `config` (a transformers config) whose block i stores its keys and
    values on `plan`'s grid at `plan.bits_for(i)` bits. Pass it as `model(..., cache=c, use_cache=True)` or
    `model.generate(..., cache=c)`; a cache serves one sequence batch (build a new one per batch).
    Raises `UserError` for a model with attention layers other than full, sliding or chunked ones."""

    def __init__(self, config, plan: KVCachePlan) -> None:
        types, kwargs = get_layer_types_and_kwargs(config.get_text_config(decoder=True))
        unknown = sorted(set(types) - set(_LAYERS))
        if unknown:
            raise UserError(f"kv_cache: this model has {unknown[0]} layers, which the quantized cache does not "
                            "handle; drop kv_cache")
        layers = []
        for block, (kind, kw) in enumerate(zip(types, kwargs)):
            layer = _LAYERS[kind](**kw)
            layer.kv_bits, layer.kv_group, layer.kv_symmetric = plan.bits_for(block), plan.group_size, plan.symmetric
            layers.append(layer)
        super().__init__(layers=layers)
        self.plan = plan
