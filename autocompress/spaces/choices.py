"""The choices a config's space offers beyond its own lists: checked, filtered per unit, or extended.

Check: choices the config schema lets through but a `LayerPlan` refuses (rank 1.5, pattern 4:2, ...) are a
`UserError` naming the field.
Rank filtering: a rank choice stays in a unit's choices only if, for every layer of the unit, the resolved
rank does not exceed the break-even in*out // (in+out), also at each shape that structured pruning in this
space can shrink the layer to; so a rank never grows a layer. The filter depends only on shapes and config,
so each param's choices are the same in every trial. If only None remains, nothing is suggested.
Prune patterns: when 0.0 is a sparsity choice but "unstructured" is not a pattern, the pattern choices gain a
leading "dense" (leave the unit alone).
"""

from __future__ import annotations

import itertools
from typing import Any

from autocompress.config import SpaceSection
from autocompress.errors import UserError
from autocompress.models import ModelInfo
from autocompress.plan import LayerPlan, resolve_rank


def check_choices(space: SpaceSection) -> None:
    """`UserError` for choices the config schema lets through but a `LayerPlan` refuses (rank 1.5, pattern
    4:2, ...), naming the field as `space.<section>.<field>`."""
    sp = space
    checks = [("lowrank.rank", dict(rank=r)) for r in (sp.lowrank.rank if sp.lowrank else ())]
    checks += [("quantize.group_size", dict(bits=4, group_size=g))
               for g in (sp.quantize.all_group_sizes() if sp.quantize else ())]
    checks += [("embeddings.group_size", dict(bits=4, group_size=g))
               for g in (sp.embeddings.all_group_sizes() if sp.embeddings else ())]
    checks += [("prune.pattern", dict(pattern=p)) for p in (sp.prune.pattern if sp.prune else ())]
    for where, fields in checks:
        try:
            LayerPlan(**fields)
        except UserError as exc:
            raise UserError(f"space.{where}: {exc}") from None


def prune_patterns(space: SpaceSection) -> list[str]:
    """The pattern choices of space.prune ([] without it), with a leading "dense" (module docstring)."""
    patterns = list(space.prune.pattern) if space.prune else []
    if space.prune and 0.0 in space.prune.sparsity and "unstructured" not in patterns:
        patterns.insert(0, "dense")
    return patterns


def layer_shapes(name: str, info: ModelInfo, space: SpaceSection, structured: dict[str, Any]) -> set[tuple[int, int]]:
    """(out, in) of a layer as it is and after each structured pruning this space can choose (`structured`:
    the structures space.structured decides on)."""
    li = info.layers[name]
    shapes = {(li.out_features, li.in_features)}
    for s in (info.structures[u] for u in structured):
        if name not in (*s.producers, s.consumer):
            continue
        grown = set()
        for (n_out, n_in), sp in itertools.product(shapes, space.structured.sparsity):
            cut = min(round(sp * s.units), s.units - 1) * s.unit_size
            grown.add((n_out - cut * (3 if s.fused_qkv else 1), n_in) if name in s.producers
                      else (n_out, n_in - cut))
        shapes |= grown
    return shapes


def fitting_ranks(members: tuple[str, ...], info: ModelInfo, space: SpaceSection,
                  structured: dict[str, Any]) -> list[int | float | None]:
    """The rank choices of space.lowrank that grow no layer of `members` at any of its shapes (module
    docstring); [None] when none does."""
    shapes = set().union(*(layer_shapes(n, info, space, structured) for n in members))
    ranks = [r for r in space.lowrank.rank
             if r is None or all(resolve_rank(r, o, i) <= o * i // (o + i) for o, i in shapes)]
    return ranks or [None]
