"""`space.kv_cache`: the KV-cache decisions of a search (`KVCacheChoices`), drawn after every layer decision.

Units and params: without `per_block`, one unit `kv_cache` and its param `kv_cache.bits`; with `per_block: true`,
one unit per block, `kv_cache.block<i>`, params `kv_cache.block<i>.bits`. Then, only when some block is below 16
bits, `kv_cache.group_size` and `kv_cache.symmetric` (once for the whole cache). A field with one choice is a
constant and draws nothing, like every other section. The bits choices are offered largest first (16 first
when it is a choice), so "the first choice", which the uniform baselines give the techniques they do not
test, leaves the cache alone.

Per-block draws become a `KVCachePlan` whose `bits` is the most frequent drawn width (the larger on a tie) and
whose `layers` hold the other blocks, so the plan JSON stays short and equal draws give equal plans.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

from autocompress.config import KVCacheSpace
from autocompress.errors import UserError
from autocompress.kvcache.plan import FULL, KVCachePlan, check_kv_cache
from autocompress.models import ModelInfo

UNIT = "kv_cache"
FIELDS = {"bits", "group_size", "symmetric"}
Pick = Callable[[str, str, Sequence[Any]], Any]


class KVCacheChoices:
    """The decisions of one `space.kv_cache` section on one model. `UserError` (one line) for a model that keeps
    no KV cache, or a group size its heads cannot take."""

    def __init__(self, section: KVCacheSpace, info: ModelInfo) -> None:
        self.section = section
        self.bits = sorted(set(section.bits), reverse=True)
        blocks = info.extra.get("num_blocks") or 0
        self.units = [f"{UNIT}.block{i}" for i in range(blocks)] if section.per_block else [UNIT]
        for group in section.group_size:
            for symmetric in section.symmetric:
                try:
                    check_kv_cache(KVCachePlan(bits=8, group_size=group, symmetric=symmetric), info)
                except UserError as exc:
                    raise UserError(f"space.{exc}") from None

    def draw(self, pick: Pick) -> KVCachePlan | None:
        """The cache's plan from `pick(unit, field, choices)`, or None when every block stays at 16 bits."""
        drawn = [pick(unit, "bits", self.bits) for unit in self.units]
        if all(b == FULL for b in drawn):
            return None
        group = pick(UNIT, "group_size", list(self.section.group_size))
        symmetric = pick(UNIT, "symmetric", list(self.section.symmetric))
        if len(drawn) == 1:
            return KVCachePlan(bits=drawn[0], group_size=group, symmetric=symmetric)
        counts = Counter(drawn)
        common = max(counts, key=lambda b: (counts[b], b))
        return KVCachePlan(bits=common, group_size=group, symmetric=symmetric,
                           layers={i: b for i, b in enumerate(drawn) if b != common})

    def baselines(self) -> list[tuple[str, dict[str, Any]]]:
        """("kv_cache", {"bits": b}) for each bits choice below 16: a uniform baseline each."""
        return [(UNIT, {"bits": b}) for b in self.bits if b != FULL]
