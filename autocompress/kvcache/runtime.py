"""A compressed model carries its plan's KV-cache grid; whoever runs it asks for the cache.

`apply_plan` calls `attach_kv_cache(model, plan.kv_cache)`: the `KVCachePlan` is kept on the model as the
attribute `_autocompress_kv_cache` (weights untouched; a `ModelWorkspace.restore` or a fresh copy drops it).
The evaluators' forward passes and greedy generation take `cache_kwargs(model)`: nothing for a model without
one (so a plan without kv_cache, or with every block at 16 bits, runs exactly as before), else a fresh
`QuantizedKVCache` with `use_cache=True`, so even a single full-sequence forward writes its keys and values
to the quantized cache and attends to them dequantized, as generation would.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from autocompress.kvcache.plan import KVCachePlan

ATTR = "_autocompress_kv_cache"


def attach_kv_cache(model: nn.Module, plan: KVCachePlan | None) -> nn.Module:
    """Keep `plan` on `model` (None, or a plan at 16 bits everywhere, removes any) and return the model."""
    if plan is None or plan.is_noop:
        if ATTR in vars(model):
            delattr(model, ATTR)
    else:
        object.__setattr__(model, ATTR, plan)
    return model


def kv_plan_of(model: nn.Module) -> KVCachePlan | None:
    """The KV-cache plan `model` carries, or None."""
    return vars(model).get(ATTR)


def cache_kwargs(model: nn.Module) -> dict[str, Any]:
    """Keyword arguments for `model(...)` or `model.generate(...)`: {} when the model carries no KV-cache plan,
    else {"cache": a new QuantizedKVCache, "use_cache": True} (one cache per call: it fills as it runs)."""
    plan = kv_plan_of(model)
    if plan is None:
        return {}
    from autocompress.kvcache.cache import QuantizedKVCache

    return {"cache": QuantizedKVCache(model.config, plan), "use_cache": True}
