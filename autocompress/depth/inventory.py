"""The blocks of a model as `autocompress inspect` lists them: what a plan's `drop_blocks` can remove."""

from __future__ import annotations

from typing import Any


def blocks(info: Any) -> list[dict[str, Any]]:
    """One row per repeated block of `info` (a `ModelInfo`), in order: {"index", "name", "params" (every
    parameter of the block), "layers" (its Linear layers)}; [] for a model without repeated blocks."""
    n = info.extra.get("num_blocks") or 0
    if not info.block_prefix or not n:
        return []
    per_block = info.extra.get("block_params") or [None] * n
    return [{"index": b, "name": f"{info.block_prefix}.{b}", "params": per_block[b],
             "layers": sum(1 for li in info.layers.values() if li.block == b)} for b in range(n)]
