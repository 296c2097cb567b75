"""KV-cache quantization: a causal LM's cached keys and values on a 8/4/2-bit grid.

`KVCachePlan` (plan.py) is plain data that `autocompress.plan` imports; the rest needs torch and is imported
from its module:
  - `QuantizedKVCache`, `fake_quantize_kv` (cache.py): the transformers `Cache` that quantizes what is written
  - `attach_kv_cache`, `cache_kwargs` (runtime.py): a compressed model carries its plan's cache; evaluators and
    generation ask for it
  - `check_kv_cache` (runtime.py): a plan's entry against a model's inventory
  - `kv_cache_bytes` (memory.py): the cache's bytes at its bits, scales included
"""

from __future__ import annotations

from autocompress.kvcache.plan import KV_BITS, KVCachePlan

__all__ = ["KV_BITS", "KVCachePlan"]
