"""What a quantized KV cache costs in bytes: memory at a batch and context (`cache_bytes`, for `plan_memory`),
and the bytes a decode step reads per cached value (`bits_per_value`, for the latency models).

A block at `b` < 16 bits stores each cached key or value in b bits, plus per group of `group` channels of one
head and token an fp16 scale (symmetric) or an fp16 scale and an fp16 minimum (asymmetric): b + 16/group or
b + 32/group bits per value (8-bit asymmetric, groups of 32: 9 bits; 4-bit: 5; 2-bit: 3). A block at 16 bits
stores its values in the deployment dtype, whatever its width (fp32 on a CPU profile: 4 bytes).
"""

from __future__ import annotations

import math
from typing import Mapping

from autocompress.kvcache.plan import FULL, KVCachePlan


def bits_per_value(kv: KVCachePlan | None, block: int, head_dim: int) -> float | None:
    """Stored bits per cached value of `block` (scales included), or None where the block keeps the deployment
    dtype (no plan, or 16 bits)."""
    bits = FULL if kv is None else kv.bits_for(block)
    if bits == FULL:
        return None
    return bits + (16 if kv.symmetric else 32) / kv.group_for(head_dim)


def cache_bytes(kv: KVCachePlan | None, kv_heads: Mapping[int, int], head_dim: int, batch: int, seq_len: int,
                dtype_bytes: float) -> int:
    """Bytes of the KV cache of `batch` sequences of `seq_len` positions: per block i, 2 x kv_heads[i] x head_dim
    values per position (a key and a value vector per head), each `bits_per_value` bits (rounded up to whole
    bytes per block) or `dtype_bytes` bytes at 16 bits."""
    total = 0
    for block, heads in kv_heads.items():
        values = 2 * batch * seq_len * heads * head_dim
        bits = bits_per_value(kv, block, head_dim)
        total += round(values * dtype_bytes) if bits is None else math.ceil(values * bits / 8)
    return total
