"""`KVCachePlan`: how a causal LM's KV cache is quantized, as immutable, JSON-exact plan data.

A plan-level entry (`CompressionPlan.kv_cache`, JSON key "kv_cache"), not a layer entry: the cache is not a
weight. Keys and values are quantized as they are written to the cache (keys after the rotary embedding, as
they are stored) and attention reads them dequantized (cache.py). The grid, per block of the model:

  - `bits` 16 (the cache is left in the model's dtype), 8, 4 or 2; `layers` overrides it for single blocks
    (`{block index: bits}`, the JSON keys are the indices as strings), e.g. the first and last blocks at 8;
  - groups of `group_size` channels of one head's key (or value) vector of one token share a scale (fp16), so a
    token is quantized when it is written and never again (llama.cpp's q8_0/q4_0 cache uses blocks of 32 the
    same way); None (or a group as wide as the head) gives one scale per head and token;
  - `symmetric` False (the default, KIVI's choice: keys have a per-channel offset that a symmetric grid wastes
    a level on, and 2 bits has too few levels to spare one): `[0, 2^b - 1]` with an fp16 scale and an fp16
    minimum per group; True: `[-(2^(b-1) - 1), 2^(b-1) - 1]` with an fp16 scale.

A plan whose every block is at 16 bits is no plan: `CompressionPlan` drops it (old plan JSON, without the key,
reads as before). This module is plain data (no torch), so `autocompress.plan` imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from autocompress.errors import UserError, from_fields

KV_BITS = (16, 8, 4, 2)
FULL = 16
DEFAULT_GROUP = 32
_FIELDS = ("bits", "group_size", "symmetric", "layers")


def _check_bits(bits: Any, field: str) -> None:
    if type(bits) is not int or bits not in KV_BITS:
        raise UserError(f"{field}={bits!r} is not supported; use 16 (no quantization), 8, 4 or 2")


@dataclass(frozen=True)
class KVCachePlan:
    """The cache's grid (module docstring). `layers` is given as a mapping {block: bits} and held as a sorted
    tuple of (block, bits) pairs, without the blocks that merely repeat `bits` (so equal plans compare and hash
    equal). Raises `UserError` (one line naming the field) for bits other than 16/8/4/2, a group size < 1, a
    non-boolean `symmetric`, or a block index that is not an integer >= 0."""

    bits: int = FULL
    group_size: int | None = DEFAULT_GROUP
    symmetric: bool = False
    layers: Any = ()

    def __post_init__(self) -> None:
        _check_bits(self.bits, "kv_cache.bits")
        if self.group_size is not None and (type(self.group_size) is not int or self.group_size < 1):
            raise UserError(f"kv_cache.group_size={self.group_size!r} must be a positive integer (channels of one "
                            "head per scale), or null for one scale per head and token")
        if type(self.symmetric) is not bool:
            raise UserError(f"kv_cache.symmetric={self.symmetric!r} must be true or false")
        pairs = self.layers.items() if isinstance(self.layers, Mapping) else self.layers
        overrides = {}
        for block, bits in pairs:
            if isinstance(block, str) and block.isdigit():
                block = int(block)
            if type(block) is not int or block < 0:
                raise UserError(f"kv_cache.layers: block {block!r} must be a block index (an integer >= 0)")
            _check_bits(bits, f"kv_cache.layers.{block}")
            if bits != self.bits:
                overrides[block] = bits
        object.__setattr__(self, "layers", tuple(sorted(overrides.items())))

    def bits_for(self, block: int) -> int:
        """The bits of block `block`'s cache (16: not quantized)."""
        return dict(self.layers).get(block, self.bits)

    def group_for(self, head_dim: int) -> int:
        """Channels per scale for heads of `head_dim` channels: `group_size`, or the whole head when it is None
        or at least as wide as the head."""
        return head_dim if self.group_size is None or self.group_size >= head_dim else self.group_size

    @property
    def is_noop(self) -> bool:
        """True when no block is quantized (every block at 16 bits)."""
        return self.bits == FULL and not self.layers

    def to_dict(self) -> dict[str, Any]:
        """The fields that differ from the defaults; `layers` as {"<block>": bits}."""
        out: dict[str, Any] = {}
        if self.bits != FULL:
            out["bits"] = self.bits
        if self.group_size != DEFAULT_GROUP:
            out["group_size"] = self.group_size
        if self.symmetric:
            out["symmetric"] = True
        if self.layers:
            out["layers"] = {str(block): bits for block, bits in self.layers}
        return out

    @classmethod
    def from_dict(cls, data: Any, where: str = "plan") -> "KVCachePlan":
        """The entry read from JSON; a `UserError` is prefixed with `where` (the plan's file or name)."""
        if not isinstance(data, Mapping):
            raise UserError(f"{where}: kv_cache must be an object with bits (16/8/4/2), group_size, symmetric, "
                            "layers")
        if "layers" in data and not isinstance(data["layers"], Mapping):
            raise UserError(f"{where}: kv_cache.layers must map block indices to bits, e.g. {{\"0\": 8}}")
        return from_fields(cls, data, _FIELDS, where, name="kv_cache")

    def flatten(self) -> dict[str, Any]:
        """`{"kv_cache.bits": b, "kv_cache.group_size": g, "kv_cache.symmetric": s, "kv_cache.layers.<i>": b}`:
        MLflow parameters (every field, so a trial's grid is always readable)."""
        flat: dict[str, Any] = {"kv_cache.bits": self.bits, "kv_cache.group_size": self.group_size,
                                "kv_cache.symmetric": self.symmetric}
        flat.update({f"kv_cache.layers.{block}": bits for block, bits in self.layers})
        return flat

    def summary(self) -> str:
        """e.g. "kv 4", "kv 4 (8 on 2 blocks)", "kv 16 (4 on 3 blocks)"."""
        if not self.layers:
            return f"kv {self.bits}"
        counts: dict[int, int] = {}
        for _, bits in self.layers:
            counts[bits] = counts.get(bits, 0) + 1
        rest = ", ".join(f"{b} on {n} block{'s' if n > 1 else ''}" for b, n in sorted(counts.items()))
        return f"kv {self.bits} ({rest})"


def check_kv_cache(plan: KVCachePlan, info: Any) -> None:
    """Raise `UserError` (one line, naming the field and the fix) if `plan` cannot apply to the model of
    `info` (a `ModelInfo`): a model that keeps no KV cache (an encoder), a block override out of range, or a
    group size that does not divide the head dimension."""
    extra = info.extra
    head_dim, blocks = extra.get("head_dim"), extra.get("num_blocks") or 0
    if not extra.get("causal") or not extra.get("num_kv_heads") or not head_dim:
        raise UserError(f"kv_cache: this {info.model_type} model keeps no KV cache (it is not a causal LM); "
                        "drop kv_cache from the plan (or space.kv_cache from the config)")
    for block, _ in plan.layers:
        if block >= blocks:
            raise UserError(f"kv_cache.layers: block {block} is out of range; this model has {blocks} blocks "
                            f"(0..{blocks - 1})")
    group = plan.group_for(head_dim)
    if head_dim % group:
        raise UserError(f"kv_cache.group_size={plan.group_size} does not divide the head dimension {head_dim}; "
                        "use a divisor of it, or null for one scale per head and token")
